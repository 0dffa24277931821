"""Errors in the UI: one line, shown as the message of gradio's error toast. Gradio renders the
message as HTML, so a prompt's ``<lora:name>`` would vanish unless escaped."""
from __future__ import annotations

import html

import gradio as gr


def ui_error(message: str) -> gr.Error:
    return gr.Error(html.escape(str(message).splitlines()[0] if str(message) else "error"), print_exception=False)
