"""Bad values for every train flag and every generate option, made from the fields' own types and
ranges: wrong type, zero, negative, NaN, infinity, huge, empty, a file where a folder is expected
and the reverse. For each: exit code 2, one line, no traceback, and no file that existed before is
changed (an old output is there, with --overwrite, for every train case)."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_photos, run_cli
from dreambooth.checks import MAX_SEED
from dreambooth.generation.params import RANGES
from dreambooth.training.config import TrainConfig, field_type, flag

def bad_numbers(kind: type, low=None, high=None, above=None, seed=False) -> list[str]:
    """Values of a numeric flag that must be refused: not numbers, not finite, out of range."""
    values = ["x", "", "nan", "inf", "-inf"] if kind is float else ["x", "", "1.5", "nan", str(2**70)]
    if seed:
        return values + ["-2", str(MAX_SEED + 1)]
    if low is not None:
        values += [str(low - 1) if kind is int else str(low - 0.5)]
    if above is not None:
        values += [str(above), str(above - 1)]
    if high is not None:
        values += [str(high + 1) if kind is int else str(high * 10 + 1), str(10**12)]
    return values


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_sd1):
    root = tmp_path_factory.mktemp("fuzz")
    photos = make_photos(root / "photos", count=3)
    old = root / "old_model"
    old.mkdir()
    (old / "model_index.json").write_text("{}")
    (old / "training_args.json").write_text("{}")      # a training output: what --overwrite may replace
    (old / "notes.txt").write_text("the user's")
    a_file = root / "a-file.txt"
    a_file.write_text("not an image, not a folder")
    Image.new("RGB", (32, 32), (90, 90, 200)).save(root / "init.png")
    return {"root": root, "photos": photos, "old": old, "file": a_file, "model": tiny_sd1, "folder": root / "photos"}


def snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def train_cases(w) -> list[tuple[str, str]]:
    cases = []
    for f in TrainConfig.fields():
        typ, is_list = field_type(f)
        meta, name = f.metadata, flag(f.name)
        if typ in (int, float):
            cases += [(name, v) for v in bad_numbers(typ, meta.get("low"), meta.get("high"), meta.get("above"),
                                                      meta.get("seed", False))]
        elif "choices" in meta:
            cases += [(name, "nonsense"), (name, "")]
    cases += [("--model", str(w["root"] / "missing")), ("--model", str(w["file"])), ("--model", str(w["photos"])),
              ("--model", ""), ("--model", "not/cached-anywhere"),
              ("--vae", str(w["root"] / "missing")), ("--vae", str(w["photos"])),
              ("--model-config", str(w["file"])),
              ("--instance-dir", str(w["file"])), ("--instance-dir", str(w["root"] / "missing")), ("--instance-dir", ""),
              ("--instance-dir", str(w["old"])),                   # inside the output --overwrite would replace
              ("--instance-prompt", ""), ("--output", str(w["file"])), ("--output", ""),
              ("--output", "/proc/dreambooth-fuzz"), ("--output", str(w["photos"])),
              ("--class-dir", str(w["file"])), ("--resume", str(w["file"])), ("--resume", str(w["photos"])),
              ("--resume", "latest"),                              # the old output has no checkpoint
              ("--class-sampler", "Foo"), ("--validation-sampler", "Foo"),
              ("--dino-model", str(w["root"] / "missing")), ("--clip-model", str(w["file"]))]
    return cases


def test_every_train_flag(world):
    w = world
    base = ["train", "--model", w["model"], "--instance-dir", w["photos"], "--instance-prompt", "a sks dog",
            "--class-prompt", "a dog", "--num-class-images", "1", "--class-steps", "1", "--max-steps", "1",
            "--resolution", "32", "--validate-every", "1", "--output", w["old"], "--overwrite"]
    before = snapshot(w["root"])
    covered, failures = set(), []
    for name, value in train_cases(w):
        covered.add(name)
        code, _, err = run_cli(*base, name, value)
        if code != 2 or err.count("\n") != 1 or "Traceback" in err:
            failures.append(f"{name} {value!r}: exit {code}: {err.strip()[-300:]}")
    assert not failures, "\n".join(failures)
    assert snapshot(w["root"]) == before
    every = {flag(f.name) for f in TrainConfig.fields()
             if field_type(f)[0] is not bool and not (field_type(f)[0] is str and "choices" not in f.metadata)}
    assert every <= covered, every - covered


def generate_cases(w) -> list[list[str]]:
    cases = []
    for name, (low, high) in RANGES.items():
        cases += [[f"--{name.replace('_', '-')}", v] for v in bad_numbers(int, low, high)]
    cases += [["--seed", v] for v in bad_numbers(int, seed=True)]
    cases += [["--cfg", v] for v in bad_numbers(float, 0, 100)]
    cases += [[side, v] for side in ("--width", "--height") for v in bad_numbers(int, 8, 2048) + ["12", "0", "-8"]]
    init = str(w["root"] / "init.png")
    cases += [["--init-image", init, "--strength", v] for v in bad_numbers(float, 0, 1)]
    inpaint = ["--init-image", init, "--mask", init]
    cases += [[*inpaint, "--mask-blur", v] for v in bad_numbers(int, 0, 64)]
    cases += [[*inpaint, "--masked-padding", v] for v in bad_numbers(int, 0, 256)]
    cases += [[*inpaint, "--masked-content", v] for v in ("latent fog", "", "2")]
    cases += [["--only-masked"], ["--masked-content", "fill"], ["--invert-mask"]]  # inpainting settings need a mask
    cases += [["--resize-mode", "stretch"], ["--resize-mode", "crop and resize"],    # (an img2img setting)
              [*inpaint, "--only-masked", "--resize-mode", "resize and fill"]]
    hires = ["--hires"]
    cases += [[*hires, "--hires-scale", v] for v in bad_numbers(float, 1, 8)]
    cases += [[*hires, side, v] for side in ("--hires-width", "--hires-height") for v in bad_numbers(int, 0, 2048)]
    cases += [[*hires, "--hires-steps", v] for v in bad_numbers(int, 0, 1000)]
    cases += [[*hires, "--hires-upscaler", "ESRGAN_4x"], [*hires, "--init-image", init], [*hires, "--strength", "0"],
              ["--hires-scale", "1.5"], ["--hires-steps", "3"], [*hires, "--hires-scale", "8", "--width", "512"]]
    cases += [["--sampler", "DDIM", "--eta", v] for v in bad_numbers(float, 0, 1)]
    cases += [["--eta", "0.5"], ["--sampler", "DPM++ SDE", "--eta", "0"]]       # the stochastic samplers draw at 1
    for path_flag in ("--init-image", "--mask", "--from-image"):
        cases += [[path_flag, str(w["root"] / "missing.png")], [path_flag, str(w["photos"])], [path_flag, str(w["file"])],
                  [path_flag, ""]]
    cases += [["--mask", init],                                                   # a mask needs an init image
              ["--from-image", init],                                              # no infotext in it
              ["--sampler", "Foo"], ["--sampler", ""], ["--schedule", "Foo"], ["--sampler", "DDIM", "--schedule", "Karras"],
              ["--model", str(w["root"] / "missing")], ["--model", str(w["file"])], ["--model", str(w["photos"])],
              ["--model", ""], ["--model-config", str(w["file"])], ["--vae", str(w["root"] / "missing")],
              ["--lora", str(w["root"] / "missing")], ["--lora", str(w["file"])], ["--lora", str(w["photos"])],
              ["--lora-dir", str(w["file"])], ["--lora-dir", str(w["root"] / "missing")],
              ["--output", str(w["file"])], ["--device", "nonsense"], ["--device", "cuda:7"], ["--dtype", "fp8"],
              ["--prompt", "a dog <lora:nobody:1>"], ["--prompt", "a dog <hypernet:x:1>"],
              ["--prompt", "a dog <lora:x:heavy>"], ["--prompt", "a dog", "--prompt-matrix"],   # no '|' to vary
              ["--x", "Colour: red"], ["--x", "Steps: 0, 5"], ["--y", "CFG scale: nan"], ["--z", "Seed: x"],
              ["--x", "Sampler: Foo"], ["--x", "Size: 12x12"], ["--prompt-matrix", "--x", "Steps: 1"],
              # plots past 10,000 images: refused before anything is made (a long range once took all the memory)
              ["--x", "Seed: 1-100000000"], ["--x", "Seed: 1-5 [100000000]"], ["--x", "Seed: 1-200", "--y", "Steps: 1-60"],
              ["--prompt", "|".join("abcdefghijklmnopqrstuvwxyz"), "--prompt-matrix"]]
    return cases


def test_every_generate_option(world):
    w = world
    base = ["generate", "--model", w["model"], "--prompt", "a dog|red", "--steps", "1", "--width", "32", "--height",
            "32", "--output", w["root"] / "images"]
    before = snapshot(w["root"])
    failures, covered = [], set()
    for args in generate_cases(w):
        covered.update(a for a in args if a.startswith("--"))
        code, _, err = run_cli(*base, *args)
        if code != 2 or err.count("\n") != 1 or "Traceback" in err:
            failures.append(f"{args}: exit {code}: {err.strip()[-300:]}")
    assert not failures, "\n".join(failures)
    assert snapshot(w["root"]) == before
    from dreambooth.cli.generate import generate_command
    options = {o for p in generate_command.params for o in p.opts if o.startswith("--")}
    takes_no_bad_value = {"--list-samplers", "--fast-batches", "--one-by-one", "--medvram", "--negative-prompt", "--help"}
    assert options - takes_no_bad_value <= covered, options - covered - takes_no_bad_value


def test_the_value_generators_are_strict():
    assert "nan" in bad_numbers(float) and "-1" in bad_numbers(int, 0)
    assert all(not (v.lstrip("-").isdigit() and 1 <= int(v) <= 1000) for v in bad_numbers(int, 1, 1000))
    assert math.isinf(float(bad_numbers(float)[3]))


def test_every_server_request_field(world, tmp_path):
    """Every field of txt2img, img2img, options and job requests, with a value of the wrong type, and
    the fields the server uses out of range: a 4xx naming the field; the server keeps serving; the
    jobs it stored are still there."""
    import httpx

    from dreambooth.server.app import ServerSettings
    from dreambooth.server.schemas import Img2ImgRequest, Txt2ImgRequest
    from test_server import served
    init = base64_png(world["root"] / "init.png")
    base = {"prompt": "a dog", "steps": 2, "width": 32, "height": 32}
    cases = []
    for route, model in (("txt2img", Txt2ImgRequest), ("img2img", Img2ImgRequest)):
        extra = {"init_images": [init]} if route == "img2img" else {}
        for name, spec in model.model_fields.items():
            container = any(t in str(spec.annotation) for t in ("list", "dict"))
            wrong = ["not a container", 3] if container else [{"a": 1}, [[1]]]        # never the field's type
            cases += [(route, {**base, **extra, name: value}, name) for value in wrong]
        used = {"steps": ["0", 1001, -1], "width": [12, 100_000, 0], "height": [7, 10**9], "cfg_scale": ["nan", -1, 1e9],
                "seed": [-2, 2**64], "batch_size": [0, -1, 1000], "n_iter": [0, 10**6], "sampler_name": ["Foo"],
                "scheduler": ["Foo"], "denoising_strength": ["nan", -0.5, 2] if route == "img2img" else []}
        for name, values in used.items():
            cases += [(route, {**base, **extra, name: value}, name) for value in values]
    with served(ServerSettings(model="toy", data_dir=tmp_path / "data")) as (app, port):
        url = f"http://127.0.0.1:{port}"
        failures = []
        for route, body, name in cases:
            reply = httpx.post(f"{url}/sdapi/v1/{route}", json=body, timeout=60)
            detail = reply.json().get("detail", "") if reply.headers.get("content-type", "").startswith("application/json") else ""
            if not 400 <= reply.status_code < 500 or name not in str(detail):
                failures.append(f"{route} {name}={body[name]!r}: {reply.status_code} {str(detail)[:200]}")
        for key, value in (("sd_model_checkpoint", ["x"]), ("sd_vae", 3), ("samples_format", 5), ("nope", 1)):
            reply = httpx.post(f"{url}/sdapi/v1/options", json={key: value}, timeout=60)
            if not 400 <= reply.status_code < 500 or key not in reply.json()["detail"]:
                failures.append(f"options {key}={value!r}: {reply.status_code} {reply.text[:200]}")
        assert not failures, "\n".join(failures)
        assert httpx.get(f"{url}/sdapi/v1/sd-models").status_code == 200


def base64_png(path: Path) -> str:
    import base64
    return base64.b64encode(path.read_bytes()).decode()
