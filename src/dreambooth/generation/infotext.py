"""The WebUI's "infotext": the generation settings written into every PNG, and read back.

The text has up to three parts, as the AUTOMATIC1111 WebUI writes it::

    a photo of sks dog, (oil painting:1.2)
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model: sd15

The last line is ``key: value`` pairs separated by commas; a value containing a comma, colon or
newline is written as a JSON string. PNGs carry it in a ``parameters`` text chunk; JPEG and WebP
files from the WebUI carry it in the EXIF UserComment, which ``read_infotext`` also reads.
"""
from __future__ import annotations

import json
import re

from ..errors import UserError

# A key starts with a word character and may hold spaces, dashes and slashes; a value is a quoted
# JSON string (escapes allowed) or anything up to the next comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")

# What the WebUI assumes for keys an infotext leaves out (kept to the ones about generation).
A1111_DEFAULTS = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
}


# A1111 settings that change an image and that this project does not make: a replay says so.
NOT_MADE_HERE = ("Hires sampler", "Hires schedule type", "Hires CFG Scale", "Hires prompt", "Hires negative prompt",
                 "Hires checkpoint", "Variation seed",
                 "Seed resize from-1", "Face restoration", "Tiling", "Noise multiplier", "ENSD", "Refiner", "Eta",
                 "Sigma churn", "Sigma noise", "Sigma tmin", "Sigma tmax", "Schedule rho", "Schedule max sigma",
                 "Schedule min sigma", "Token merging ratio", "Token merging ratio hr", "NGMS", "Hypernet",
                 "TI hashes")           # textual inversions: their names here are read as plain words
# A1111 settings (its options with infotext=...) that change the image when not at their default,
# which is what A1111 writes or assumes when they are left out: only another value is said.
NOT_MADE_HERE_UNLESS = {"Emphasis": "Original", "Skip Early CFG": "0", "Discard penultimate sigma": "False",
                        "Downcast alphas_cumprod": "False", "SGM noise multiplier": "False", "Noise Schedule": "Default",
                        "Old prompt editing timelines": "False", "Pad conds": "False", "Pad conds v0": "False",
                        "Conditional mask weight": "1", "Extra noise": "0", "VAE Encoder": "Full", "VAE Decoder": "Full",
                        "FP8 weight": "Disable", "Beta schedule alpha": "0.6", "Beta schedule beta": "0.6",
                        "UniPC variant": "bh1", "UniPC skip type": "time_uniform", "UniPC order": "3",
                        "UniPC lower order final": "True", "NGMS all steps": "False"}


def _same(value, default: str) -> bool:
    try:
        return float(value) == float(default)
    except (TypeError, ValueError):
        return str(value).strip().lower() == default.lower()


def _a1111_version(info: dict) -> tuple | None:
    """(major, minor, patch, commits after) of A1111's ``Version: v1.7.0-225-g...``, None for none."""
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)(?:-RC)?(?:-(\d+))?", str(info.get("Version", "")))
    return tuple(int(g or 0) for g in m.groups()) if m else None


def not_made_here(info: dict) -> list[str]:
    """The settings of an infotext (parsed without the WebUI's defaults) that change the image and that
    a replay here cannot make: A1111's variation seeds, a hires fix's own sampler or prompt, ... and
    its GPU noise (A1111's default; ours is drawn on the CPU and recorded "RNG: CPU"), with which the
    same seed gives other noise."""
    keys = [key.removesuffix("-1") for key in NOT_MADE_HERE if key in info]
    keys += [f"{key} {info[key]}" for key, default in NOT_MADE_HERE_UNLESS.items()
             if key in info and not _same(info[key], default)]
    version = _a1111_version(info)        # A1111 sets these itself for older images (its backcompat)
    if version and version < (1, 6, 0, 0) and "[" in info.get("Prompt", "") and "Old prompt editing timelines" not in info:
        keys.append("Old prompt editing timelines (its Version)")
    if version and version < (1, 7, 0, 225) and "Downcast alphas_cumprod" not in info:
        keys.append("Downcast alphas_cumprod (its Version)")
    ours = "Precision" in info or "Model path" in info
    if "VAE" in info and not ours:            # A1111's VAE by name: ours is the model's own unless --vae
        keys.append(f"VAE {info['VAE']} (give --vae for it)")
    if info.get("RNG", "CPU" if ours else "GPU") != "CPU":
        keys.append(f"RNG {info.get('RNG', 'GPU')}")
    return keys


def quote(value) -> str:
    """A value as the WebUI writes it: bare, or a JSON string when it holds ``,`` ``:`` or a newline."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def format_infotext(prompt: str, negative_prompt: str, params: dict) -> str:
    """The infotext for one image: prompt, ``Negative prompt:`` line (only when there is one), and
    the settings line. ``None`` values are left out; a value equal to its key is written alone (the
    WebUI's convention for flags)."""
    pairs = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        pairs.append(key if key == value else f"{key}: {quote(value)}")
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(pairs)}".strip()


def parse_generation_parameters(text: str, defaults: bool = True) -> dict:
    """Read an infotext into a dict with the WebUI's keys, by the WebUI's rules.

    ``Prompt`` and ``Negative prompt`` hold the text before the settings line (multi-line prompts
    keep their newlines); every ``key: value`` of the last line is a string entry, except
    ``WxH`` values, which become ``key-1`` and ``key-2`` (``Size: 512x768`` gives ``Size-1`` = "512",
    ``Size-2`` = "768"). The last line counts as settings only when it holds at least three pairs.
    With ``defaults`` the keys the WebUI fills in for missing settings are added too (``Clip skip``
    "1", ``Schedule type`` "Automatic", ...).
    """
    res: dict = {}
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""

    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    res["Prompt"] = "\n".join(prompt)
    res["Negative prompt"] = "\n".join(negative)

    for key, value in _PARAM.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            value = unquote(value)
        size = _SIZE.match(value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value

    if defaults:
        for key, value in A1111_DEFAULTS.items():
            res.setdefault(key, value)
    return res


def read_infotext(path, flag: str = "--from-image") -> str | None:
    """The infotext of an image file: the PNG ``parameters`` chunk, or the EXIF UserComment the
    WebUI writes into JPEG and WebP files; None when there is none. A file that is not an image is
    a one-line UserError naming ``flag``."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            return image_infotext(image)
    except FileNotFoundError:
        raise UserError(f"{flag} {path}: no such file") from None
    except Exception as exc:      # not an image, or a damaged one
        raise UserError(f"{flag} {path}: not a readable image ({type(exc).__name__})") from None


def image_infotext(image) -> str | None:
    """The infotext of an open PIL image: its PNG ``parameters`` text, or its EXIF UserComment."""
    text = image.info.get("parameters")
    if isinstance(text, str) and text:
        return text
    try:
        comment = image.getexif().get_ifd(0x8769).get(0x9286)
    except Exception:
        comment = None
    return _decode_user_comment(comment)


def _decode_user_comment(raw) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw or None
    head, body = bytes(raw[:8]), bytes(raw[8:])
    if head.startswith(b"UNICODE"):
        # The WebUI (piexif) writes UTF-16 big-endian; some tools write little-endian.
        for codec in ("utf-16-be", "utf-16-le"):
            try:
                text = body.decode(codec)
            except UnicodeDecodeError:
                continue
            if text.isprintable() or "\n" in text:
                return text.rstrip("\x00") or None
        return None
    if head.startswith(b"ASCII"):
        return body.decode("ascii", "replace").rstrip("\x00") or None
    return bytes(raw).decode("utf-8", "replace").rstrip("\x00") or None
