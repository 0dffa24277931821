"""The parts of a model taking turns on a GPU (issue 30): where the preflight finds that making class
images or validation images would not fit with every part on the device, the text encoders wait in
CPU memory while the UNet samples, and the UNet while they encode and while the VAE decodes.

Here the CPU is both places: nothing moves, so what is tested is what is parked when each part runs,
that every part is back where it was afterwards, and that the images and the training are the same
bit for bit as with every part in place."""
import dataclasses

import torch
from PIL import Image

from dreambooth.parking import Parking
from dreambooth.training import prior, trainer as trainer_module
from dreambooth.training.config import build_config
from dreambooth.training.trainer import Trainer

UNET, TE, VAE = "UNet2DConditionModel", "CLIPTextModel", "AutoencoderKL"


def _config(tiny_sd1, dog_photos, out, **over):
    values = dict(model=str(tiny_sd1), instance_dir=str(dog_photos), instance_prompt="a photo of sks dog",
                  class_prompt="a photo of dog", num_class_images=2, class_steps=1, class_batch_size=2,
                  method="lora", rank=4, resolution=32, max_steps=4, learning_rate=1e-3, center_crop=True,
                  checkpoint_every=0, keep_checkpoints=0, mixed_precision="bf16", output=str(out))
    return build_config(None, dict(values, **over))


def _turns(monkeypatch, **turns):
    """The preflight's decision, as it would be on a GPU short of memory."""
    real = trainer_module.preflight
    monkeypatch.setattr(trainer_module, "preflight", lambda *a, **k: dataclasses.replace(real(*a, **k), **turns))


def _parked_when_run(pipe, parking_of, seen: list, when=lambda: True) -> list:
    """Record in ``seen`` (part, the types parked) each time a text encoder, the UNet or the VAE runs."""
    parts = [("text encoder", te) for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if te is not None]
    for name, module in parts + [("unet", pipe.unet), ("decoder", pipe.vae.decoder), ("vae encoder", pipe.vae.encoder)]:
        module.register_forward_pre_hook(lambda m, args, name=name: seen.append(
            (name, sorted(type(p).__name__ for p in parking_of().parked))) if when() else None)
    return seen


def _watch(monkeypatch, seen: list, parking_of, when=lambda: True):
    """``_parked_when_run`` on the pipeline the trainer loads."""
    real_load = trainer_module.load_pipeline

    def load(*a, **k):
        pipe = real_load(*a, **k)
        _parked_when_run(pipe, parking_of, seen, when)
        return pipe
    monkeypatch.setattr(trainer_module, "load_pipeline", load)


def test_a_part_is_kept_where_it_was():
    a, b, c = (torch.nn.Linear(2, 2) for _ in range(3))
    parking = Parking("cpu", enabled=True)
    parking.park(a)
    parking.park(b)
    with parking.kept(b):                    # b is needed throughout; whatever moves inside goes back
        assert parking.parked == [a]
        parking.ready(a)
        parking.park(c)
    assert parking.parked == [a, b]
    with parking.all_back():
        assert parking.parked == []
    assert parking.parked == [a, b]


def test_class_images_made_with_the_parts_taking_turns_are_the_same(tiny_sd1, dog_photos, tmp_path, monkeypatch):
    """Class images: the encoders wait while the UNet samples, the UNet while they encode and while
    the VAE decodes. The images are the same, and every part is back for the steps."""
    real_generate = prior.generate
    seen, making, used = [], [], []

    def generate(pipeline, *args, **kwargs):
        making.append(pipeline)
        used.append(pipeline)
        try:
            return real_generate(pipeline, *args, **kwargs)
        finally:
            making.pop()

    monkeypatch.setattr(prior, "generate", generate)

    def made(out, parking: bool):
        _turns(monkeypatch, class_parking=parking)
        trainer = Trainer(_config(tiny_sd1, dog_photos, out))
        _watch(monkeypatch, seen, lambda: making[0].parking, when=lambda: bool(making))
        trainer.setup()
        assert not trainer.parking.is_parked(trainer.trainables["unet"]) and used[-1].parking.parked == []
        return [Image.open(p).tobytes() for p in sorted((out / "class_images").glob("*.png"))]

    in_turns = made(tmp_path / "turns", True)
    assert ("text encoder", [UNET]) in seen and ("unet", [TE]) in seen and ("decoder", [TE, UNET]) in seen
    assert all(parked == [UNET] for name, parked in seen if name == "text encoder")
    seen.clear()
    all_there = made(tmp_path / "resident", False)
    assert seen and all(parked == [] for _, parked in seen)
    assert len(in_turns) == 2 and in_turns == all_there


def test_validation_with_the_parts_taking_turns_changes_nothing(tiny_sd1, dog_photos, tmp_path, monkeypatch):
    """Validation images: the same parts take turns (the optimizer's state stays on the device beside
    them); the images, the losses and the trained weights are the same as with every part back, and
    each step finds the parts where the steps keep them."""
    seen, validating, starts = [], [], []

    def run(out, turns: bool):
        _turns(monkeypatch, validation_parking=turns)
        config = _config(tiny_sd1, dog_photos, out, validate_every=2, validation_seeds=[0], validation_steps=2,
                         validation_prompts=["a photo of sks dog"], dino_model=None, clip_model=None)
        trainer = Trainer(config)
        _watch(monkeypatch, seen, lambda: trainer.parking, when=lambda: hasattr(trainer, "parking"))
        trainer.setup()
        real = trainer.validator.validate

        def validate(step):
            starts.append(sorted(type(m).__name__ for m in trainer.parking.parked))
            validating.append(len(seen))                      # where in ``seen`` this validation starts
            try:
                return real(step)
            finally:
                validating.append(len(seen))
        trainer.validator.validate = validate
        result = trainer.fit()
        # all back once the run is over, as before; taking turns, where the steps keep them
        assert sorted(type(m).__name__ for m in trainer.parking.parked) == ([VAE, TE] if turns else [])
        grids = [Image.open(p).tobytes() for p in sorted((out / "validation").glob("step-*.png"))]
        weights = {k: v.clone() for k, v in trainer.trainables["unet"].state_dict().items() if "lora" in k}
        return result.losses, grids, weights

    losses, grids, weights = run(tmp_path / "turns", True)
    spans = [range(a, b) for a, b in zip(validating[::2], validating[1::2])]
    assert len(spans) == 3                                   # steps 0, 2 and 4
    # the VAE comes back for it, the encoders not before they encode (not every weight at once)
    assert starts == [[TE], [TE], [TE]]
    inside = {(seen[i][0], tuple(seen[i][1])) for span in spans for i in span}
    assert inside == {("text encoder", (UNET,)), ("unet", (TE,)), ("decoder", (TE, UNET))}
    steps = [parked for i, (name, parked) in enumerate(seen) if name == "unet" and not any(i in s for s in spans)]
    assert len(steps) >= 4 and all(parked == [VAE, TE] for parked in steps)    # the steps' own parking, restored
    seen.clear()
    losses_all, grids_all, weights_all = run(tmp_path / "resident", False)
    assert len(grids) == 3 and grids == grids_all
    assert losses == losses_all
    assert weights.keys() == weights_all.keys() and all(torch.equal(weights[k], weights_all[k]) for k in weights)


def test_generation_with_medvram_makes_the_same_images(tiny_sd1, tiny_sdxl, tmp_path, monkeypatch):
    """``dreambooth generate --medvram`` (and ``serve --medvram``): the encoders wait while the UNet
    samples, the UNet while they encode and while the VAE decodes: the pipeline's own decode without
    autocast, ours under it, and a live preview between steps (the UNet comes back for the next step).
    The images are the ones made with every part in place."""
    from dreambooth.generation.params import GenerationParams
    from dreambooth.generation.pipeline import load_generation_pipeline
    from dreambooth.generation.sampling import Controls, decode, generate
    from dreambooth import parking as parking_module
    real_init = parking_module.Parking.__init__
    monkeypatch.setattr(parking_module.Parking, "__init__", lambda self, device, enabled=None: real_init(self, device, True))
    params = GenerationParams("a photo of sks dog", steps=3, width=32, height=32, seed=5, batch_size=2)
    for model, encoders in ((tiny_sd1, (TE,)), (tiny_sdxl, tuple(sorted((TE, "CLIPTextModelWithProjection"))))):
        every = load_generation_pipeline(str(model), dtype=torch.float32)
        turns = load_generation_pipeline(str(model), dtype=torch.float32, medvram=True)
        assert every.parking is None and turns.parking.enabled
        # loaded with the VAE alone on the device: the others come when first needed
        assert tuple(sorted(type(m).__name__ for m in turns.parking.parked)) == tuple(sorted((*encoders, UNET)))
        recorded = _parked_when_run(turns.pipe, lambda: turns.parking, [])
        for autocast in (None, torch.bfloat16):
            preview = Controls(preview=lambda latents, p=turns: decode(p.pipe, latents[:1]), preview_every=1)
            made = generate(turns, params, autocast=autocast, controls=preview)
            alike = generate(every, params, autocast=autocast)
            assert [m.image.tobytes() for m in made] == [m.image.tobytes() for m in alike]
        # a preview after each of the first 2 of 3 steps, then the batch decoded image by image: by the
        # pipeline (fp32) or by ours (autocast)
        assert sum(name == "decoder" for name, _ in recorded) == 2 + 2 + 2 + 2
        again = params.replace(init_image=made[0].image, strength=0.7, batch_size=1)       # img2img: the VAE encodes
        assert generate(turns, again)[0].image.tobytes() == generate(every, again)[0].image.tobytes()
        everything = tuple(sorted((*encoders, UNET)))
        seen = [(name, tuple(parked)) for name, parked in recorded]
        assert {p for name, p in seen if name == "text encoder"} == {(UNET,)}
        assert {p for name, p in seen if name == "unet"} == {encoders}
        assert {p for name, p in seen if name in ("decoder", "vae encoder")} == {everything}
        assert any(name == "vae encoder" for name, _ in seen)


def test_generate_medvram_from_the_command_line(tiny_sd1, tmp_path):
    """On the CPU nothing moves; the flag is taken and the images are those made without it."""
    from conftest import run_cli
    made = {}
    for name, extra in (("turns", ["--medvram"]), ("every", [])):
        code, out, err = run_cli("generate", "--model", tiny_sd1, "--prompt", "a photo of sks dog", "--steps", "2",
                                 "--width", "32", "--height", "32", "--seed", "3", "--output", tmp_path / name, *extra)
        assert code == 0, err
        made[name] = [Image.open(p.strip()).tobytes() for p in out.splitlines() if p.strip().endswith(".png")]
    assert made["turns"] and made["turns"] == made["every"]


def test_serve_medvram_gives_the_engine_parking(tiny_sd1, tmp_path, monkeypatch):
    """``serve --medvram``: every model the server loads generates with the parts taking turns."""
    from dreambooth import parking as parking_module
    from dreambooth.server.app import ServerSettings, create_app
    real_init = parking_module.Parking.__init__
    monkeypatch.setattr(parking_module.Parking, "__init__", lambda self, device, enabled=None: real_init(self, device, True))
    for medvram in (True, False):
        engine = create_app(ServerSettings(model=str(tiny_sd1), data_dir=tmp_path / "data", medvram=medvram)).state.engine
        assert (engine.pipeline.parking is not None) == medvram
