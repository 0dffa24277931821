"""An X/Y/Z plot's grid infotext, as A1111's X/Y/Z script writes it and reads it back.

A1111 adds the plot's own keys to the first cell's infotext on the grid: ``Script: X/Y/Z plot, X Type:
Sampler, X Values: "Euler a, DDIM"`` (and ``Fixed X Values`` for seeds), so that pasting the grid's
text sets the plot up again. Ours does the same, and ``--from-image`` of a grid makes the plot again.
"""
from __future__ import annotations

from .infotext import quote


A1111_AXIS_LABELS = {"CFG scale": "CFG Scale"}       # its X/Y/Z script's names, where ours differ


def plot_infotext(first: str, axes) -> str:
    """The grid's infotext: the first cell's, and the plot as A1111's X/Y/Z script writes it (``Script:
    X/Y/Z plot, X Type: Sampler, X Values: "Euler a, DDIM"``), so that pasting it sets the plot up again
    and ``--from-image`` of the grid remakes the plot. ``axes``: (letter, text as given, Axis or None)."""
    pairs = {"Script": "X/Y/Z plot"}
    for letter, text, axis in axes:
        if axis is None:
            continue
        pairs[f"{letter} Type"] = A1111_AXIS_LABELS.get(axis.type.label, axis.type.label)
        pairs[f"{letter} Values"] = str(text).partition(":")[2].strip()
        if axis.type.label == "Seed":          # -1 drawn: the seeds the cells were made with
            pairs[f"Fixed {letter} Values"] = ", ".join(str(v) for v in axis.values)
    return first + "".join(f", {key}: {quote(value)}" for key, value in pairs.items())


def plot_from_infotext(info: dict) -> dict[str, str]:
    """--x/--y/--z as a grid's infotext gives them (``plot_infotext``; A1111's too): {"x": "Sampler: Euler
    a, DDIM", ...}, empty for an image that is no X/Y/Z plot."""
    if info.get("Script") != "X/Y/Z plot":
        return {}
    return {letter.lower(): f"{info[f'{letter} Type']}: {info.get(f'Fixed {letter} Values') or info.get(f'{letter} Values', '')}"
            for letter in "XYZ" if info.get(f"{letter} Type") not in (None, "Nothing")}
