"""Shared fixtures: tiny pipelines of the real architectures, built once per session, offline."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("DREAMBOOTH_NO_PROGRESS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from intra-op threads, and threads spin badly when the CPU is shared.
torch.set_num_threads(1)

DREAMBENCH = Path(__file__).resolve().parents[1].parent / "shared" / "dreambench"


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path_factory, monkeypatch):
    """Model/LoRA hashes are cached; keep the tests' cache out of the user's home."""
    monkeypatch.setenv("DREAMBOOTH_CACHE", str(tmp_path_factory.getbasetemp() / "hash-cache"))


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory) -> Path:
    from dreambooth.tiny import save_tiny
    return save_tiny("sd1", tmp_path_factory.mktemp("tiny-sd1"))


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory) -> Path:
    from dreambooth.tiny import save_tiny
    return save_tiny("sd2", tmp_path_factory.mktemp("tiny-sd2"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    from dreambooth.tiny import save_tiny
    return save_tiny("sdxl", tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def dog_photos() -> Path:
    d = DREAMBENCH / "dog"
    if not d.is_dir():
        pytest.skip("../shared/dreambench is not beside this checkout")
    return d


@pytest.fixture
def backdrop_instances(tmp_path) -> Path:
    """A folder of 2 toy-subject pictures (64x64) on plain red and green backdrops."""
    import numpy as np
    from PIL import Image

    from dreambooth.toy.world import Subject, render
    folder = tmp_path / "instance"
    folder.mkdir()
    for i, bg in enumerate(["red", "green"]):
        pixels = render(Subject("triangle", "orange", "dots", "blue").scene(bg, np.random.default_rng(i)))
        Image.fromarray(pixels).resize((64, 64), Image.NEAREST).save(folder / f"{i}.png")
    return folder


def run_cli(*args: str):
    """Run the CLI in-process; returns (exit_code, stdout, stderr)."""
    import contextlib
    import io

    from dreambooth.cli.main import main
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()
