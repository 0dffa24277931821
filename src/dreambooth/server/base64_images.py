"""Images in JSON bodies: base64 in, base64 PNG out, as A1111's clients send and read them."""
from __future__ import annotations

import base64
import binascii
import io

from PIL import Image

from ..errors import UserError
from ..images import MAX_PIXELS, to_rgb


def decode_base64(data: str, field: str) -> bytes:
    """The bytes of a base64 field: a ``data:...;base64,`` prefix and line breaks (``base64 FILE`` and
    ``base64.encodebytes`` wrap at 76 columns) are allowed, as A1111 allows them."""
    if not isinstance(data, str) or not data:
        raise UserError(f"{field}: expected a base64-encoded image")
    if data.startswith(("http://", "https://", "file:", "ftp://")):
        raise UserError(f"{field}: URLs are not fetched; send the image itself, base64-encoded")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{field}: not valid base64") from None


def open_image(raw: bytes, field: str) -> Image.Image:
    """The image in ``raw``, opened (not yet loaded) and within the pixel limit; a one-line error otherwise."""
    try:
        image = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:          # PIL refuses at open what is over twice its limit
        raise UserError(f"{field}: over {MAX_PIXELS:,} pixels") from None
    except Exception as exc:
        raise UserError(f"{field}: not a readable image ({type(exc).__name__})") from None
    if image.width * image.height > MAX_PIXELS:
        image.close()
        raise UserError(f"{field}: {image.width}x{image.height} is over {MAX_PIXELS:,} pixels")
    return image


def decode_image(data: str, field: str, mode: str = "RGB") -> Image.Image:
    """A base64 image (see ``decode_base64``), loaded in ``mode``; URLs are not fetched."""
    with open_image(decode_base64(data, field), field) as im:
        try:
            im.load()
            return to_rgb(im) if mode == "RGB" else im.convert(mode)
        except Exception as exc:
            raise UserError(f"{field}: not a readable image ({type(exc).__name__})") from None


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    from PIL.PngImagePlugin import PngInfo
    buffer = io.BytesIO()
    meta = PngInfo()
    if infotext:
        meta.add_text("parameters", infotext)
    image.save(buffer, format="PNG", pnginfo=meta)
    return base64.b64encode(buffer.getvalue()).decode()
