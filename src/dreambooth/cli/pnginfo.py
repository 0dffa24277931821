"""``dreambooth pnginfo``: an image's infotext (the WebUI's PNG Info tab, on the command line)."""
from __future__ import annotations

import json

import click

from ..errors import UserError
from ..generation.infotext import parse_generation_parameters, read_infotext


@click.command("pnginfo")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the parsed settings as JSON (one object per image).")
def pnginfo_command(images: tuple[str, ...], as_json: bool) -> None:
    """Print the generation settings (A1111 infotext) an image carries, as the WebUI's PNG Info tab
    shows them; `dreambooth generate --from-image IMAGE` makes the image again."""
    for path in images:
        text = read_infotext(path, "IMAGE")
        if text is None:
            raise UserError(f"{path}: no generation settings in this image (no PNG 'parameters' text, no EXIF "
                            "UserComment); it was not made by the WebUI or dreambooth, or they were stripped")
        if as_json:
            click.echo(json.dumps({"file": path, **parse_generation_parameters(text, defaults=False)},
                                  ensure_ascii=False))
        else:
            click.echo(f"{path}:\n{text}\n" if len(images) > 1 else text)


def register(group: click.Group) -> None:
    group.add_command(pnginfo_command)
