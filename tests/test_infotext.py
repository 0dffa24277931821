"""Infotext: written into PNGs in the WebUI's format, read back by the WebUI's rules."""
from PIL import Image

from dreambooth.generation.infotext import (A1111_DEFAULTS, format_infotext, parse_generation_parameters, quote, read_infotext,
                                 unquote)
from dreambooth.images import write_png

# The example in the WebUI's docstring of parse_generation_parameters.
A1111_EXAMPLE = """girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate
Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing
Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b
"""


def test_a1111_docstring_example():
    res = parse_generation_parameters(A1111_EXAMPLE)
    expected = {
        "Prompt": "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, "
                  "by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate",
        "Negative prompt": "ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn "
                           "face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing",
        "Steps": "20",
        "Sampler": "Euler a",
        "CFG scale": "7",
        "Seed": "965400086",
        "Size-1": "512",
        "Size-2": "512",
        "Model hash": "45dee52b",
    }
    assert {k: res[k] for k in expected} == expected
    assert res["Clip skip"] == "1" and res["Schedule type"] == "Automatic"     # the WebUI's defaults
    bare = parse_generation_parameters(A1111_EXAMPLE, defaults=False)
    assert bare == expected


def test_quoted_values_and_flags():
    text = ('a cat\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4.5, Seed: 7, Size: 832x1216, '
            'Lora hashes: "sks_dog: 0123456789ab, style: ba9876543210", Hires upscale: 2, Version: v1.10.1')
    res = parse_generation_parameters(text)
    assert res["Prompt"] == "a cat" and res["Negative prompt"] == ""
    assert res["Size-1"] == "832" and res["Size-2"] == "1216"
    assert res["Lora hashes"] == "sks_dog: 0123456789ab, style: ba9876543210"
    assert res["Schedule type"] == "Karras" and res["Version"] == "v1.10.1" and res["CFG scale"] == "4.5"


def test_multiline_prompts_and_short_last_line():
    text = "line one\nline two\nNegative prompt: bad\nworse\nSteps: 5, Seed: 1, CFG scale: 2"
    res = parse_generation_parameters(text)
    assert res["Prompt"] == "line one\nline two" and res["Negative prompt"] == "bad\nworse"
    # fewer than three pairs on the last line: it is part of the prompt
    res = parse_generation_parameters("just a prompt\nwith note: here")
    assert res["Prompt"] == "just a prompt\nwith note: here" and "Steps" not in res


def test_quote_round_trip():
    for value in ["plain", "a, b", "k: v", "two\nlines", 'has "quotes", too']:
        assert unquote(quote(value)) == value
    assert quote("plain") == "plain" and quote("a, b") == '"a, b"'


def test_format_matches_webui_layout():
    text = format_infotext("a dog", "blurry", {"Steps": 20, "Sampler": "Euler a", "Schedule type": "Karras",
                                               "CFG scale": 7.0, "Seed": 1, "Size": "512x512", "Model hash": None,
                                               "Lora hashes": "a: 1, b: 2"})
    assert text == ('a dog\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Schedule type: Karras, '
                    'CFG scale: 7, Seed: 1, Size: 512x512, Lora hashes: "a: 1, b: 2"')
    assert format_infotext("a dog", "", {"Steps": 2, "Seed": 3, "CFG scale": 1.5}) == \
        "a dog\nSteps: 2, Seed: 3, CFG scale: 1.5"


def test_round_trip_through_png(tmp_path):
    prompt = "a (sks:1.2) dog, [snow:rain:0.5]\nsecond line"
    params = {"Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 6.5, "Seed": 42,
              "Size": "64x96", "Model hash": "0123456789", "Model": "my model, v2"}
    text = format_infotext(prompt, "ugly, blurry", params)
    path = write_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", text)
    assert read_infotext(path) == text
    res = parse_generation_parameters(read_infotext(path))
    assert res["Prompt"] == prompt and res["Negative prompt"] == "ugly, blurry"
    assert (res["Steps"], res["Sampler"], res["Schedule type"], res["CFG scale"], res["Seed"]) == \
        ("20", "DPM++ 2M", "Karras", "6.5", "42")
    assert (res["Size-1"], res["Size-2"], res["Model hash"], res["Model"]) == ("64", "96", "0123456789", "my model, v2")


def test_read_infotext_none_and_jpeg_exif(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    assert read_infotext(plain) is None
    text = "a cat\nSteps: 5, Sampler: Euler, Seed: 1"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf-16-be")
    jpg = tmp_path / "x.jpg"
    Image.new("RGB", (4, 4)).save(jpg, exif=exif.tobytes())
    assert read_infotext(jpg) == text


def test_defaults_are_the_webuis():
    res = parse_generation_parameters("p\nSteps: 1, Seed: 2, Sampler: Euler")
    for key, value in A1111_DEFAULTS.items():
        assert res[key] == value


def test_a_model_under_home_is_recorded_with_a_tilde_and_found_again(tiny_sd1, monkeypatch):
    """A PNG someone shares does not carry their user name; --from-image still finds the model."""
    from dreambooth.generation.infotext import parse_generation_parameters
    from dreambooth.generation.params import GenerationParams
    from dreambooth.generation.pipeline import load_generation_pipeline, sources_from_infotext
    from dreambooth.generation.sampling import generate
    monkeypatch.setenv("HOME", str(tiny_sd1.parent))
    made = generate(load_generation_pipeline(str(tiny_sd1)), GenerationParams("a dog", steps=1, width=32, height=32, seed=1))
    info = parse_generation_parameters(made[0].infotext)
    assert info["Model path"] == f"~/{tiny_sd1.name}" and str(tiny_sd1.parent) not in made[0].infotext
    assert sources_from_infotext(info)[0] == f"~/{tiny_sd1.name}"
