"""The WebUI's "Clip skip": SD1's text encoder stops N layers from its end (its N-th hidden state from
the end, through the final layer norm), recorded in the infotext and read back; SD2 and SDXL, as in the
WebUI, are left as they are; a value out of range is a one-line error naming the flag."""
import pytest
import torch
from PIL import Image

from conftest import run_cli
from dreambooth.errors import UserError
from dreambooth.generation.conditioning import PromptEncoder
from dreambooth.generation.infotext import parse_generation_parameters
from dreambooth.generation.params import GenerationParams
from dreambooth.generation.pipeline import load_generation_pipeline
from dreambooth.generation.sampling import generate
from dreambooth.generation.xyz import parse_axis


def made(pipeline, **kw):
    params = GenerationParams("a dog", steps=2, width=32, height=32, seed=3, **kw)
    return generate(pipeline, params)


def test_sd1_takes_the_hidden_state_n_layers_from_the_end_through_the_final_norm(tiny_sd1):
    pipeline = load_generation_pipeline(str(tiny_sd1))
    pipe = pipeline.pipe
    ids = pipe.tokenizer(["a dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = pipe.text_encoder(ids, output_hidden_states=True)
        expected = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm(out.hidden_states[-2])
        assert not torch.equal(expected, out.last_hidden_state)
        assert torch.equal(PromptEncoder(pipe, clip_skip=2).encode("a dog").embeds, expected)
        assert torch.equal(PromptEncoder(pipe).encode("a dog").embeds, out.last_hidden_state)


def test_recorded_in_the_infotext_and_remade_from_it(tiny_sd1, tmp_path):
    pipeline = load_generation_pipeline(str(tiny_sd1))
    plain, skipped = made(pipeline)[0], made(pipeline, clip_skip=2)[0]
    assert plain.image.tobytes() != skipped.image.tobytes()
    assert "Clip skip" not in plain.infotext and "Clip skip: 2" in skipped.infotext     # the WebUI's way
    info = parse_generation_parameters(skipped.infotext)
    again = generate(pipeline, GenerationParams.from_infotext(info))[0]
    assert again.image.tobytes() == skipped.image.tobytes()
    # the CLI: --clip-skip, and --from-image reads it back
    code, out, err = run_cli("generate", "--model", tiny_sd1, "--prompt", "a dog", "--steps", "2", "--width", "32",
                             "--height", "32", "--seed", "3", "--clip-skip", "2", "--output", tmp_path / "a")
    assert code == 0, err
    assert Image.open(out.split()[-1]).tobytes() == skipped.image.tobytes()
    code, out, err = run_cli("generate", "--from-image", out.split()[-1], "--model", tiny_sd1, "--output", tmp_path / "b")
    assert code == 0, err
    assert Image.open(out.split()[-1]).tobytes() == skipped.image.tobytes()


@pytest.mark.parametrize("family", ["tiny_sd2", "tiny_sdxl"])
def test_sd2_and_sdxl_are_left_as_they_are_with_a_word(family, request, capsys):
    pipeline = load_generation_pipeline(str(request.getfixturevalue(family)))
    plain = made(pipeline)[0]
    capsys.readouterr()
    skipped = made(pipeline, clip_skip=2)[0]
    assert skipped.image.tobytes() == plain.image.tobytes()
    assert "Clip skip 2: no effect" in capsys.readouterr().err
    assert "Clip skip: 2" in skipped.infotext                 # what was asked, as the WebUI records it


def test_out_of_range_is_a_one_line_error_naming_the_flag(tiny_sd1):
    for bad in (0, 13, 1.5):
        with pytest.raises(UserError, match="--clip-skip"):
            GenerationParams("a dog", clip_skip=bad).check()
    pipeline = load_generation_pipeline(str(tiny_sd1))            # its text encoder has 2 layers
    with pytest.raises(UserError, match=r"--clip-skip 3: this model's text encoder has 2 layers"):
        made(pipeline, clip_skip=3)
    with pytest.raises(UserError, match="infotext: Clip skip"):
        GenerationParams.from_infotext({"Prompt": "a dog", "Clip skip": "two"})
    axis = parse_axis("Clip skip: 1, 2", "--x")
    assert axis.type.field == "clip_skip" and axis.values == [1, 2]
