"""The Train tab's form: Method, Steps and one input per other ``TrainConfig`` setting (a new training
flag appears without UI code), showing what a job would train with, and the changes made to it.

What a job trains with is ``build_config``'s answer for its preset, model and method (the toy model's
own preset lies beneath, say). The form is filled from that base when the page loads and when the
preset, the model or the method changes, and the job is sent the inputs that differ from it: so a
job trains with what the form shows."""
from __future__ import annotations

import dataclasses

import gradio as gr

from ..errors import UserError
from ..server.jobs import SERVER_FIELDS
from ..server.jobs_api import _preset_model
from ..training.config import TrainConfig, build_config, field_type

NONE = "(none)"                      # the Preset choice for none
BASIC = ("method", "max_steps")     # shown outside the advanced section
HIDDEN = set(SERVER_FIELDS) | set(BASIC) | {"instance_prompt", "class_prompt"}
LABELS = {"method": "Method", "max_steps": "Steps"}


def advanced_fields() -> list[dataclasses.Field]:
    return [f for f in TrainConfig.fields() if f.name not in HIDDEN]


def form_fields() -> list[dataclasses.Field]:
    """The settings in the form's order: Method, Steps, then the advanced section's."""
    named = {f.name: f for f in TrainConfig.fields()}
    return [named[name] for name in BASIC] + advanced_fields()


def label(f: dataclasses.Field) -> str:
    return LABELS.get(f.name, f.name.replace("_", " "))


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def trained_spec(preset: str | None, catalog, current) -> str:
    """The model a job trains, as ``submit_job`` picks it: the listed one its preset names (``toy``),
    else ``current`` (the model loaded, or picked)."""
    return (_preset_model(preset if preset and preset != NONE else "", catalog) or current).spec


def base_values(preset: str | None, model_spec: str, method: str | None = None) -> dict:
    """What a job would train with before the form's changes (but ``method``, the form's)."""
    config = build_config(preset if preset and preset != NONE else None, {"model": model_spec, "method": method})
    return {f.name: getattr(config, f.name) for f in TrainConfig.fields()}


def _optional_number(f: dataclasses.Field) -> bool:
    """A number whose default is none (the model's size, the rank...): a text box, which can be empty
    (gradio's number box shows, and sends, 0 for none once it is drawn)."""
    typ, is_list = field_type(f)
    return typ in (int, float) and not is_list and _default(f) is None


def shown(f: dataclasses.Field, value):
    """A setting's value as its input shows it."""
    typ, is_list = field_type(f)
    if _optional_number(f):
        return "" if value is None else str(value)
    if typ is bool and _default(f) is None and "choices" not in f.metadata:
        return {True: "true", False: "false"}.get(value, "(default)")
    if typ is bool:
        return bool(value)
    if is_list:
        return ", ".join(str(v) for v in value or [])
    if typ is str and "choices" not in f.metadata:
        return value or ""
    return value


def form_values(base: dict) -> list:
    """The form's inputs (``form_fields`` order) showing ``base``."""
    return [shown(f, base[f.name]) for f in form_fields()]


def component_for(f: dataclasses.Field, base: dict):
    """One input per TrainConfig field, from its type, choices and help, showing ``base``'s value.
    Numbers are read as typed (no rounding), so a fraction in a whole-number setting is refused."""
    typ, is_list = field_type(f)
    value, help_text, key = shown(f, base[f.name]), f.metadata.get("help", ""), f"train_{f.name}"
    if "choices" in f.metadata:
        return gr.Dropdown(list(f.metadata["choices"]), value=value, label=label(f), info=help_text, elem_id=key)
    if typ is bool and _default(f) is None:          # "on when ..." by default: three states
        return gr.Dropdown(["(default)", "true", "false"], value=value, label=label(f), info=help_text, elem_id=key)
    if typ is bool:
        return gr.Checkbox(value=value, label=label(f), info=help_text, elem_id=key)
    if is_list:
        return gr.Textbox(value=value, label=label(f), info=help_text + " (comma-separated)", elem_id=key)
    if _optional_number(f):
        return gr.Textbox(value=value, label=label(f) + " (empty: the default)", info=help_text, elem_id=key)
    if typ in (int, float):
        return gr.Number(value=value, label=label(f), info=help_text, elem_id=key)
    return gr.Textbox(value=value, label=label(f), info=help_text, elem_id=key)


def value_of(f: dataclasses.Field, value):
    """An input's value as the TrainConfig type; None for an empty input or "(default)"."""
    typ, is_list = field_type(f)
    if is_list:
        items = [v.strip() for v in str(value or "").split(",") if v.strip()]
        try:
            return [typ(v) for v in items] or None
        except ValueError:
            raise UserError(f"{label(f)}: {value!r}: give {typ.__name__} values separated by commas") from None
    if typ is bool and _default(f) is None:
        return {"true": True, "false": False}.get(value)
    if _optional_number(f) and str(value or "").strip():
        try:
            value = float(str(value).strip())
        except ValueError:
            raise UserError(f"{label(f)} {str(value).strip()!r}: give a number (empty: the default)") from None
    if typ in (int, float) and not isinstance(value, bool):
        if value is None or value == "":
            return None
        if typ is int and float(value) != int(value):    # (gradio would round it unsaid)
            raise UserError(f"{label(f)} {value:g}: give a whole number")
        return typ(value)
    if typ is str and value == "" and _default(f) is None:
        return None
    return value


def overrides_of(values: list, base: dict | None = None, source: str = "the default") -> dict:
    """The form's values (``form_fields`` order) that differ from ``base`` (``base_values``; by default
    the defaults), as TrainConfig names and types: the job's overrides. An emptied input of a setting
    that has a value of its own is refused, saying which (``source``: whose value it is)."""
    base = base if base is not None else {f.name: _default(f) for f in TrainConfig.fields()}
    out = {}
    for f, raw in zip(form_fields(), values):
        value = value_of(f, raw)
        if value is None:
            if _default(f) is not None and base.get(f.name) is not None:
                raise UserError(f"{label(f)}: empty; give a value ({source}: {shown(f, base[f.name])})")
            continue                             # "(empty: the default)": the preset's value, or none
        if value != base.get(f.name):
            out[f.name] = value
    return out


def refilled(new: dict, old: dict | None, current: list) -> list:
    """Updates showing ``new`` (a preset or model just chosen) in the form, but for what the user
    changed: an input that no longer shows ``old`` (what the form was filled with) keeps its value.
    An input whose value stays is not set again: a value typed since the change was made stays too."""
    before = form_values(old) if old is not None else current
    return [value if now == was and value != now else gr.update()
            for value, was, now in zip(form_values(new), before, current)]
