"""Where outputs go and what they are called: the one place for output file names.

* generated images: ``00001-<seed>.png`` (grids ``grid-00001-<seed>.png``), numbered on from the
  highest number in the folder, never overwriting;
* a training output: ``pytorch_lora_weights.safetensors`` (diffusers LoRA), ``<name>.safetensors``
  (the kohya/A1111 LoRA file, or the single-file checkpoint, named after the folder),
  ``training_args.json``, ``class_images/class-00012.png``, ``checkpoints/checkpoint-000100``,
  ``validation/step-000050.png`` (and its images in ``validation/step-000050/``), ``metrics.csv``,
  ``curve.png`` and ``best/`` beside them;
* an evaluation: ``metrics.json``; a DreamBench run: ``images/``, ``grids/``, ``report.json``, ``report.md``
  (an earlier run's are replaced only when asked: ``--overwrite``);
* saved weights get the permissions of any file the user writes (0644 under the usual umask):
  safetensors writes 0600.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

from .errors import UserError

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
TRAINING_ARGS_FILE = "training_args.json"
CLASS_IMAGES_DIR = "class_images"
CHECKPOINTS_DIR = "checkpoints"
PREVIOUS_OUTPUT_DIR = ".previous"     # an output --overwrite replaces, until the new run has written its own
VALIDATION_DIR = "validation"
GRID_PREFIX = "grid-"                    # a prompt matrix's or a plot's grid image (the WebUI names its own so too)
METRICS_FILE = "metrics.json"          # dreambooth evaluate's
_NUMBERED = re.compile(r"^(\d+)-")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def check_output_folder(path: Path, flag: str = "--output") -> None:
    """A one-line error, before any work, for an output folder that cannot be written: a file in its
    place, or no writable folder to make it in. Nothing is created."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: exists and is not a folder")
    parent = path.absolute()
    while not parent.exists():
        parent = parent.parent
    if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise UserError(f"{flag} {path}: cannot write there ({parent} is not a writable folder)")


def take_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (made if missing) for this process: (the open file, which
    holds the lock until closed and names this pid, None) or, held elsewhere, (None, the holder's
    pid as that file says, or ""). Without ``fcntl`` (Windows) nothing is locked: (None, None)."""
    try:
        import fcntl
    except ImportError:
        return None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError:                  # nowhere to keep a lock (a read-only cache): nothing locked
        return None, None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        return None, holder
    try:
        current = os.stat(path).st_ino
    except OSError:
        current = None
    if current != os.fstat(handle.fileno()).st_ino:    # its holder let go and removed it meanwhile (release_lock)
        handle.close()
        return take_lock(path)
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle, None


def recorded_path(path: str | Path) -> str:
    """A local path as an infotext records it (``--from-image`` finds the model there): absolute, with
    the home folder as ``~``, so that a PNG someone shares does not carry their user name."""
    path, home = Path(path).expanduser().resolve(), Path.home().resolve()
    return f"~/{path.relative_to(home).as_posix()}" if home in path.parents else str(path)


def recorded_spec(spec):
    """A model, photo folder, ... as a record keeps it: a local path as ``recorded_path`` (the same
    folder however it was typed, from whichever folder), a hub id and ``toy`` as given."""
    if isinstance(spec, (str, Path)) and str(spec) and str(spec) != "toy" and Path(spec).expanduser().exists():
        return recorded_path(spec)
    return spec


def within(inner: Path, outer: Path) -> bool:
    """Whether ``inner`` is ``outer`` or lies inside it (links and ``..`` resolved)."""
    inner, outer = Path(inner).expanduser().resolve(), Path(outer).expanduser().resolve()
    return inner == outer or outer in inner.parents


def check_not_replacing(folder: Path, names: tuple[str, ...], overwrite: bool, flag: str = "--output") -> None:
    """A one-line error where ``folder`` holds any of ``names`` (an earlier run's results) and the
    user has not asked to replace them (``--overwrite``)."""
    folder = Path(folder).expanduser()
    held = [name for name in names if (folder / name).exists()]
    if held and not overwrite:
        raise UserError(f"{flag} {folder}: holds {', '.join(held)} from an earlier run; pass --overwrite to replace "
                        f"{'it' if len(held) == 1 else 'them'}, or choose another {flag}")


# ----- generated images ------------------------------------------------------------------------

def next_number(folder: Path, prefix: str = "") -> int:
    """1 + the highest ``<prefix>NNNNN-`` number of the files in ``folder`` (1 when there are none)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-") if prefix else _NUMBERED
    folder = Path(folder)
    if not folder.is_dir():
        return 1
    return max((int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))), default=0) + 1


def claim_numbered(folder: Path, seed: int, prefix: str = "") -> Path:
    """A new ``<prefix>NNNNN-<seed>.png`` path in ``folder``, created empty so no other writer takes it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    number = next_number(folder, prefix)
    while True:
        path = folder / f"{prefix}{number:05d}-{seed}.png"
        try:
            with open(path, "xb"):
                return path
        except FileExistsError:
            number += 1


# ----- a training output -----------------------------------------------------------------------

def named_weights_file(output: Path, default: str = "model") -> Path:
    """``OUTPUT/<OUTPUT's name>.safetensors``: the kohya LoRA or the single-file checkpoint, the
    file A1111 and ComfyUI load (and name the model or LoRA after)."""
    output = Path(output)
    return output / f"{output.name or default}.safetensors"


def class_image_name(index: int) -> str:
    return f"class-{index:05d}.png"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def checkpoint_step(path: Path) -> int | None:
    m = _CHECKPOINT.match(Path(path).name)
    return int(m.group(1)) if m else None


def validation_grid_name(step: int) -> str:
    return f"step-{step:06d}.png"


def validation_images_dir(output: Path, step: int) -> Path:
    return Path(output) / VALIDATION_DIR / f"step-{step:06d}"


# validation's record, in OUTPUT/validation: the metrics per step, their curve, the kept best weights
VALIDATION_METRICS = "metrics.csv"
VALIDATION_CURVE = "curve.png"
VALIDATION_BEST = "best"              # a folder in the output's format
VALIDATION_BEST_INFO = "best.json"

# a DreamBench run's folder: images/NN-slug/, grids/NN-slug.png, class_images/, the reports
BENCH_REPORT_JSON = "report.json"
BENCH_REPORT_MD = "report.md"
BENCH_RESULTS = (BENCH_REPORT_JSON, BENCH_REPORT_MD, "grids", "images", "class_images")     # all a run writes


# ----- permissions -----------------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def as_user_file(path: Path) -> None:
    """Give ``path`` (a file, or every file under a folder) the mode a plain write would: safetensors
    creates its files 0600, which other users and tools (a shared model folder, a web server)
    cannot read."""
    path = Path(path)
    mode = 0o666 & ~_umask()
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    for file in files:
        if file.suffix in (".safetensors", ".tmp") and (file.stat().st_mode & 0o777) != mode:
            os.chmod(file, mode)


# ----- our own cache (hashes, known training outputs) ------------------------------------------

def user_cache_dir() -> Path:
    """``$DREAMBOOTH_CACHE``, else ``$XDG_CACHE_HOME/dreambooth`` (``~/.cache/dreambooth``)."""
    root = os.environ.get("DREAMBOOTH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dreambooth")
    return Path(root)


def release_lock(handle, path: Path) -> None:
    """Let go of a lock ``take_lock`` took, removing its file (the cache keeps none per output ever written);
    removed while still held, so that a waiting process sees the file went and takes a new one."""
    with contextlib.suppress(OSError):
        path.unlink()
    handle.close()


def output_lock(output: Path) -> Path:
    """The lock file of a training output, in the cache folder (not among the user's files): one per
    resolved path."""
    key = hashlib.sha256(str(Path(output).expanduser().resolve()).encode()).hexdigest()[:24]
    return user_cache_dir() / "writing" / f"{key}.lock"


def read_cache(name: str) -> dict:
    """A JSON object kept in the cache folder ({} when missing or unreadable)."""
    try:
        data = json.loads((user_cache_dir() / name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_cache(name: str, change) -> None:
    """``change(data)`` on a cache file's object, read and written under an exclusive lock, so that two
    processes changing it at once (a server and a ``dreambooth train`` both finishing) both land."""
    lock = user_cache_dir() / f"{name}.lock"
    try:
        import fcntl
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+")
    except (ImportError, OSError):       # Windows, or a read-only cache: unlocked, as before
        fcntl = handle = None
    try:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        data = read_cache(name)
        change(data)
        write_cache(name, data)
    finally:
        if handle is not None:
            handle.close()


def write_cache(name: str, data: dict) -> None:
    """Replace a cache file atomically; a cache that cannot be written is only a cache."""
    path = user_cache_dir() / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass
