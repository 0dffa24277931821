"""``dreambooth train``: every TrainConfig field is a flag, generated from the dataclass, so the CLI,
YAML presets and the Python API can never disagree about names, types or defaults."""
from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path

import click

from ..checks import describe_range
from ..errors import UserError
from ..outputs import LORA_WEIGHTS_FILE
from ..toy.backdrops import toy_transforms, uses_toy_preset
from ..training.config import TrainConfig, build_config, field_type, flag
from ..training.results import summary
from ..training.trainer import train


def field_default(f: dataclasses.Field):
    """What a field holds when nothing sets it (lists come from a factory)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _option(f):
    typ, is_list = field_type(f)
    meta = f.metadata
    default = field_default(f)
    if isinstance(default, list):
        default = " ".join(str(v) for v in default) or None
    shown = f" [default: {default}]" if default not in (None, "") and typ is not bool else ""
    if meta.get("seed"):
        shown += " [range: -1 or 0 to 4294967295]"
    elif any(k in meta for k in ("low", "high", "above")):
        shown += f" [range: {describe_range(meta.get('low'), meta.get('high'), meta.get('above'))[len('must be '):]}]"
    if is_list:
        shown += f" [several: repeat the flag, {flag(f.name)} A {flag(f.name)} B]"
    help_text = meta.get("help", "") + shown
    name = flag(f.name)
    if typ is bool:
        return click.option(f"{name}/--no-{name[2:]}", f.name, default=None, help=help_text)
    ptype = click.Choice(meta["choices"]) if "choices" in meta else {int: int, float: float}.get(typ, str)
    if f.name == "resolution":
        ptype = Side()
    return click.option(name, f.name, type=ptype, default=None, multiple=is_list, help=help_text)


class Side(click.ParamType):
    """--resolution: one whole number, the side of the square pictures training sees (kohya and the
    WebUI take 512,512 or 512x768; here there are no aspect-ratio buckets, docs/training.md)."""
    name = "integer"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return int(value)
        except ValueError:
            sides = [s.strip() for s in str(value).replace("x", ",").split(",")]
            if len(sides) == 2 and all(s.isdigit() for s in sides):
                square = sides[0] == sides[1]
                self.fail(f"{value}: one number, the side of the square pictures training sees; give --resolution "
                          f"{min(sides, key=int)}" + ("" if square else " (photos of other shapes train on square crops)"),
                          param, ctx)
            self.fail(f"{value!r} is not a whole number", param, ctx)


def _with_config_options(fn):
    for f in reversed(TrainConfig.fields()):
        fn = _option(f)(fn)
    return fn


@click.command("train", context_settings={"max_content_width": 110})
@click.option("--config", "preset", default=None,
              help="YAML preset (a path, or a shipped name: sd15-full, sd15-lora, sd21-lora, sdxl-lora, toy); flags override it.")
@_with_config_options
def train_command(preset, **values):
    """Teach a model a subject from a few photos (DreamBooth, full or LoRA).

    A run on the toy model (--model toy, model: toy in a preset) or with --config toy has the toy
    preset beneath its settings, which also recolours the photos' plain backdrops (dreambooth.toy.backdrops)."""
    overrides = {k: (list(v) if v else None) if isinstance(v, tuple) else v for k, v in values.items()}
    try:
        config = build_config(preset, overrides).validate()
    except UserError as exc:       # alike on every process accelerate launch started: one per machine says it
        exc.said_by_first = os.environ.get("LOCAL_RANK", "0") not in ("", "0")
        raise
    transforms = toy_transforms() if uses_toy_preset(preset, config.model) else []
    result = train(config, transforms=transforms)
    if result.main_process:          # several processes (accelerate launch): one summary
        click.echo(summary(result))
        for line in usage_lines(result.output, config.instance_prompt, result.files):
            click.echo(line)


def usage_lines(output: Path, prompt: str, files: list[Path]) -> list[str]:
    """What to paste next: our generate, and where A1111 and ComfyUI take the single file, if one was written."""
    lines = [f"use it: dreambooth generate --model {shlex.quote(str(output))} --prompt {shlex.quote(prompt + ', ...')}"]
    single = [f for f in files if f.suffix == ".safetensors" and f.name != LORA_WEIGHTS_FILE and f.parent == output]
    if single and (output / LORA_WEIGHTS_FILE).exists():
        lines.append(f"  A1111/ComfyUI: copy {single[0]} into models/Lora (models/loras), then <lora:{single[0].stem}:1> "
                     "in the prompt")
    elif single:
        lines.append(f"  A1111/ComfyUI: copy {single[0]} into models/Stable-diffusion (models/checkpoints)")
    return lines


def register(group: click.Group) -> None:
    group.add_command(train_command)
