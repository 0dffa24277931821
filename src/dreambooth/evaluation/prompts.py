"""Which prompt each generated image had, for CLIP-T: from its infotext, or a prompts file; the
identifier, ``<lora:...>`` tags and the WebUI's prompt syntax taken out."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..generation.grammar import parse_prompt_attention, prompt_schedule, without_extra_networks
from ..generation.infotext import parse_generation_parameters, read_infotext
from ..generation.params import GenerationParams
from ..text_files import decode_text

DEFAULT_IDENTIFIER = "sks"
DEFAULT_STEPS = GenerationParams.steps     # a prompt's step count where nothing records it: the WebUI's default


def read_png_prompt(path: str | Path) -> str | None:
    """The prompt an image's infotext records (its extra-network tags removed), or None."""
    return read_png_prompt_steps(path)[0]


def read_png_prompt_steps(path: str | Path) -> tuple[str | None, int | None]:
    """(prompt without extra-network tags, sampling steps) an image's infotext records; None where not."""
    try:
        text = read_infotext(path, "--generated")
    except UserError:
        return None, None
    if not text or not text.strip():
        return None, None
    info = parse_generation_parameters(text, defaults=False)
    steps = info.get("Steps")
    try:
        steps = int(steps) if steps is not None else None
    except (TypeError, ValueError):
        steps = None
    return re.sub(r"\s+", " ", without_extra_networks(info["Prompt"])).strip(), steps


def _read_text(path: Path) -> str:
    try:
        return decode_text(path.read_bytes())
    except OSError as exc:
        raise UserError(f"--prompts {path}: cannot read ({exc.strerror or type(exc).__name__})") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"--prompts {path}: not UTF-8 or UTF-16 text; save it as UTF-8") from exc


def read_prompts_file(path: str | Path, files: Sequence[Path]) -> list[str]:
    """Prompts for ``files`` from a JSON object (file name -> prompt), a JSON list or a text file
    with one prompt per image, in the files' sorted order. A ``.json`` file is JSON, a ``.txt`` file
    text; any other is JSON where it parses as a list or an object, else text."""
    path = Path(path).expanduser()
    text = _read_text(path)
    parsed = None
    if path.suffix.lower() == ".json":
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--prompts {path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(parsed, (list, dict)):
            raise UserError(f"--prompts {path}: JSON {type(parsed).__name__}; give a list of prompts or an object "
                            "file name -> prompt")
    elif path.suffix.lower() != ".txt" and text.lstrip().startswith(("{", "[")):
        try:        # '[sks:0.5] dog' or '{a|b} dog' starts a line of prompt text as well as JSON
            parsed = json.loads(text)
        except json.JSONDecodeError:
            pass
    if isinstance(parsed, (list, dict)):
        if isinstance(parsed, list):
            if len(parsed) != len(files):
                raise UserError(f"--prompts {path}: a list of {len(parsed)} prompts for {len(files)} generated images; "
                                "give one per image in sorted file-name order, or a JSON object file name -> prompt")
            named = list(zip((f.name for f in files), parsed))
        else:
            named = [(f.name, parsed.get(f.name, parsed.get(f.stem))) for f in files]
        prompts = []
        for name, value in named:
            if value is None:
                raise UserError(f"--prompts {path}: no prompt for {name} (keys are file names)")
            if not isinstance(value, str):
                raise UserError(f"--prompts {path}: {name}: {json.dumps(value)} is not a prompt (give text)")
            prompts.append(value)
        return prompts
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != len(files):
        raise UserError(f"--prompts {path}: {len(lines)} prompts for {len(files)} generated images; "
                        "give one line per image in sorted file-name order, or a JSON object file name -> prompt")
    return lines


def plain_text(prompt: str, steps: int | None = None) -> str:
    """What a WebUI prompt says, as CLIP should read it for CLIP-T: without extra-network tags
    (``<lora:...>``, ``<hypernet:...>``), the text of the last step of a run of ``steps`` (the image's
    own; None: 20, the WebUI's default): ``[from:to:when]`` gives ``to`` where the edit happens within
    the run, ``[snow:20]`` at 20 steps adds nothing; emphasis and weights dropped (``(dog:1.3)`` is
    ``dog``), ``BREAK`` a space."""
    prompt = without_extra_networks(prompt)
    final = prompt_schedule(prompt, max(1, steps or DEFAULT_STEPS))[-1][1]
    pieces = [" " if weight == -1 and text == "BREAK" else text for text, weight in parse_prompt_attention(final)]
    return re.sub(r"\s+", " ", "".join(pieces)).strip()


def identifier_pattern(identifier: str) -> re.Pattern:
    """The identifier as a whole word, in any case (CLIP's tokenizer lower-cases prompts), with a
    hyphen that joins it to a word ('sks-dog' is 'dog' without it, not '-dog')."""
    return re.compile(rf"(?:(?<=\w)-)?(?<![\w]){re.escape(identifier)}(?![\w])(?:-(?=\w))?", re.IGNORECASE)


def strip_identifier(prompt: str, identifier: str | None) -> str:
    """``prompt`` without whole-word occurrences of ``identifier`` (any case), spaces tidied."""
    if not identifier:
        return prompt
    out = identifier_pattern(identifier).sub(" ", prompt)
    out = re.sub(r"[(\[{]\s*[)\]}]", " ", out)      # brackets it stood alone in: "a (sks) dog"
    out = re.sub(r"\s+", " ", out).strip()
    return re.sub(r"\s+([,.;:!?])", r"\1", out)


def clip_t_text(prompt: str, identifier: str | None, steps: int | None = None) -> str:
    """What CLIP-T reads of a prompt: its :func:`plain_text` without the identifier. An identifier
    written in the prompt syntax (the paper's ``[V]``, which the grammar reads as a de-emphasised
    ``V``) is taken out of the prompt as written, before the grammar reads it."""
    if identifier and plain_text(identifier) != identifier:
        prompt = identifier_pattern(identifier).sub(" ", prompt)
    return strip_identifier(plain_text(prompt, steps), identifier)
