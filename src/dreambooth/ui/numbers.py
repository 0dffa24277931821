"""Numbers typed into the page: a run uses what the field shows, and a value changed to fit is said.

A slider's box takes any number; gradio's page moves one past the slider's range to its end when
the box loses focus, unsaid. Here the value is set to the range's end (or, on a whole-number slider,
to the nearest whole number) at once, and a warning says what was set. The seed is read as typed
(gradio would round 1.5 to 2) and refused unless whole and a seed; a seed past 64 bits must never
reach gradio's reply (``storable_seed``): its JSON encoder raises and the page loses its connection."""
from __future__ import annotations

import math

import gradio as gr

from ..checks import check_seed
from ..errors import UserError


def fitted(slider: gr.Slider, value):
    """(the value the slider can hold, the one-line message saying what was changed, or None)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return value, None
    low, high = slider.minimum, slider.maximum
    if not low <= value <= high:
        new, why = min(max(value, low), high), f"from {low:g} to {high:g}"
    elif slider.step == 1 and value != int(value):
        new, why = math.floor(value + 0.5), "a whole number"
    else:
        return value, None
    return new, f"{slider.label} {value:g}: {why}; set to {new:g}"


def keep_in_range(sliders) -> None:
    """Each slider's value, as typed (``preprocess=False``: gradio's own check would print a traceback
    in the server's log), set to one it can hold, with a warning saying so."""
    for slider in sliders:
        def check(value, slider=slider):
            new, message = fitted(slider, value)
            if message is None:
                return gr.update()
            gr.Warning(message)
            return new
        slider.change(check, slider, slider, preprocess=False, show_progress="hidden")


def seed_of(value) -> int:
    """The Seed box's value as the run's seed: a whole number, or a one-line error."""
    if value is None or value == "":
        raise UserError("Seed: empty; give -1 for a random seed, or a whole number")
    if float(value) != int(float(value)):
        raise UserError(f"Seed {float(value):g}: give a whole number (-1: a random seed)")
    check_seed("Seed", int(float(value)))         # (also before a plot or a job, which may not check it first)
    return int(float(value))


def storable_seed(value) -> bool:
    """Whether a seed box's value may go back to the page (its saved settings): not a number past 64
    bits, which a run refuses in one line (``seed_of``) but gradio's JSON encoder cannot write."""
    return not isinstance(value, int) or -2**63 <= value < 2**63
