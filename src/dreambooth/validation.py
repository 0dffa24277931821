"""Validation during training: fixed prompts at fixed seeds, a grid per validation step, and the
DreamBooth metrics as curves, so the run tells *when* the subject is learnt and when it starts to
crowd out the prompt.

With ``--validate-every N`` the callback generates, at step 0 (the untouched model, the reference),
every N steps and at the last step:

* a grid ``<output>/validation/step-000050.png`` (one row per prompt, one column per seed);
* when the evaluation models load (``--dino-model``/``--clip-model``, or the defaults in the local
  cache), a row of ``<output>/validation/metrics.csv``: DINO, CLIP-I and CLIP-T of the subject
  prompts against the instance photos, and PRES for the class prompt (see :mod:`dreambooth.evaluate`);
  the same scalars go to TensorBoard (``<output>/validation/tensorboard``) when the ``tensorboard``
  package is installed;
* ``<output>/validation/curve.png``: DINO and CLIP-T against step (matplotlib when installed, else
  drawn with PIL).

Without the evaluation models the grids are still made; the CSV then has empty metric columns and
the reason is logged once.

Default prompts: the instance prompt, the subject in three DreamBench contexts ("a sks dog in the
jungle", "... in the snow", "... with a city in the background") and the class prompt.

**Best balance** (``--keep-best``). Training longer raises subject fidelity (DINO) and, past a point,
lowers prompt fidelity (CLIP-T): the subject crowds out the context. The rule keeps the trained step
with the **highest DINO among the steps whose CLIP-T is at least 90% of the step-0 CLIP-T** (the base
model's prompt fidelity on the same prompts and seeds; tolerance ``CLIP_T_TOLERANCE`` = 0.10 of its
magnitude). If no trained step keeps that much CLIP-T, the step with the highest CLIP-T wins. Both
references are fixed before training moves, so the decision at each step is final: when a step becomes
the best so far its weights are saved to ``<output>/validation/best`` (with ``best.json``), and at the
end the trainer copies them as the output (:func:`best_checkpoint`). Step 0 is never kept.
"""
from __future__ import annotations

import csv
import gc
import json
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import UserError

log = logging.getLogger("dreambooth")

VALIDATION_DIR = "validation"
CLIP_T_TOLERANCE = 0.10
CONTEXTS = ("in the jungle", "in the snow", "with a city in the background")
CSV_FIELDS = ("step", "dino", "clip_i", "clip_t", "pres", "eligible", "best_so_far", "grid")
RULE = (f"highest DINO among trained steps whose CLIP-T >= step-0 CLIP-T - {CLIP_T_TOLERANCE:g} x |step-0 CLIP-T|; "
        "if none qualifies, highest CLIP-T")


# ----- prompts -------------------------------------------------------------------------------------

def subject_phrase(instance_prompt: str) -> str:
    """'a photo of sks dog' -> 'sks dog'."""
    text = instance_prompt.strip().rstrip(".")
    text = re.sub(r"^(?:(?:a|an|the)\s+)?(?:photo|picture|image|portrait|photograph|close-?up(?: photo)?)\s+of\s+",
                  "", text, flags=re.I)
    text = re.sub(r"^(?:a|an|the)\s+", "", text, flags=re.I)
    return text.strip() or instance_prompt.strip()


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def default_validation_prompts(instance_prompt: str, class_prompt: str | None = None) -> list[str]:
    subject = subject_phrase(instance_prompt)
    prompts = [instance_prompt] + [f"{_article(subject)} {subject} {c}" for c in CONTEXTS]
    if class_prompt:
        prompts.append(class_prompt)
    return prompts


def infer_identifier(instance_prompt: str, class_prompt: str | None = None) -> str | None:
    """The identifier: the instance prompt's words missing from the class prompt ('sks'), else 'sks'
    when the prompt has it, else None (CLIP-T then keeps the prompt as it is)."""
    words = re.findall(r"[\w<>-]+", instance_prompt)
    if class_prompt:
        known = {w.lower() for w in re.findall(r"[\w<>-]+", class_prompt)}
        extra = [w for w in words if w.lower() not in known and w.lower() not in ("a", "an", "the", "photo", "of")]
        if len(extra) == 1:
            return extra[0]
    return "sks" if "sks" in words else None


# ----- files -------------------------------------------------------------------------------------

def validation_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / VALIDATION_DIR


def best_checkpoint(output_dir: str | Path) -> Path | None:
    """The weights kept by ``--keep-best`` (an output-format folder), or None."""
    folder = validation_dir(output_dir)
    best = folder / "best"
    return best if best.is_dir() and (folder / "best.json").exists() else None


def labelled_grid(images: Sequence[Image.Image], prompts: Sequence[str], cols: int) -> Image.Image:
    """Rows of ``cols`` images, each row labelled with its prompt."""
    from .grids import annotated_grid
    return annotated_grid(list(images), cols, row_labels=[[(p, True)] for p in prompts])


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


# ----- the callback -------------------------------------------------------------------------------

class ValidationCallback:
    """Trainer callback (``on_train_start``, ``on_step_end``, ``on_train_end``); see the module doc."""

    def __init__(self, config, evaluator=None):
        self.config = config
        self.every = int(getattr(config, "validate_every", 0) or 0)
        self.keep_best = bool(getattr(config, "keep_best", False))
        self.dir = validation_dir(config.output)
        instance_prompt = config.instance_prompt
        class_prompt = getattr(config, "class_prompt", None)
        self.prompts = list(getattr(config, "validation_prompts", None) or
                            default_validation_prompts(instance_prompt, class_prompt))
        self.class_prompt = class_prompt if class_prompt in self.prompts else None
        self.seeds = [int(s) for s in (getattr(config, "validation_seeds", None) or [0, 1, 2, 3])]
        self.steps = int(getattr(config, "validation_steps", 25) or 25)
        self.cfg = float(getattr(config, "validation_cfg", 7.5))
        self.identifier = getattr(config, "identifier", None) or infer_identifier(instance_prompt, class_prompt)
        self.evaluator = evaluator
        self.unavailable: str | None = None
        self.real_dino = self.real_clip = None
        self.rows: list[dict] = []
        self.reference_clip_t: float | None = None
        self.best: dict | None = None
        self.writer = None
        self.last_step: int | None = None

    # -- setup --
    def _load_evaluator(self) -> None:
        from .evaluate import Evaluator, list_images, load_image
        try:
            if self.evaluator is None:
                self.evaluator = Evaluator(getattr(self.config, "dino_model", None),
                                           getattr(self.config, "clip_model", None),
                                           getattr(self.config, "validation_eval_device", None) or "cpu")
            self.evaluator.load()
            real = []
            for path in list_images(self.config.instance_dir, "--instance-dir"):
                try:
                    real.append(load_image(path))
                except UserError:
                    continue  # unreadable files are skipped here as in training (the trainer names them)
            if not real:
                raise UserError(f"--instance-dir {self.config.instance_dir}: no readable photos to score against")
            self.real_dino, self.real_clip = self.evaluator.dino_embed(real), self.evaluator.clip_embed(real)
        except UserError as exc:
            self.unavailable = str(exc)
            self.evaluator = None
            log.warning("validation metrics off (grids only): %s", exc)
            if self.keep_best:
                log.warning("--keep-best: no metrics to choose a step; the final weights stay the output")

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # the tensorboard package is optional
            return
        try:
            self.writer = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
        except Exception as exc:
            log.warning("TensorBoard logging off: %s", exc)

    def on_train_start(self, run) -> None:
        if not _is_main(run):
            return
        self.config = getattr(run, "config", None) or self.config  # the trainer's resolved config (resolution)
        self.dir.mkdir(parents=True, exist_ok=True)
        start = int(getattr(run, "step", 0) or 0)
        csv_path = self.dir / "metrics.csv"
        if start > 0:  # resumed: keep the curve and the best choice made so far
            self.rows = [r for r in read_metrics_csv(csv_path) if r["step"] <= start]
            with_t = [r for r in self.rows if r.get("clip_t") is not None and r.get("dino") is not None]
            self.reference_clip_t = with_t[0]["clip_t"] if with_t else None
            ranked = [r for r in with_t if r["step"] > 0 and r.get("eligible") is not None]
            top = max(ranked, key=_rank, default=None)  # max keeps the earliest of equals, as the run did
            best_file = self.dir / "best.json"
            saved = json.loads(best_file.read_text()) if best_file.exists() else None
            if top is not None:
                self.best = {**{k: top.get(k) for k in ("step", "dino", "clip_i", "clip_t", "pres", "eligible")},
                             "reference_clip_t": self.reference_clip_t, "rule": RULE}
            if saved is not None and (top is None or saved.get("step") != top["step"]):
                # the kept weights come from past the resume point: they no longer belong to this run
                best_file.unlink(missing_ok=True)
                shutil.rmtree(self.dir / "best", ignore_errors=True)
                if self.keep_best:
                    log.warning("--keep-best: the best weights saved at step %s are past the resume point (step %d) "
                                "and were dropped; a later step that beats step %s will be kept",
                                saved.get("step"), start, top["step"] if top else "-")
            self._write_csv()
        else:  # a fresh run: nothing from an earlier run may be taken for this one's best
            for stale in (csv_path, self.dir / "best.json"):
                stale.unlink(missing_ok=True)
            shutil.rmtree(self.dir / "best", ignore_errors=True)
            self._write_csv()
        self._load_evaluator()
        self._open_tensorboard()
        if start == 0:
            self.validate(run)

    # -- per step --
    def on_step_end(self, run) -> None:
        if not _is_main(run):
            return
        if self.every and run.step > 0 and run.step % self.every == 0 and run.step != self.last_step:
            self.validate(run)

    def on_train_end(self, run) -> None:
        if not _is_main(run):
            return
        if run.step > 0 and run.step != self.last_step:
            self.validate(run)
        curve = plot_curves(self.rows, self.dir / "curve.png", self.best["step"] if self.best else None)
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.best:
            log.info("validation: best step %d (DINO %.4f, CLIP-T %.4f)%s", self.best["step"], self.best["dino"],
                     self.best["clip_t"], "; its weights are in validation/best" if self.keep_best else "")
        elif curve is None and self.unavailable:
            log.info("validation: grids only (%s)", self.unavailable)
        self.evaluator = None
        self.real_dino = self.real_clip = None

    # -- one validation --
    def _generate(self, run) -> list[Image.Image]:
        from .bench import generate_with_seeds
        resolution = getattr(self.config, "resolution", None)
        images: list[Image.Image] = []
        cpu_state = torch.random.get_rng_state()
        cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        modes: list[tuple[torch.nn.Module, bool]] = []
        try:
            pipe = run.pipeline()
            for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
                module = getattr(pipe, name, None)
                if isinstance(module, torch.nn.Module):
                    modes.append((module, module.training))
                    module.eval()
            with _autocast(pipe, getattr(self.config, "mixed_precision", "no")):
                for prompt in self.prompts:
                    images += generate_with_seeds(pipe, prompt, self.seeds, self.steps, self.cfg, resolution,
                                                  resolution, batch_size=len(self.seeds))
        finally:
            for module, training in modes:
                module.train(training)
            modes = []
            pipe = None
            torch.random.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
            if torch.cuda.is_available():  # give the sampling activations back to training
                gc.collect()
                torch.cuda.empty_cache()
        return images

    def validate(self, run) -> dict | None:
        step = int(run.step)
        self.last_step = step
        try:
            images = self._generate(run)
        except torch.cuda.OutOfMemoryError as exc:
            log.warning("validation at step %d skipped: out of GPU memory (%s)", step, str(exc).splitlines()[0])
            return None
        grid_path = self.dir / f"step-{step:06d}.png"
        labelled_grid(images, self.prompts, len(self.seeds)).save(grid_path)
        row = {"step": step, "dino": None, "clip_i": None, "clip_t": None, "pres": None, "grid": grid_path.name,
               "eligible": None, "best_so_far": None}
        if self.evaluator is not None:
            row.update(self._score(images))
            self._update_best(run, row)
        self.rows.append(row)
        self._append_csv(row)
        if self.writer is not None:
            for key in ("dino", "clip_i", "clip_t", "pres"):
                if row[key] is not None:
                    self.writer.add_scalar(f"validation/{key}", row[key], step)
            import numpy as np
            self.writer.add_image("validation/grid", np.asarray(Image.open(grid_path).convert("RGB")), step,
                                  dataformats="HWC")
            self.writer.flush()
        plot_curves(self.rows, self.dir / "curve.png", self.best["step"] if self.best else None)
        return row

    def _score(self, images: list[Image.Image]) -> dict:
        from .evaluate import cosine_matrix, strip_identifier
        n = len(self.seeds)
        subject, subject_prompts, klass = [], [], []
        for i, prompt in enumerate(self.prompts):
            chunk = images[i * n:(i + 1) * n]
            if prompt == self.class_prompt:
                klass += chunk
            else:
                subject += chunk
                subject_prompts += [strip_identifier(prompt, self.identifier)] * len(chunk)
        ev = self.evaluator
        out: dict = {}
        if subject:
            g_dino, g_clip = ev.dino_embed(subject), ev.clip_embed(subject)
            t_clip = ev.text_embed(subject_prompts)
            out["dino"] = float(cosine_matrix(g_dino, self.real_dino).mean())
            out["clip_i"] = float(cosine_matrix(g_clip, self.real_clip).mean())
            out["clip_t"] = float(torch.nn.functional.cosine_similarity(g_clip.double(), t_clip.double(), dim=-1).mean())
        if klass:
            out["pres"] = float(cosine_matrix(ev.dino_embed(klass), self.real_dino).mean())
        return out

    def _update_best(self, run, row: dict) -> None:
        if row.get("clip_t") is None or row.get("dino") is None:
            return
        if self.reference_clip_t is None:
            self.reference_clip_t = row["clip_t"]
        if row["step"] == 0:
            return
        ref = self.reference_clip_t
        row["eligible"] = row["clip_t"] >= ref - CLIP_T_TOLERANCE * abs(ref)
        best = self.best
        if best is not None and _rank(row) <= _rank(best):
            row["best_so_far"] = False
            return
        row["best_so_far"] = True
        self.best = {"step": row["step"], "dino": row["dino"], "clip_i": row["clip_i"], "clip_t": row["clip_t"],
                     "pres": row["pres"], "eligible": row["eligible"], "reference_clip_t": ref, "rule": RULE}
        if self.keep_best:
            # written beside, then swapped in: a crash while saving never loses the previous best
            target, staging = self.dir / "best", self.dir / ".incoming"
            shutil.rmtree(staging, ignore_errors=True)
            save = getattr(run, "save_model", None) or run.save_checkpoint  # the weights in the output format
            save(staging / "best")
            shutil.rmtree(target, ignore_errors=True)
            (staging / "best").rename(target)
            shutil.rmtree(staging, ignore_errors=True)
        (self.dir / "best.json").write_text(json.dumps(self.best, indent=2) + "\n")

    # -- csv --
    def _write_csv(self) -> None:
        with (self.dir / "metrics.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_FIELDS)
            for row in self.rows:
                writer.writerow(self._csv_row(row))

    def _append_csv(self, row: dict) -> None:
        with (self.dir / "metrics.csv").open("a", newline="") as fh:
            csv.writer(fh).writerow(self._csv_row(row))

    @staticmethod
    def _csv_row(row: dict) -> list:
        flag = {True: "1", False: "0", None: ""}
        return [row["step"], _num(row.get("dino")), _num(row.get("clip_i")), _num(row.get("clip_t")),
                _num(row.get("pres")), flag[row.get("eligible")], flag[row.get("best_so_far")], row.get("grid", "")]


def _rank(row: dict) -> tuple[bool, float]:
    """The best-balance order: eligible steps (CLIP-T kept) by DINO above the others by CLIP-T."""
    eligible = bool(row["eligible"])
    return eligible, row["dino"] if eligible else row["clip_t"]


def _is_main(run) -> bool:
    accelerator = getattr(run, "accelerator", None)
    return accelerator is None or bool(getattr(accelerator, "is_main_process", True))


def _autocast(pipe, mixed_precision: str | None):
    """Autocast in the training precision, so fp32 trainable weights and half-precision frozen parts
    meet in one dtype; a no-op without mixed precision."""
    import contextlib
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision or "no")
    if dtype is None:
        return contextlib.nullcontext()
    device = getattr(pipe, "device", torch.device("cpu"))
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def validation_callbacks(config) -> list:
    """[ValidationCallback(config)] when ``config.validate_every`` > 0, else []."""
    if int(getattr(config, "validate_every", 0) or 0) <= 0:
        return []
    return [ValidationCallback(config)]
