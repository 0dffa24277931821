"""Image files: the one opener (EXIF orientation, any mode to RGB, errors that name the file) and
the one lister of image folders. Training photos, init images, masks, real photos for the metrics
and PNG Info all come through here.

An image over ``MAX_PIXELS`` (PIL's own limit, 89,478,485 pixels, about 9,459 x 9,459; set
``DREAMBOOTH_MAX_IMAGE_PIXELS`` to change it) is refused by name: it would be a decompression bomb,
or at best hours of resizing for a training size of 1,024. A link in a folder that leads nowhere,
or in a circle, is named in a warning.
"""
from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from . import progress
from .errors import UserError, file_operation


def _pillow_reads_avif() -> bool:
    """Whether this Pillow was built with AVIF (11.3 on, with libavif): its photos are then read."""
    try:
        from PIL import features
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # an older Pillow warns of a feature it does not know
            return bool(features.check("avif"))
    except Exception:
        return False


_AVIF = (".avif",) if _pillow_reads_avif() else ()
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff") + _AVIF
UNREAD_SUFFIXES = tuple(s for s in (".gif", ".heic", ".heif", ".avif", ".jxl", ".psd", ".raw", ".dng", ".cr2", ".nef")
                        if s not in _AVIF)      # said, not read
MAX_PIXELS = int(os.environ.get("DREAMBOOTH_MAX_IMAGE_PIXELS") or Image.MAX_IMAGE_PIXELS)
Image.MAX_IMAGE_PIXELS = MAX_PIXELS        # PIL warns above it (refused here) and fails above twice it


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited on white, 16-bit is scaled down."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__


def open_image(path: str | Path, flag: str = "", mode: str = "RGB", keep_alpha: bool = False) -> Image.Image:
    """Open an image file: EXIF orientation applied, converted to ``mode`` ("RGB" through
    :func:`to_rgb`, or e.g. "L" for masks). ``keep_alpha`` returns RGBA when the file has
    transparency. Any failure is a one-line UserError naming ``flag`` (if given) and the file."""
    im = read_image(path, flag)
    if keep_alpha and (im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info):
        return im.convert("RGBA")
    return to_rgb(im) if mode == "RGB" else im.convert(mode)


def read_image(path: str | Path, flag: str = "") -> Image.Image:
    """An image file as it is (its own mode), EXIF orientation applied; failures as in :func:`open_image`."""
    where = f"{flag} {path}" if flag else str(path)
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{where}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"{where}: over {MAX_PIXELS:,} pixels, too large to open safely; downscale it "
                        "(or raise DREAMBOOTH_MAX_IMAGE_PIXELS)") from None
    except Exception as exc:     # PIL raises many kinds for damaged or foreign files
        raise UserError(f"{where}: not a readable image ({_why(exc)})") from None
    return im


def transparent_all_over(image: Image.Image) -> bool:
    """Whether every pixel of ``image`` (as read, before :func:`to_rgb`) is fully transparent: it
    would become one plain colour, the white it is composited on."""
    if image.mode not in ("RGBA", "LA", "PA", "RGBa") and not (image.mode == "P" and "transparency" in image.info):
        return False
    return image.convert("RGBA").getchannel("A").getextrema()[1] == 0


MAX_ASPECT = 4        # a longer photo trains its middle 4:1 (a 20000x1 strip would be 1,280,000 px long at 64)


def middle(image: Image.Image, max_aspect: int = MAX_ASPECT) -> Image.Image:
    """``image``, or its middle ``max_aspect``:1 where it is longer."""
    w, h = image.size
    if max(w, h) <= max_aspect * min(w, h):
        return image
    long = max_aspect * min(w, h)
    left, top = ((w - long) // 2, 0) if w > h else (0, (h - long) // 2)
    return image.crop((left, top, left + min(w, long), top + min(h, long)))


def as_image(value, flag: str = "", mode: str = "RGB") -> Image.Image | None:
    """A PIL image given as an image, an array (height, width[, channels] of uint8) or a path (None stays None)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = Image.fromarray(value)
    if isinstance(value, Image.Image):
        return to_rgb(value) if mode == "RGB" else value.convert(mode)
    return open_image(value, flag, mode)


def list_images(folder: str | Path, flag: str, allow_empty: bool = False, quiet: bool = False,
                warn: Callable[[str], None] | None = None) -> list[Path]:
    """Image files directly in ``folder`` (by suffix, hidden files left out), in sorted name order;
    a one-line error when there are none, unless ``allow_empty``. Warnings go to ``warn`` (a run's own,
    so its summary repeats them), else ``progress.warn``."""
    everything = list_files(folder, flag, quiet, warn)
    files = [p for p in everything if is_image_file(p)]
    unread = [p.name for p in everything if p.suffix.lower() in UNREAD_SUFFIXES]
    if unread and not quiet:
        (warn or progress.warn)(unread_formats(f"{flag} {folder}", unread))
    if not files and not allow_empty:
        raise UserError(f"{flag} {folder}: no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})")
    return files


def unread_formats(where: str, names: list[str]) -> str:
    """The one line for pictures in formats not read here (HEIC from a phone, GIF...): what to do."""
    return (f"{where}: skipping {len(names)} picture(s) in formats not read here ({', '.join(names[:3])}"
            f"{' ...' if len(names) > 3 else ''}); convert them to PNG or JPEG")


def list_files(folder: str | Path, flag: str, quiet: bool = False,
               warn: Callable[[str], None] | None = None) -> list[Path]:
    """Every visible file directly in ``folder``, sorted; a one-line error when it is no folder.
    What is passed over (links to nothing, sub-folders) is said through ``warn`` (else
    ``progress.warn``), unless ``quiet`` (a check before the folder is read)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: {'a file, not a folder' if folder.exists() else 'no such folder'}")
    with file_operation("read the folder", flag):
        entries = sorted(folder.iterdir())
    said = []
    for p in entries:
        if p.is_symlink() and not p.exists():
            try:
                os.stat(p)
                why = "a link to nothing"
            except OSError as exc:
                why = "a link in a circle" if exc.errno == errno.ELOOP else "a link to nothing"
            said.append(f"skipping {p}: {why}")
    folders = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")]
    if folders:
        said.append(f"{flag} {folder}: skipping {len(folders)} sub-folder(s) ({', '.join(folders[:3])}"
                    f"{' ...' if len(folders) > 3 else ''}); only the files directly in it are read")
    for message in said if not quiet else ():
        (warn or progress.warn)(message)
    return [p for p in entries if p.is_file() and not p.name.startswith(".")]


MASK_SUFFIX = ".mask.png"      # NAME.mask.png beside NAME.jpg: a training photo's mask, not a photo


def is_mask_file(path: Path) -> bool:
    return path.name.lower().endswith(MASK_SUFFIX)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def write_png(image: Image.Image, path: str | Path, infotext: str | None = None) -> Path:
    """Save ``image`` as PNG with ``infotext`` in its ``parameters`` text chunk (as A1111 writes it)."""
    from PIL.PngImagePlugin import PngInfo
    path = Path(path)
    info = PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    image.save(path, format="PNG", pnginfo=info)
    return path
