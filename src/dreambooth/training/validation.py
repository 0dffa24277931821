"""Validation during training: fixed prompts at fixed seeds, a grid per validation step, and the
DreamBooth metrics as curves, so the run tells *when* the subject is learnt and when it starts to
crowd out the prompt.

With ``--validate-every N`` the trainer's :class:`Validator` generates, through the one sampling
path (``--validation-sampler``, ``--validation-steps``, ``--validation-cfg``), at step 0 (the
untouched model, the reference), every N steps and at the last step:

* the images, ``<output>/validation/step-000050/00001-<seed>.png``, each with its infotext (the
  last step's remake bit for bit from the output with ``dreambooth generate --from-image``);
* a grid ``<output>/validation/step-000050.png`` (one row per prompt, one column per seed);
* when the evaluation models load (``--dino-model``/``--clip-model``, or the defaults in the local
  cache), a row of ``<output>/validation/metrics.csv``: DINO, CLIP-I and CLIP-T of the subject
  prompts against the instance photos, and PRES for the class prompt (``evaluation.metrics.Evaluator``);
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

import gc
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import progress
from ..errors import UserError
from ..evaluation.metrics import Evaluator, RealSet, real_photos
from ..evaluation.prompts import identifier_pattern
from ..models.tokens import subject_identifier
from ..generation.params import GenerationParams
from ..generation.sampling import GeneratedImage, generate
from ..grid import annotated_grid
from ..images import open_image, write_png
from ..outputs import (VALIDATION_BEST, VALIDATION_BEST_INFO, VALIDATION_CURVE, VALIDATION_DIR, VALIDATION_METRICS,
                       validation_grid_name, validation_images_dir)
from .callbacks import TrainingRun, ValidationEnd
from .curves import append_metrics_csv, plot_curves, read_metrics_csv, write_metrics_csv

CLIP_T_TOLERANCE = 0.10
CONTEXTS = ("in the jungle", "in the snow", "with a city in the background")
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


# ----- settings and files -----------------------------------------------------------------------

@dataclass(frozen=True)
class ValidationSettings:
    """What validation makes and scores, from the training config's validation group."""
    every: int
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    params: GenerationParams          # sampler, steps, CFG, negative prompt, size (prompt and seed per image)
    keep_best: bool
    instance_dir: str
    identifier: str | None
    class_prompt: str | None          # the class prompt when it is among the prompts (PRES)
    dino_model: str | None
    clip_model: str | None

    @classmethod
    def from_config(cls, cfg) -> "ValidationSettings":
        prompts = tuple(cfg.validation_prompts or default_validation_prompts(cfg.instance_prompt, cfg.class_prompt))
        return cls(every=int(cfg.validate_every), prompts=prompts, seeds=tuple(int(s) for s in cfg.validation_seeds),
                   params=GenerationParams("", cfg.validation_negative_prompt, cfg.validation_sampler,
                                           steps=cfg.validation_steps, cfg_scale=cfg.validation_cfg,
                                           width=cfg.resolution, height=cfg.resolution, clip_skip=cfg.clip_skip),
                   keep_best=bool(cfg.keep_best), instance_dir=cfg.instance_dir,
                   identifier=subject_identifier(cfg.instance_prompt, cfg.class_prompt),
                   class_prompt=cfg.class_prompt if cfg.class_prompt in prompts else None,
                   dino_model=cfg.dino_model, clip_model=cfg.clip_model)


def validation_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / VALIDATION_DIR


def best_checkpoint(output_dir: str | Path) -> Path | None:
    """The weights kept by ``--keep-best`` (an output-format folder), or None."""
    folder = validation_dir(output_dir)
    best = folder / VALIDATION_BEST
    return best if best.is_dir() and (folder / VALIDATION_BEST_INFO).exists() else None


def _rank(row: dict) -> tuple[bool, float]:
    """The best-balance order: eligible steps (CLIP-T kept) by DINO above the others by CLIP-T."""
    eligible = bool(row["eligible"])
    return eligible, row["dino"] if eligible else row["clip_t"]


# ----- the validator -------------------------------------------------------------------------------

class Validator:
    """Validation images, metrics and the best-balance choice for one run (see the module doc).
    The trainer calls ``start``, ``after_step`` and ``end``; each returns a ``ValidationEnd`` when it
    validated."""

    def __init__(self, run: TrainingRun, evaluator: Evaluator | None = None, sharded: bool = False):
        self.run = run
        self.sharded = sharded        # FSDP: saving the best weights takes every process (ValidationFollower)
        self.settings = ValidationSettings.from_config(run.config)
        self.dir = validation_dir(run.output)
        self.evaluator = evaluator
        self.unavailable: str | None = None
        self.real: RealSet | None = None
        self.rows: list[dict] = []
        self.reference_clip_t: float | None = None
        self.best: dict | None = None
        self.writer = None
        self.last_step: int | None = None

    # -- setup --
    def _load_evaluator(self) -> None:
        s = self.settings
        try:
            self.evaluator = (self.evaluator or Evaluator(s.dino_model, s.clip_model, "cpu")).load()
            real = []
            for path in real_photos(s.instance_dir, "--instance-dir", quiet=True):   # masks are no photos
                try:
                    real.append(open_image(path))
                except UserError:
                    continue  # unreadable files are skipped here as in training (the trainer names them)
            if not real:
                raise UserError(f"--instance-dir {s.instance_dir}: no readable photos to score against")
            self.real = self.evaluator.reference(real)
        except UserError as exc:
            self.unavailable = str(exc)
            self.evaluator = None
            self.run.warn(f"validation metrics off (grids only): {exc}")
            if s.keep_best:
                self.run.warn("--keep-best: no metrics to choose a step; the final weights stay the output")

    def _check_prompts(self) -> None:
        """Once a run (the metrics, which score every validation, say nothing of it): an instance prompt
        with no single identifier (CLIP-T then keeps it), and prompts of --validation-prompts that never
        name the identifier (they never ask for the subject)."""
        s = self.settings
        subject = [p for p in s.prompts if p != s.class_prompt]
        if s.identifier is None:     # found as bench and evaluate find it (subject_identifier)
            self.run.warn(f"validation: no single identifier word in --instance-prompt '{self.run.config.instance_prompt}'"
                          " to take out for CLIP-T, which scores the prompts as written; use one rare identifier word "
                          "(`dreambooth tokens`) and name the class with --class-prompt")
        elif subject and not any(identifier_pattern(s.identifier).search(p) for p in subject):
            example = default_validation_prompts(self.run.config.instance_prompt)[1]
            self.run.warn(f"--validation-prompts: none names the identifier '{s.identifier}' of --instance-prompt, so "
                          "no validation image asks for the subject and the metrics follow what the prompts name; "
                          f"write it into them (e.g. '{example}')")

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # the tensorboard package is optional
            return
        try:
            self.writer = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
        except Exception as exc:
            self.run.warn(f"TensorBoard logging off: {exc}")

    def start(self) -> ValidationEnd | None:
        self.dir.mkdir(parents=True, exist_ok=True)
        start = self.run.step
        csv_path = self.dir / VALIDATION_METRICS
        if start > 0:  # resumed: keep the curve and the best choice made so far
            self._resume(start, csv_path)
        else:  # a fresh run: nothing from an earlier run may be taken for this one's best
            for stale in (csv_path, self.dir / VALIDATION_BEST_INFO):
                stale.unlink(missing_ok=True)
            shutil.rmtree(self.dir / VALIDATION_BEST, ignore_errors=True)
        write_metrics_csv(csv_path, self.rows)
        self._check_prompts()
        self._load_evaluator()
        self._open_tensorboard()
        return self.validate(0) if start == 0 else None

    def _resume(self, start: int, csv_path: Path) -> None:
        self.rows = [r for r in read_metrics_csv(csv_path) if r["step"] <= start]
        with_t = [r for r in self.rows if r.get("clip_t") is not None and r.get("dino") is not None]
        self.reference_clip_t = with_t[0]["clip_t"] if with_t else None
        ranked = [r for r in with_t if r["step"] > 0 and r.get("eligible") is not None]
        top = max(ranked, key=_rank, default=None)  # max keeps the earliest of equals, as the run did
        best_file = self.dir / VALIDATION_BEST_INFO
        saved = json.loads(best_file.read_text()) if best_file.exists() else None
        if top is not None:
            self.best = {**{k: top.get(k) for k in ("step", "dino", "clip_i", "clip_t", "pres", "eligible")},
                         "reference_clip_t": self.reference_clip_t, "rule": RULE}
        if saved is not None and (top is None or saved.get("step") != top["step"]):
            # the kept weights come from past the resume point: they no longer belong to this run
            best_file.unlink(missing_ok=True)
            shutil.rmtree(self.dir / VALIDATION_BEST, ignore_errors=True)
            if self.settings.keep_best:
                self.run.warn(f"--keep-best: the best weights saved at step {saved.get('step')} are past the resume "
                              f"point (step {start}) and were dropped; a later step that beats step "
                              f"{top['step'] if top else '-'} will be kept")

    def after_step(self, step: int) -> ValidationEnd | None:
        if step > 0 and step % self.settings.every == 0 and step != self.last_step:
            return self.validate(step)
        return None

    def end(self, step: int) -> ValidationEnd | None:
        done = self.validate(step) if step > 0 and step != self.last_step else None
        plot_curves(self.rows, self.dir / VALIDATION_CURVE, self.best["step"] if self.best else None)
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.best:
            progress.message(f"validation: best step {self.best['step']} (DINO {self.best['dino']:.4f}, CLIP-T "
                             f"{self.best['clip_t']:.4f})" + ("; its weights are in validation/best"
                                                              if self.settings.keep_best else ""))
        self.evaluator = None
        self.real = None
        return done

    def best_weights(self) -> Path | None:
        return best_checkpoint(self.run.output)

    # -- one validation --
    def _generate(self, step: int) -> list[GeneratedImage]:
        """Each prompt at each seed, saved with its infotext."""
        folder = validation_images_dir(self.run.output, step)
        shutil.rmtree(folder, ignore_errors=True)        # a rerun of this step (resume) replaces it
        return sample(self.run, self.settings, folder)

    def validate(self, step: int) -> ValidationEnd | None:
        self.last_step = step
        try:
            made = self._generate(step)
        except torch.cuda.OutOfMemoryError as exc:
            progress.warn(f"validation at step {step} skipped: out of GPU memory ({str(exc).splitlines()[0]})")
            return None
        images = [m.image for m in made]
        grid_path = self.dir / validation_grid_name(step)
        grid = annotated_grid(images, len(self.settings.seeds), row_labels=[[(p, True)] for p in self.settings.prompts])
        write_png(grid, grid_path, made[0].infotext)                 # as A1111's grids: the first image's
        row = {"step": step, "dino": None, "clip_i": None, "clip_t": None, "pres": None, "grid": grid_path.name,
               "eligible": None, "best_so_far": None}
        if self.evaluator is not None:
            row.update(self._score(images))
        self._update_best(row)
        self.rows.append(row)
        append_metrics_csv(self.dir / VALIDATION_METRICS, row)
        if self.writer is not None:
            import numpy as np
            for key in ("dino", "clip_i", "clip_t", "pres"):
                if row[key] is not None:
                    self.writer.add_scalar(f"validation/{key}", row[key], step)
            self.writer.add_image("validation/grid", np.asarray(open_image(grid_path)), step, dataformats="HWC")
            self.writer.flush()
        plot_curves(self.rows, self.dir / VALIDATION_CURVE, self.best["step"] if self.best else None)
        metrics = {k: row[k] for k in ("dino", "clip_i", "clip_t", "pres") if row[k] is not None}
        return ValidationEnd(step, grid_path, [m.path for m in made], metrics)

    def _score(self, images: list) -> dict:
        """DINO, CLIP-I, CLIP-T of the subject prompts and PRES of the class prompt, by the evaluator."""
        n, s = len(self.settings.seeds), self.settings
        subject, subject_prompts, klass = [], [], []
        for i, prompt in enumerate(s.prompts):
            chunk = images[i * n:(i + 1) * n]
            if prompt == s.class_prompt:
                klass += chunk
            else:
                subject += chunk
                subject_prompts += [prompt] * len(chunk)
        if not subject:
            return {}
        scores = self.evaluator.score(self.real, subject, subject_prompts, identifier=s.identifier,
                                      class_generated=klass or None, per_image=False, identifier_flag=None)
        return {k: scores[k] for k in ("dino", "clip_i", "clip_t", "pres") if scores.get(k) is not None}

    def _rank_row(self, row: dict) -> bool:
        """Mark ``row`` eligible or not and best so far or not; True when it is the new best."""
        if row.get("clip_t") is None or row.get("dino") is None:
            return False
        if self.reference_clip_t is None:
            self.reference_clip_t = row["clip_t"]
        if row["step"] == 0:
            return False
        ref = self.reference_clip_t
        row["eligible"] = row["clip_t"] >= ref - CLIP_T_TOLERANCE * abs(ref)
        if self.best is not None and _rank(row) <= _rank(self.best):
            row["best_so_far"] = False
            return False
        row["best_so_far"] = True
        self.best = {"step": row["step"], "dino": row["dino"], "clip_i": row["clip_i"], "clip_t": row["clip_t"],
                     "pres": row["pres"], "eligible": row["eligible"], "reference_clip_t": ref, "rule": RULE}
        return True

    def _keeps(self, new: bool | None) -> bool:
        """Whether this step's weights are kept as the best: decided by the first process (``new``),
        and under FSDP with --keep-best sent to the others (None there), which gather them too."""
        if self.sharded and self.settings.keep_best:
            from accelerate.utils import broadcast_object_list
            new = broadcast_object_list([new])[0]
        return bool(new)

    def _update_best(self, row: dict) -> None:
        if not self._keeps(self._rank_row(row)):
            return
        if self.settings.keep_best:
            # written beside, then swapped in: a crash while saving never loses the previous best
            target, staging = self.dir / VALIDATION_BEST, self.dir / ".incoming"
            shutil.rmtree(staging, ignore_errors=True)
            self.run.save_model(staging / VALIDATION_BEST)
            shutil.rmtree(target, ignore_errors=True)
            (staging / VALIDATION_BEST).rename(target)
            shutil.rmtree(staging, ignore_errors=True)
        (self.dir / VALIDATION_BEST_INFO).write_text(json.dumps(self.best, indent=2) + "\n")


def sample(run: TrainingRun, s: ValidationSettings, folder: Path | None) -> list[GeneratedImage]:
    """The validation images of the weights as they are (written to ``folder`` unless None), the
    training's random streams and train/eval modes left as they were."""
    pipeline = run.generation_pipeline()
    cpu_state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    modes = [(m, m.training) for m in (getattr(pipeline.pipe, n, None) for n in ("unet", "text_encoder",
                                                                              "text_encoder_2", "vae"))
             if isinstance(m, torch.nn.Module)]
    made = []
    try:
        for module, _ in modes:
            module.eval()
        with progress.task("validation", len(s.prompts) * len(s.seeds)) as bar:
            for prompt in s.prompts:
                for seed in s.seeds:
                    made += generate(pipeline, s.params.replace(prompt=prompt, seed=seed), folder,
                                     autocast=run.autocast_dtype, task=bar)
                    getattr(run, "pause_point", lambda: None)()     # a server's requests may go first
    finally:
        for module, training in modes:
            module.train(training)
        torch.random.set_rng_state(cpu_state)      # validation never moves the training's random streams
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        if torch.cuda.is_available():  # give the sampling activations back to training
            gc.collect()
            torch.cuda.empty_cache()
    return made
