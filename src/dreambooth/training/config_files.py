"""Settings files for ``--config``: a YAML preset, or a run's training_args.json (JSON is YAML), read
with each key once; a near name for an unknown key; and the settings an older dreambooth had.

A removed setting in a preset the user wrote is refused with what to do: it was the user's choice,
and this version cannot honour it. In a run's record (training_args.json, written by dreambooth, so
the user never chose its keys) it is left out, with one warning where it did something."""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from .. import progress
from ..errors import UserError

# Removed settings and the value at which each did nothing: on 2026-12-04 the toy world's recoloured
# backdrops became the toy preset's own data transform (dreambooth.toy.backdrops).
REMOVED = {"backdrop_augment": 0.0, "backdrop_caption": False, "backdrop_loss_weight": 1.0}
REMOVED_WHY = ("a setting of an older dreambooth, removed on 2026-12-04 (the toy model's recoloured backdrops "
               "now come with its preset, --config toy)")


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice (YAML itself keeps the last, silently)."""


def _mapping_of_unique_keys(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"'{key}' is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_of_unique_keys)


# kohya's configs are TOML: 'key = value' lines and [sections], which YAML reads as one string or fails on
TOML_LINE = re.compile(r"^\s*(\[\[?[\w.\" -]+\]\]?|[\w.\"-]+\s*=\s*\S.*)$")
NOT_TOML = ("TOML (kohya's sd-scripts' configs) is not read: write the settings as YAML, one 'setting: value' per "
            "line with dreambooth train's names (network_dim is rank, train_data_dir the photo folder instance_dir), "
            "or give them as flags")


def read_settings(path: Path) -> dict:
    """A settings file's mapping (empty for an empty file); a one-line error naming the file otherwise."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--config {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    toml = path.suffix.lower() == ".toml" or (lines and all(TOML_LINE.match(line) for line in lines))
    if toml:
        raise UserError(f"--config {path}: {NOT_TOML}")
    try:
        data = yaml.load(text, Loader=_UniqueKeys) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"--config {path}: cannot read YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of setting: value")
    return data


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean max_steps?)' for 'max_step', or '' when no setting is near."""
    near = difflib.get_close_matches(name, list(known), 1)
    return f" (did you mean {near[0]}?)" if near else ""


def without_removed(path: Path, data: dict, record: bool) -> dict:
    """``data`` without the settings an older dreambooth had: refused in a preset the user wrote, left
    out of a run's ``record`` with one warning where one of them did something (silent where all were off)."""
    out, acted = {}, {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in REMOVED:
            out[key] = value
        elif not record:
            raise UserError(f"--config {path}: '{key}' is {REMOVED_WHY}: drop it")
        elif value is not None and value != REMOVED[name]:
            acted[name] = value
    if acted:
        progress.warn(f"--config {path}: leaving out {', '.join(f'{k} {v}' for k, v in acted.items())}, "
                      f"{'settings' if len(acted) > 1 else 'a setting'} of an older dreambooth removed on 2026-12-04: "
                      "the toy model's recoloured backdrops now come with its preset (a run on the toy model has "
                      "them, at its own rate), and other models go without")
    return out
