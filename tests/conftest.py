"""Shared fixtures: tiny pipelines of the real architectures, built once per session, offline."""
import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("DREAMBOOTH_NO_PROGRESS", "1")
# Hashes and the list of training outputs are cached: keep the tests' cache out of the user's home,
# in a folder that goes when the session ends.
os.environ["DREAMBOOTH_CACHE"] = tempfile.mkdtemp(prefix="dreambooth-test-cache-")
atexit.register(shutil.rmtree, os.environ["DREAMBOOTH_CACHE"], True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from intra-op threads, and threads spin badly on a busy CPU.
torch.set_num_threads(1)

# The files that take longest (about 3, 3, 2 and 1 minutes down to 20 s, on 2 cores) go first, so that the
# test processes (pytest-xdist, a file to each, in this order: --no-loadscope-reorder) end together.
SLOW_FILES = ("test_fsdp.py", "test_toy_learning.py", "test_multiprocess.py", "test_ui.py", "test_recreate.py",
              "test_server_jobs.py", "test_step_kernels.py", "test_fuzz.py")


def pytest_collection_modifyitems(config, items):
    first = {name: rank for rank, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))     # stable: each file keeps its order


DATA = Path(__file__).resolve().parent / "data"      # small files the tests carry (see data/LICENSE.md)


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory) -> Path:
    from dreambooth.testing.tiny import save_tiny
    return save_tiny("sd1", tmp_path_factory.mktemp("tiny-sd1"))


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory) -> Path:
    from dreambooth.testing.tiny import save_tiny
    return save_tiny("sd2", tmp_path_factory.mktemp("tiny-sd2"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    from dreambooth.testing.tiny import save_tiny
    return save_tiny("sdxl", tmp_path_factory.mktemp("tiny-sdxl"))


def make_photos(folder: Path, count: int = 5, seed: int = 0) -> Path:
    """``count`` small JPEG "photos" of one subject (a brown, spotted blob with a red collar) on varied
    grounds, sizes and aspect ratios, the way a user's phone photos vary: one is stored sideways with
    an EXIF orientation tag, as phones do."""
    import numpy as np
    from PIL import Image, ImageDraw
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [(160, 120), (120, 160), (144, 144), (176, 132), (128, 112)]
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        ground = tuple(int(c) for c in rng.integers(60, 220, 3))
        image = Image.new("RGB", (w, h), ground)
        draw = ImageDraw.Draw(image)
        for _ in range(12):                                   # a cluttered background
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            draw.rectangle((x, y, x + int(rng.integers(4, 20)), y + int(rng.integers(4, 20))),
                           fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        cx, cy, r = w // 2 + int(rng.integers(-10, 10)), h // 2 + int(rng.integers(-10, 10)), min(w, h) // 3
        draw.ellipse((cx - r, cy - r * 3 // 4, cx + r, cy + r * 3 // 4), fill=(120, 72, 40))
        for _ in range(5):
            sx, sy = cx + int(rng.integers(-r // 2, r // 2)), cy + int(rng.integers(-r // 3, r // 3))
            draw.ellipse((sx - 4, sy - 4, sx + 4, sy + 4), fill=(40, 24, 12))
        draw.rectangle((cx - r // 2, cy - r // 2, cx + r // 2, cy - r // 2 + 4), fill=(200, 30, 30))
        path = folder / f"{i:02d}.jpg"
        if i == 1:                      # stored rotated; EXIF orientation 6 turns it upright
            exif = Image.Exif()
            exif[0x0112] = 6
            image.transpose(Image.ROTATE_90).save(path, quality=92, exif=exif)
        else:
            image.save(path, quality=92)
    return folder


@pytest.fixture(scope="session")
def dog_photos(tmp_path_factory) -> Path:
    """Five small photos of one subject, drawn here: the tests carry what they need."""
    return make_photos(tmp_path_factory.mktemp("photos") / "dog")


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


def saved_weights(output: Path) -> dict:
    """Every weights file a training run wrote to ``output`` (its checkpoints left out), loaded, by path within it."""
    from safetensors.torch import load_file

    from dreambooth.outputs import CHECKPOINTS_DIR
    return {str(f.relative_to(output)): load_file(str(f)) for f in sorted(output.rglob("*.safetensors"))
            if CHECKPOINTS_DIR not in f.relative_to(output).parts}


def assert_same_weights(a: Path, b: Path, why: str = "") -> None:
    """Two training outputs wrote the same weights files, bit for bit (and some)."""
    wa, wb = saved_weights(a), saved_weights(b)
    assert wa and wa.keys() == wb.keys()
    for file in wa:
        assert wa[file].keys() == wb[file].keys()
        assert all(torch.equal(wa[file][k], wb[file][k]) for k in wa[file]), f"{file} differs {why}".rstrip()

