"""``dreambooth pnginfo``: the WebUI's PNG Info tab on the command line."""
from __future__ import annotations

import json

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from conftest import run_cli

A1111 = "a dog\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x48"


def test_pnginfo_prints_an_images_infotext_and_its_settings(tmp_path):
    meta = PngInfo()
    meta.add_text("parameters", A1111)
    made, plain = tmp_path / "made.png", tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(made, pnginfo=meta)
    Image.new("RGB", (8, 8)).save(plain)
    code, out, _ = run_cli("pnginfo", str(made))
    assert code == 0 and out.strip() == A1111
    code, out, _ = run_cli("pnginfo", "--json", str(made))
    settings = json.loads(out)
    assert code == 0 and settings["Prompt"] == "a dog" and settings["Negative prompt"] == "blurry"
    assert settings["Seed"] == "5" and (settings["Size-1"], settings["Size-2"]) == ("64", "48")
    code, _, err = run_cli("pnginfo", str(plain))
    assert code == 2 and err.count("\n") == 1 and "no generation settings in this image" in err
