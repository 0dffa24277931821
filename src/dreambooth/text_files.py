"""Text files users write by hand (captions, prompt lists): UTF-8 with or without the byte-order
mark Windows' Notepad puts first, or UTF-16 with its mark (Notepad's "Unicode", PowerShell's ``>``)."""
from __future__ import annotations

UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")


def decode_text(raw: bytes, errors: str = "strict") -> str:
    """The text of a file's bytes; raises UnicodeDecodeError for other bytes (unless ``errors``)."""
    if raw[:2] in UTF16_MARKS:
        return raw.decode("utf-16", errors=errors)
    return raw.decode("utf-8-sig", errors=errors)
