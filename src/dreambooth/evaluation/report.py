"""The DreamBench report as Markdown: this run's scores beside the paper's, per prompt, with the grids."""
from __future__ import annotations

import math

from .metrics import CLIP_T_NOTE

# The paper's numbers (Ruiz et al., DreamBooth, CVPR 2023): Table 1 over all 30 subjects, and
# Table 3 (prior-preservation ablation, Imagen).
PAPER_TABLE1 = {
    "Real images": {"dino": 0.774, "clip_i": 0.885, "clip_t": None},
    "DreamBooth (Imagen)": {"dino": 0.696, "clip_i": 0.812, "clip_t": 0.306},
    "DreamBooth (Stable Diffusion)": {"dino": 0.668, "clip_i": 0.803, "clip_t": 0.305},
    "Textual Inversion (Stable Diffusion)": {"dino": 0.569, "clip_i": 0.780, "clip_t": 0.255},
}
PAPER_TABLE3 = {
    "DreamBooth (Imagen) w/ PPL": {"pres": 0.493, "div": 0.391, "dino": 0.684, "clip_i": 0.815, "clip_t": 0.308},
    "DreamBooth (Imagen)": {"pres": 0.664, "div": 0.371, "dino": 0.712, "clip_i": 0.828, "clip_t": 0.306},
}


def _f(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3f}"


def render_markdown(report: dict) -> str:
    m = report["metrics"]
    title = report.get("subject") or report["class"]
    lines = [f"# DreamBench report: {title}", "",
             f"Class **{report['class']}** ({report['kind']} subject), identifier `{report['identifier']}`, "
             f"{report['prompts']} prompts x {report['images_per_prompt']} images (seeds "
             f"{report['seeds'][0]}..{report['seeds'][-1]}).", ""]
    settings = report.get("settings") or {}
    if settings:
        lines += ["Settings: " + ", ".join(f"{k} `{v}`" for k, v in settings.items() if v not in (None, "", [], ())), ""]
    if report.get("off_protocol"):     # the paper's rows below are then no like-for-like comparison
        lines += [f"**Off the paper's protocol:** {', '.join(report['off_protocol'])}; the paper's numbers below "
                  "are not directly comparable.", ""]
    lines += ["## Scores", "",
              "| | DINO | CLIP-I | CLIP-T | PRES (lower is better) | DIV |", "|---|---|---|---|---|---|",
              f"| **this run** | {_f(m.get('dino'))} | {_f(m.get('clip_i'))} | {_f(m.get('clip_t'))} | "
              f"{_f(m.get('pres')) if 'pres' in m else '-'} | {_f(m.get('div')) if 'div' in m else '-'} |",
              f"| real images of this subject (distinct pairs) | {_f(report['real_reference']['dino'])} | "
              f"{_f(report['real_reference']['clip_i'])} | - | - | - |"]
    for name, row in PAPER_TABLE1.items():
        lines.append(f"| paper Table 1: {name} | {_f(row['dino'])} | {_f(row['clip_i'])} | "
                     f"{_f(row['clip_t']) if row['clip_t'] is not None else 'n/a'} | - | - |")
    for name, row in PAPER_TABLE3.items():
        lines.append(f"| paper Table 3: {name} | {_f(row['dino'])} | {_f(row['clip_i'])} | {_f(row['clip_t'])} | "
                     f"{_f(row['pres'])} | {_f(row['div'])} |")
    lines += ["", f"CLIP-T is the {CLIP_T_NOTE}. The paper's numbers average 30 subjects; one subject's "
              "numbers vary much more.", ""]
    for key, why in report.get("unavailable", {}).items():
        lines.append(f"- {key.upper().replace('_', '-')} unavailable: {why}")
    if report.get("unavailable"):
        lines.append("")
    lines += [f"Models: DINO `{report['models']['dino']}`, CLIP `{report['models']['clip']}`.", "",
              "## Per prompt", "", "| # | prompt | DINO | CLIP-I | CLIP-T | grid |", "|---|---|---|---|---|---|"]
    for row in report["per_prompt"]:
        lines.append(f"| {row['index']} | {row['prompt']} | {_f(row['dino'])} | {_f(row['clip_i'])} | "
                     f"{_f(row['clip_t'])} | [grid]({row['grid']}) |")
    lines += ["", "## Grids", ""]
    for row in report["per_prompt"]:
        lines += [f"**{row['index']}. {row['prompt']}**", "", f"![{row['prompt']}]({row['grid']})", ""]
    lines += ["---", "Prompts and classes: DreamBooth dataset (Ruiz et al., Google Research), CC BY 4.0.", ""]
    return "\n".join(lines)
