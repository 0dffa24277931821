"""Which prompt each generated image had, for CLIP-T: from its PNG infotext, or a prompts file; the
identifier and ``<lora:...>`` tags taken out."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..generation.grammar import extract_loras
from ..generation.infotext import parse_generation_parameters, read_infotext

DEFAULT_IDENTIFIER = "sks"


def read_png_prompt(path: str | Path) -> str | None:
    """The prompt an image's infotext records (its LoRA tags removed), or None."""
    try:
        text = read_infotext(path, "--generated")
    except UserError:
        return None
    if not text or not text.strip():
        return None
    prompt = parse_generation_parameters(text, defaults=False)["Prompt"]
    try:
        prompt = extract_loras(prompt)[0]
    except UserError:
        pass                           # another extra network: keep the text as it is
    return re.sub(r"\s+", " ", prompt).strip()


def read_prompts_file(path: str | Path, files: Sequence[Path]) -> list[str]:
    """Prompts for ``files`` from a JSON object (file name -> prompt) or a text file with one prompt
    per image, in the files' sorted order."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--prompts {path}: cannot read ({exc.strerror or type(exc).__name__})") from exc
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--prompts {path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
        prompts = []
        for f in files:
            value = mapping.get(f.name, mapping.get(f.stem))
            if value is None:
                raise UserError(f"--prompts {path}: no prompt for {f.name} (keys are file names)")
            if not isinstance(value, str):
                raise UserError(f"--prompts {path}: {f.name}: {json.dumps(value)} is not a prompt (give text)")
            prompts.append(value)
        return prompts
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != len(files):
        raise UserError(f"--prompts {path}: {len(lines)} prompts for {len(files)} generated images; "
                        "give one line per image in sorted file-name order, or a JSON object file name -> prompt")
    return lines


def strip_identifier(prompt: str, identifier: str | None) -> str:
    """``prompt`` without whole-word occurrences of ``identifier``, spaces tidied."""
    if not identifier:
        return prompt
    out = re.sub(rf"(?<![\w]){re.escape(identifier)}(?![\w])", " ", prompt)
    out = re.sub(r"\s+", " ", out).strip()
    return re.sub(r"\s+([,.;:!?])", r"\1", out)


# ----- models ------------------------------------------------------------------------------------
