"""Presets, precedence and validation of the typed config."""
import pytest

from dreambooth.training.config import PRESET_DIR, TrainConfig, build_config, load_preset
from dreambooth.errors import UserError


def test_precedence_defaults_preset_flags(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: some/model\nmax-steps: 123\nlearning_rate: 3e-5\nvalidation_seeds: [5, 6]\n")
    cfg = build_config(str(preset), {"max_steps": 7, "rank": None})
    assert cfg.model == "some/model" and cfg.max_steps == 7 and cfg.learning_rate == 3e-5
    assert cfg.rank == TrainConfig().rank and cfg.validation_seeds == [5, 6]


def test_a_lora_run_on_the_toy_preset_drops_its_full_only_identifier_lr():
    assert build_config("toy").identifier_lr > 0
    assert build_config("toy", {"method": "lora"}).identifier_lr == 0   # no warning about a flag not given
    assert build_config("toy", {"method": "lora", "identifier_lr": 0.01}).identifier_lr == 0.01   # given: warned


def test_unknown_key_and_bad_value_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_stepz: 3\n")
    with pytest.raises(UserError, match="bad.yaml.*max_stepz"):
        load_preset(str(bad))
    bad.write_text("max_steps: many\n")
    with pytest.raises(UserError, match="max_steps"):
        load_preset(str(bad))
    with pytest.raises(UserError, match="no such file or shipped preset"):
        load_preset("nope")
    bad.write_text("max_steps: 3\nlearning_rate: 1e-4\nmax_steps: 5\n")       # YAML would keep the last, silently
    with pytest.raises(UserError, match=r"bad.yaml: cannot read YAML \('max_steps' is given twice"):
        load_preset(str(bad))
    bad.write_text("max_steps: 3\nmax-steps: 5\n")
    with pytest.raises(UserError, match="'max_steps' is given twice"):
        load_preset(str(bad))
    bad.write_text("validation_seeds: 1 2 3\n")             # as --help shows the default: a list is wanted
    with pytest.raises(UserError, match=r"validation_seeds = '1 2 3' is not a valid int; write a list, e.g. \[1, 2, 3\]"):
        load_preset(str(bad))


@pytest.mark.parametrize("name", ["sd15-full", "sd15-lora", "sd21-lora", "sdxl-lora"])
def test_shipped_presets_load_with_the_seeds_settings(name):
    cfg = build_config(name, {"instance_dir": "x", "instance_prompt": "a sks dog", "output": "o"})
    cfg.validate()
    assert cfg.max_steps in (400, 500)
    assert cfg.learning_rate == (5e-6 if cfg.method == "full" else 1e-4)
    assert cfg.resolution == (768 if name == "sd21-lora" else 1024 if name.startswith("sdxl") else 512)
    assert (PRESET_DIR / f"{name}.yaml").read_text().startswith("# dreambooth train --config")


@pytest.mark.parametrize("change, flag", [({"method": "dora"}, "--method"), ({"max_steps": 0}, "--max-steps"),
                                         ({"resolution": 100}, "--resolution"), ({"mixed_precision": "fp8"}, "--mixed-precision"),
                                         ({"lora_dropout": 1.5}, "--lora-dropout"),
                                         ({"class_sampler": "Foo"}, "--class-sampler Foo: unknown"),
                                         ({"validation_cfg": float("nan")}, "--validation-cfg nan"),
                                         ({"model": None}, "--model toy"),
                                         ({"caption_dropout": 1.5}, "--caption-dropout"),
                                         ({"class_prompt": "   "}, "--class-prompt: empty"),
                                         ({"validation_prompts": [""]}, "--validation-prompts: an empty prompt"),
                                         ({"validation_prompts": ["a sks dog", " "]}, "--validation-prompts: an empty"),
                                         ({"validation_seeds": [0, 1, 0]}, "--validation-seeds 0: given twice"),
                                         ({"resume": ""}, "--resume: empty")])
def test_validate_names_the_flag(change, flag):
    cfg = TrainConfig(model="m", instance_dir="x", instance_prompt="a sks dog", output="o").replace(**change)
    with pytest.raises(UserError, match=flag):
        cfg.validate()


def test_family_and_method_defaults():
    cfg = TrainConfig(method="full").resolve_defaults(768)
    assert cfg.resolution == 768 and cfg.learning_rate == 5e-6
    cfg = TrainConfig(method="lora", rank=8).resolve_defaults(512)
    assert cfg.learning_rate == 1e-4 and cfg.alpha == 8.0
    assert TrainConfig(class_prompt="a dog").use_prior and not TrainConfig().use_prior
    assert not TrainConfig(class_prompt="a dog", prior_preservation=False).use_prior


def test_train_without_a_model_is_one_line_naming_the_toy(tmp_path):
    from conftest import run_cli
    assert TrainConfig().model is None                     # no silent default model
    code, out, err = run_cli("train", "--instance-dir", tmp_path, "--instance-prompt", "a sks dog",
                             "--output", tmp_path / "o")
    assert code == 2 and "--model" in err and "--model toy" in err and err.count("\n") == 1, err


def test_help_shows_real_defaults_for_every_flag():
    from conftest import run_cli
    code, out, _ = run_cli("train", "--help")
    assert code == 0 and "_MISSING_TYPE" not in out and "object at 0x" not in out
    flat = " ".join(out.split())
    assert "Seeds for validation images. [default: 0 1 2 3]" in flat
    assert "[default: DPM++ 2M]" in flat


def test_an_empty_vae_drops_a_presets():
    """``--vae ''`` keeps the model's own VAE over a preset's (sdxl-lora's fp16-fix); it was recorded as
    '' (an empty "VAE path" in every infotext)."""
    assert build_config("sdxl-lora").vae == "madebyollin/sdxl-vae-fp16-fix"
    assert build_config("sdxl-lora", {"vae": ""}).vae is None


def test_settings_a_run_would_not_use_are_said():
    from dreambooth.training.guard import idle_settings
    cfg = TrainConfig(model="m", instance_dir="x", instance_prompt="a sks dog", output="o", max_steps=10)
    assert idle_settings(cfg) == []
    said = idle_settings(cfg.replace(keep_best=True, export_single_file=True, method="lora", lr_warmup_steps=10))
    assert [line.split(" ")[0] for line in said] == ["--keep-best:", "--export-single-file", "--lr-warmup-steps"]
    assert idle_settings(cfg.replace(keep_best=True, validate_every=5)) == []
    (dropped,) = idle_settings(cfg.replace(caption_dropout=1.0))
    assert dropped.startswith("--caption-dropout 1: every picture is shown with an empty prompt")
    assert idle_settings(cfg.replace(caption_dropout=0.1)) == []


def test_a_presets_unknown_key_is_named_with_the_nearest_setting(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("max_step: 3\n")
    with pytest.raises(UserError, match=r"p.yaml: unknown setting 'max_step' \(did you mean max_steps\?\)$"):
        load_preset(str(preset))


def test_null_in_a_preset_is_the_key_left_out(tmp_path):
    """'seed: null' was '--seed: required', naming a flag never given and not the file."""
    preset = tmp_path / "p.yaml"
    preset.write_text("seed: null\nmax_steps: ~\nvae: null\nrank: 8\n")
    assert load_preset(str(preset)) == {"rank": 8}
    cfg = build_config(str(preset), {"model": "m", "instance_dir": "x", "instance_prompt": "a sks dog", "output": "o"})
    assert cfg.validate().seed == TrainConfig().seed and cfg.max_steps == TrainConfig().max_steps


def test_settings_an_older_version_had_are_left_out_of_its_record_and_refused_in_a_preset(tmp_path):
    """The toy backdrops' settings were removed on 2026-12-04: a run's record of an older version still
    trains (without them, said once where they did something); a preset of the user's is told what to do."""
    import json

    from dreambooth import progress
    old = tmp_path / "old"
    old.mkdir()
    record = {"model": "toy", "max_steps": 9, "backdrop_augment": 0.75, "backdrop_caption": False,
              "backdrop_loss_weight": 0.1, "steps_done": 9}
    (old / "training_args.json").write_text(json.dumps(record))
    said = []
    with progress.subscribed(lambda e: said.append(e.message) if e.kind == "message" else None):
        assert load_preset(str(old / "training_args.json")) == {"model": "toy", "max_steps": 9}
        (old / "training_args.json").write_text(json.dumps({**record, "backdrop_augment": 0.0,
                                                            "backdrop_loss_weight": 1.0}))
        assert load_preset(str(old / "training_args.json")) == {"model": "toy", "max_steps": 9}   # all off: silent
    assert len(said) == 1 and "leaving out backdrop_augment 0.75, backdrop_loss_weight 0.1, settings of an older " \
        "dreambooth" in said[0], said
    preset = tmp_path / "mine.yaml"
    preset.write_text("backdrop-caption: true\n")
    with pytest.raises(UserError, match=r"mine.yaml: 'backdrop-caption' is a setting of an older dreambooth, removed "
                                        r"on 2026-12-04 .*: drop it$"):
        load_preset(str(preset))
