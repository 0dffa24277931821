"""The metrics against an independent computation of the paper's definitions, with tiny random DINO
ViT and CLIP models of the real classes, offline."""
import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps
from PIL.PngImagePlugin import PngInfo

from conftest import run_cli

PROMPTS = ["a sks dog in the jungle", "a sks dog in the jungle", "a red sks dog", "a sks dog on the beach"]
STRIPPED = ["a dog in the jungle", "a dog in the jungle", "a red dog", "a dog on the beach"]
SIZES = [(300, 200), (200, 320), (256, 256), (512, 384)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from dreambooth.testing.eval_models import save_tiny_eval_models
    return save_tiny_eval_models(tmp_path_factory.mktemp("eval-models"))


def _picture(seed: int, size) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize(size, Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        draw.ellipse((x, y, x + 40, y + 30), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return img


def _infotext(prompt: str, seed: int) -> str:
    return f"{prompt}\nNegative prompt: blurry, low quality\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: 64x64"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-data")
    real, gen, plain, klass = root / "real", root / "generated", root / "plain", root / "class"
    for d in (real, gen, plain, klass):
        d.mkdir()
    for i, size in enumerate(SIZES[:3]):
        _picture(100 + i, size).save(real / f"{i:02d}.jpg", quality=95)
    # one real photo stored sideways with an EXIF orientation tag (6: rotate 90 degrees clockwise to view)
    exif = Image.Exif()
    exif[0x0112] = 6
    _picture(199, (320, 240)).save(real / "03.jpg", quality=95, exif=exif)
    for i, (prompt, size) in enumerate(zip(PROMPTS, SIZES)):
        info = PngInfo()
        info.add_text("parameters", _infotext(prompt, i))
        _picture(200 + i, size).save(gen / f"{i:03d}.png", pnginfo=info)
        _picture(200 + i, size).save(plain / f"{i:03d}.png")
    for i in range(2):
        _picture(300 + i, (280, 300)).save(klass / f"{i}.png")
    return {"real": real, "generated": gen, "plain": plain, "class": klass}


# ----- an independent computation of the definitions -------------------------------------------------

def _prep(path, resize, crop, mean, std):
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    w, h = img.size
    short = min(w, h)
    new = (resize, int(resize * h / w)) if w == short else (int(resize * w / h), resize)
    img = img.resize(new, Image.BICUBIC)
    left, top = round((new[0] - crop) / 2), round((new[1] - crop) / 2)
    arr = np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.float64) / 255.0
    arr = (arr - np.array(mean)) / np.array(std)
    return torch.tensor(arr, dtype=torch.float32).permute(2, 0, 1)[None]


def _features(out):
    return out.pooler_output if hasattr(out, "pooler_output") else out


class Reference:
    def __init__(self, models):
        from transformers import CLIPModel, CLIPTokenizer, ViTModel
        self.vit = ViTModel.from_pretrained(models[0], add_pooling_layer=False).eval()
        self.clip = CLIPModel.from_pretrained(models[1]).eval()
        self.tok = CLIPTokenizer.from_pretrained(models[1])

    @torch.no_grad()
    def dino(self, path):
        x = _prep(path, 256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        return self.vit(pixel_values=x).last_hidden_state[0, 0]

    @torch.no_grad()
    def clip_image(self, path):
        x = _prep(path, 32, 32, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
        return _features(self.clip.get_image_features(pixel_values=x))[0]

    @torch.no_grad()
    def clip_text(self, text):
        return _features(self.clip.get_text_features(**self.tok([text], return_tensors="pt")))[0]


def _cos(a, b):
    return float(torch.dot(a.double(), b.double()) / (a.double().norm() * b.double().norm()))


def _mean_over_pairs(xs, ys):
    values = [_cos(x, y) for x in xs for y in ys]
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def reference(models):
    return Reference(models)


def _expected(reference, real_files, gen_files, texts):
    d_real, d_gen = [reference.dino(p) for p in real_files], [reference.dino(p) for p in gen_files]
    c_real, c_gen = [reference.clip_image(p) for p in real_files], [reference.clip_image(p) for p in gen_files]
    clip_t = sum(_cos(c, reference.clip_text(t)) for c, t in zip(c_gen, texts)) / len(texts)
    return {"dino": _mean_over_pairs(d_gen, d_real), "clip_i": _mean_over_pairs(c_gen, c_real), "clip_t": clip_t}


def _evaluate(models, out, *args):
    code, stdout, err = run_cli("evaluate", "--dino-model", models[0], "--clip-model", models[1], "--output", out, *args)
    assert code == 0, err
    return json.loads((out / "metrics.json").read_text()), stdout


# ----- the command equals the definitions ---------------------------------------------------------------

def test_evaluate_matches_independent_computation(models, folders, reference, tmp_path):
    metrics, stdout = _evaluate(models, tmp_path, "--real", folders["real"], "--generated", folders["generated"])
    real_files = sorted(folders["real"].iterdir())
    gen_files = sorted(folders["generated"].iterdir())
    expected = _expected(reference, real_files, gen_files, STRIPPED)
    for key in ("dino", "clip_i", "clip_t"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-4), key
    assert [e["clip_t_prompt"] for e in metrics["per_image"]] == STRIPPED
    assert [e["prompt"] for e in metrics["per_image"]] == PROMPTS
    assert "raw cosine" in metrics["notes"]["clip_t"]
    assert "pres" not in metrics and "div" not in metrics
    assert "DINO" in stdout and "CLIP-T" in stdout


def test_an_earlier_evaluation_is_replaced_only_when_asked(models, folders, tmp_path):
    args = ("--real", folders["real"], "--generated", folders["generated"])
    _evaluate(models, tmp_path, *args)
    (tmp_path / "metrics.json").write_text("{}")                # (to tell it from a new one)
    code, _, err = run_cli("evaluate", "--dino-model", models[0], "--clip-model", models[1], "--output", tmp_path, *args)
    assert code == 2 and "holds metrics.json from an earlier run; pass --overwrite" in err and err.count("\n") == 1
    assert (tmp_path / "metrics.json").read_text() == "{}"
    metrics, _ = _evaluate(models, tmp_path, *args, "--overwrite")
    assert "dino" in metrics


def test_grid_images_are_not_scored(models, folders, tmp_path):
    """A prompt matrix's or a plot's folder holds its grid beside the images: the grid is not an image."""
    import shutil
    generated = tmp_path / "generated"
    shutil.copytree(folders["generated"], generated)
    first = sorted(generated.iterdir())[0]
    shutil.copy(first, generated / "grid-00001-1.png")
    with_grid, _ = _evaluate(models, tmp_path / "a", "--real", folders["real"], "--generated", generated,
                             "--class-generated", generated)
    plain, _ = _evaluate(models, tmp_path / "b", "--real", folders["real"], "--generated", folders["generated"],
                         "--class-generated", folders["generated"])
    assert with_grid["counts"] == plain["counts"] and with_grid["dino"] == plain["dino"]
    assert with_grid["pres"] == plain["pres"]


def test_identical_sets_give_mean_self_similarity(models, folders, reference, tmp_path):
    gen = folders["generated"]
    metrics, _ = _evaluate(models, tmp_path, "--real", gen, "--generated", gen)
    files = sorted(gen.iterdir())
    d = [reference.dino(p) for p in files]
    c = [reference.clip_image(p) for p in files]
    assert metrics["dino"] == pytest.approx(_mean_over_pairs(d, d), abs=1e-4)
    assert metrics["clip_i"] == pytest.approx(_mean_over_pairs(c, c), abs=1e-4)
    assert abs(metrics["dino"] - 1.0) > 1e-3 and abs(metrics["clip_i"] - 1.0) > 1e-3  # not a constant
    # the real-image reference (the paper's "Real Images" row) leaves out each image with itself
    n = len(files)
    distinct = [_cos(d[i], d[j]) for i in range(n) for j in range(n) if i != j]
    assert metrics["real_reference"]["dino"] == pytest.approx(sum(distinct) / len(distinct), abs=1e-4)


def test_keep_identifier_and_prompt_files(models, folders, reference, tmp_path):
    gen_files = sorted(folders["plain"].iterdir())
    c_gen = [reference.clip_image(p) for p in gen_files]
    kept, _ = _evaluate(models, tmp_path / "kept", "--real", folders["real"], "--generated", folders["generated"],
                        "--keep-identifier")
    want = sum(_cos(c, reference.clip_text(t)) for c, t in zip(c_gen, PROMPTS)) / len(PROMPTS)
    assert kept["clip_t"] == pytest.approx(want, abs=1e-4)

    lines = ["a zwx cat", "a zwx cat on the beach", "a blue zwx cat", "a zwx cat in the snow"]
    (tmp_path / "prompts.txt").write_text("\n".join(lines) + "\n")
    by_text, _ = _evaluate(models, tmp_path / "txt", "--real", folders["real"], "--generated", folders["plain"],
                           "--prompts", tmp_path / "prompts.txt", "--identifier", "zwx")
    texts = ["a cat", "a cat on the beach", "a blue cat", "a cat in the snow"]
    want = sum(_cos(c, reference.clip_text(t)) for c, t in zip(c_gen, texts)) / len(texts)
    assert by_text["clip_t"] == pytest.approx(want, abs=1e-4)

    mapping = {f.name: p for f, p in zip(gen_files, reversed(lines))}
    (tmp_path / "prompts.json").write_text(json.dumps(mapping))
    by_json, _ = _evaluate(models, tmp_path / "json", "--real", folders["real"], "--generated", folders["plain"],
                           "--prompts", tmp_path / "prompts.json", "--identifier", "zwx")
    want = sum(_cos(c, reference.clip_text(t)) for c, t in zip(c_gen, reversed(texts))) / len(texts)
    assert by_json["clip_t"] == pytest.approx(want, abs=1e-4)


def test_pres_and_div(models, folders, reference, tmp_path):
    metrics, _ = _evaluate(models, tmp_path, "--real", folders["real"], "--generated", folders["generated"],
                           "--class-generated", folders["class"], "--div")
    d_real = [reference.dino(p) for p in sorted(folders["real"].iterdir())]
    d_class = [reference.dino(p) for p in sorted(folders["class"].iterdir())]
    assert metrics["pres"] == pytest.approx(_mean_over_pairs(d_class, d_real), abs=1e-4)
    assert "div" in metrics
    if importlib.util.find_spec("lpips") is None:
        assert metrics["div"] is None
        assert "lpips" in metrics["unavailable"]["div"]


def test_div_groups_by_prompt():
    from dreambooth.evaluation.metrics import div_score
    images = [_picture(i, (64, 64)) for i in range(5)]
    prompts = ["a", "a", "a", "b", "b"]

    def l1(x, y):
        return float((x - y).abs().mean())
    value, reason = div_score(images, prompts, l1)
    assert reason is None

    def arr(im):  # 256 x 256, in [-1, 1]
        return np.asarray(im.resize((256, 256), Image.BICUBIC), dtype=np.float64) / 127.5 - 1

    def d(i, j):
        return float(np.abs(arr(images[i]) - arr(images[j])).mean())
    group_a = (d(0, 1) + d(0, 2) + d(1, 2)) / 3
    assert value == pytest.approx((group_a + d(3, 4)) / 2, abs=1e-5)
    assert div_score(images[:2], ["a", "b"], l1) == (None, "DIV needs at least two generated images of the same prompt")


def test_div_unavailable_without_lpips(monkeypatch):
    import builtins

    from dreambooth.evaluation.metrics import load_lpips
    real_import = builtins.__import__

    def no_lpips(name, *args, **kwargs):
        if name == "lpips":
            raise ImportError("No module named 'lpips'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_lpips)
    fn, reason = load_lpips()
    assert fn is None and "lpips" in reason and "\n" not in reason


# ----- user errors --------------------------------------------------------------------------------------

def test_missing_model_is_one_line(folders, models, tmp_path):
    code, _, err = run_cli("evaluate", "--real", folders["real"], "--generated", folders["generated"],
                           "--dino-model", "nobody/not-cached-dino", "--clip-model", models[1], "--output", tmp_path)
    assert code == 2
    assert err.count("\n") == 1 and "not in the local Hugging Face cache" in err and "hf download" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli("evaluate", "--real", folders["real"], "--generated", folders["generated"],
                           "--dino-model", models[0], "--clip-model", empty, "--output", tmp_path)
    assert code == 2 and "config.json" in err and err.count("\n") == 1
    code, _, err = run_cli("evaluate", "--real", folders["real"], "--generated", folders["generated"],
                           "--dino-model", models[1], "--clip-model", models[1], "--output", tmp_path)
    assert code == 2 and "not a DINO ViT" in err


def test_prompt_errors(folders, models, tmp_path):
    base = ("evaluate", "--real", folders["real"], "--dino-model", models[0], "--clip-model", models[1],
            "--output", tmp_path)
    code, _, err = run_cli(*base, "--generated", folders["plain"])
    assert code == 2 and "--prompts" in err and err.count("\n") == 1
    (tmp_path / "few.txt").write_text("a sks dog\n")
    code, _, err = run_cli(*base, "--generated", folders["plain"], "--prompts", tmp_path / "few.txt")
    assert code == 2 and "1 prompts for 4 generated images" in err
    code, _, err = run_cli(*base, "--generated", tmp_path / "nowhere")
    assert code == 2 and "no such folder" in err
    first = sorted(folders["plain"].iterdir())[0].name
    (tmp_path / "map.json").write_text(json.dumps({first: 5}))
    code, _, err = run_cli(*base, "--generated", folders["plain"], "--prompts", tmp_path / "map.json")
    assert code == 2 and f"{first}: 5 is not a prompt" in err, err


# ----- helpers -----------------------------------------------------------------------------------------

def test_png_prompts_and_strip_identifier(folders, tmp_path):
    from dreambooth.evaluation.prompts import read_png_prompt, strip_identifier
    from dreambooth.images import write_png
    tagged = write_png(Image.new("RGB", (8, 8)), tmp_path / "t.png",
                       "a sks dog, <lora:my_dog:0.8>\nin the snow\nNegative prompt: cat\nSteps: 20, Sampler: Euler, Seed: 1")
    assert read_png_prompt(tagged) == "a sks dog, in the snow"          # LoRA tags are not part of the text
    assert read_png_prompt(sorted(folders["generated"].iterdir())[2]) == PROMPTS[2]
    assert read_png_prompt(sorted(folders["plain"].iterdir())[0]) is None
    assert strip_identifier("a sks dog, sks", "sks") == "a dog,"
    assert strip_identifier("a photo of sks dog wearing masks", "sks") == "a photo of dog wearing masks"
    assert strip_identifier("a sks dog", None) == "a sks dog"


def test_preprocessing_shape_and_orientation(folders):
    from dreambooth.evaluation.encoders import resize_center_crop
    from dreambooth.images import open_image as load_image
    upright = load_image(folders["real"] / "03.jpg")
    assert upright.size == (240, 320)  # EXIF orientation applied
    assert resize_center_crop(upright, 256, 224).size == (224, 224)
    assert not math.isnan(float(np.asarray(resize_center_crop(upright, 256, 224)).mean()))


# ----- what users hand it ------------------------------------------------------------------------------

def test_webui_syntax_and_identifier_case_are_taken_out_for_clip_t():
    from dreambooth.evaluation.prompts import plain_text, strip_identifier
    cases = {"a (sks:1.3) dog": "a dog", "a ((SKS)) dog": "a dog", "a [cat:dog:0.5] BREAK on grass": "a dog on grass",
             "a Sks dog, (oil painting:1.2)": "a dog, oil painting", "a [sks] dog": "a dog",
             "a sks dog <lora:my_dog:0.8>": "a dog", "a \\(sks\\) dog": "a dog"}
    for prompt, want in cases.items():
        assert strip_identifier(plain_text(prompt), "sks") == want, prompt


def test_prompt_files_as_editors_write_them(models, folders, tmp_path):
    lines = ["a zwx cat", "a zwx cat on the beach", "a blue zwx cat", "a zwx cat in the snow"]
    args = ("--real", folders["real"], "--generated", folders["plain"], "--identifier", "zwx")
    (tmp_path / "p.txt").write_text("\n".join(lines))
    want, _ = _evaluate(models, tmp_path / "txt", *args, "--prompts", tmp_path / "p.txt")
    (tmp_path / "list.json").write_text(json.dumps(lines, indent=0))           # a JSON list, in file order
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())   # Notepad's UTF-8
    (tmp_path / "utf16.txt").write_bytes("\n".join(lines).encode("utf-16"))          # PowerShell's >
    for name in ("list.json", "bom.txt", "utf16.txt"):
        got, _ = _evaluate(models, tmp_path / name.replace(".", "-"), *args, "--prompts", tmp_path / name)
        assert [e["clip_t_prompt"] for e in got["per_image"]] == [e["clip_t_prompt"] for e in want["per_image"]], name
        assert got["clip_t"] == pytest.approx(want["clip_t"], abs=1e-9), name
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 zwx\n".encode("latin-1") * 4)
    code, _, err = run_cli("evaluate", *args, "--dino-model", models[0], "--clip-model", models[1],
                           "--output", tmp_path / "l1", "--prompts", tmp_path / "latin1.txt")
    assert code == 2 and "save it as UTF-8" in err and err.count("\n") == 1, err


def test_masks_beside_the_photos_are_not_real_photos(models, folders, tmp_path):
    import shutil
    real = tmp_path / "real"
    shutil.copytree(folders["real"], real)
    for photo in sorted(real.iterdir()):
        Image.new("L", (64, 64), 255).save(real / f"{photo.stem}.mask.png")      # the --masked-loss layout
    want, _ = _evaluate(models, tmp_path / "plain", "--real", folders["real"], "--generated", folders["generated"])
    got, _ = _evaluate(models, tmp_path / "masked", "--real", real, "--generated", folders["generated"])
    assert got["counts"]["real"] == want["counts"]["real"] == 4
    assert got["dino"] == pytest.approx(want["dino"], abs=1e-12)


def test_a_broken_image_is_said_as_such_and_a_missing_identifier_is_said(models, folders, tmp_path):
    import shutil
    gen = tmp_path / "gen"
    shutil.copytree(folders["generated"], gen)
    (gen / "zz.png").write_text("not a picture")
    code, _, err = run_cli("evaluate", "--real", folders["real"], "--generated", gen, "--dino-model", models[0],
                           "--clip-model", models[1], "--output", tmp_path / "o")
    assert code == 2 and "zz.png: not a readable image" in err, err
    code, _, err = run_cli("evaluate", "--real", folders["real"], "--generated", folders["generated"],
                           "--identifier", "ohwx", "--dino-model", models[0], "--clip-model", models[1],
                           "--output", tmp_path / "o2")
    assert code == 0 and "--identifier ohwx: in none of the prompts" in err, err


def test_one_real_photo_says_why_there_is_no_real_images_row(models, folders, tmp_path):
    real = tmp_path / "one"
    real.mkdir()
    Image.open(sorted(folders["real"].iterdir())[0]).save(real / "a.jpg")
    got, stdout = _evaluate(models, tmp_path / "o", "--real", real, "--generated", folders["generated"])
    assert "two real photos" in got["unavailable"]["real_reference"] and got["real_reference"]["dino"] is None
