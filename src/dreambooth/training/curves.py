"""Validation's record: ``metrics.csv`` (one row per validation step) and ``curve.png`` (DINO and
CLIP-T against step; matplotlib when installed, else drawn with PIL)."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

CSV_FIELDS = ("step", "dino", "clip_i", "clip_t", "pres", "eligible", "best_so_far", "grid")


def _num(value) -> str:
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.6f}"


def _parse(value: str):
    try:
        return float(value) if value not in ("", None) else None
    except ValueError:
        return None


def read_metrics_csv(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        rows = []
        for row in csv.DictReader(fh):
            out = {k: _parse(row.get(k, "")) for k in ("dino", "clip_i", "clip_t", "pres")}
            out["step"] = int(float(row["step"]))
            for key in ("eligible", "best_so_far"):
                out[key] = {"1": True, "0": False}.get(row.get(key) or "")
            out["grid"] = row.get("grid", "")
            rows.append(out)
        return rows


# ----- plots -------------------------------------------------------------------------------------

def plot_curves(rows: Sequence[dict], path: str | Path, best_step: int | None = None) -> Path | None:
    """DINO and CLIP-T against step as a PNG (matplotlib when available, else PIL). None if no
    metrics yet."""
    series = {k: [(r["step"], r[k]) for r in rows if r.get(k) is not None] for k in ("dino", "clip_t")}
    if not any(series.values()):
        return None
    path = Path(path)
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except Exception:
        _plot_pil(series, path, best_step)
        return path
    fig, axes = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for ax, (key, label, color) in zip(axes, (("dino", "DINO (subject fidelity)", "tab:blue"),
                                              ("clip_t", "CLIP-T (prompt fidelity)", "tab:orange"))):
        pts = series[key]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if best_step is not None:
            ax.axvline(best_step, color="green", linestyle="--", linewidth=1, label=f"best step {best_step}")
            ax.legend(loc="best", fontsize=8)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_pil(series: dict, path: Path, best_step: int | None) -> None:
    width, panel, margin_l, margin_r, margin_t, margin_b = 640, 220, 64, 16, 22, 26
    img = Image.new("RGB", (width, 2 * panel + 16), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    steps = [s for pts in series.values() for s, _ in pts]
    x0, x1 = min(steps), max(steps)
    if x1 == x0:
        x1 = x0 + 1
    for n, (key, label, color) in enumerate((("dino", "DINO (subject fidelity)", (31, 119, 180)),
                                            ("clip_t", "CLIP-T (prompt fidelity)", (255, 127, 14)))):
        top = n * panel
        left, right, ptop, pbot = margin_l, width - margin_r, top + margin_t, top + panel - margin_b
        draw.text((left, top + 4), label, fill="black", font=font)
        draw.rectangle((left, ptop, right, pbot), outline=(160, 160, 160))
        pts = series[key]
        if not pts:
            draw.text((left + 8, ptop + 8), "no values", fill="gray", font=font)
            continue
        ys = [v for _, v in pts]
        y0, y1 = min(ys), max(ys)
        pad = (y1 - y0) * 0.1 or max(abs(y0) * 0.05, 1e-3)
        y0, y1 = y0 - pad, y1 + pad

        def to_xy(s, v):
            return (left + (s - x0) / (x1 - x0) * (right - left), pbot - (v - y0) / (y1 - y0) * (pbot - ptop))
        for frac in (0.0, 0.5, 1.0):
            v = y0 + frac * (y1 - y0)
            _, y = to_xy(x0, v)
            draw.line((left - 4, y, left, y), fill="black")
            draw.text((4, y - 5), f"{v:.3f}", fill="black", font=font)
        for s in sorted({x0, x1, *(p[0] for p in pts)})[:: max(1, len(pts) // 8)]:
            x, _ = to_xy(s, y0)
            draw.line((x, pbot, x, pbot + 4), fill="black")
            draw.text((x - 8, pbot + 6), str(s), fill="black", font=font)
        if best_step is not None:
            x, _ = to_xy(best_step, y0)
            for yy in range(int(ptop), int(pbot), 6):
                draw.line((x, yy, x, yy + 3), fill=(44, 160, 44))
        xy = [to_xy(s, v) for s, v in pts]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for x, y in xy:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
    draw.text((margin_l + (width - margin_l - margin_r) // 2 - 20, 2 * panel + 2), "step" + (f"  (best {best_step})" if best_step is not None else ""),
              fill="black", font=font)
    img.save(path)


def write_metrics_csv(path: Path, rows: Sequence[dict]) -> None:
    with Path(path).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_FIELDS)
        for row in rows:
            writer.writerow(_csv_row(row))


def append_metrics_csv(path: Path, row: dict) -> None:
    with Path(path).open("a", newline="") as fh:
        csv.writer(fh).writerow(_csv_row(row))


def _csv_row(row: dict) -> list:
    flag = {True: "1", False: "0", None: ""}
    return [row["step"], _num(row.get("dino")), _num(row.get("clip_i")), _num(row.get("clip_t")),
            _num(row.get("pres")), flag[row.get("eligible")], flag[row.get("best_so_far")], row.get("grid", "")]
