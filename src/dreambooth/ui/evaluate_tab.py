"""The Evaluate tab: a model and real photos of its subject through the DreamBench protocol (the
``bench`` command's runner) or a quick check, the metrics beside the paper's, and a job's validation
curve across its checkpoints. Without the evaluation models in the server's cache, it says which
``hf download`` the server's operator runs. Errors are a toast and the message line, as on the
other tabs."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from ..errors import UserError, exception_line
from .errors import ui_error
from ..evaluation.dreambench import run_bench
from ..evaluation.encoders import DEFAULT_CLIP, DEFAULT_DINO, resolve_encoder
from ..evaluation.metrics import Evaluator
from ..evaluation.report import PAPER_TABLE1
from ..generation.params import GenerationParams
from ..images import open_image
from ..models.specs import trained_clip_skip
from ..server.engine import Engine
from ..training.curves import read_metrics_csv

COLUMNS = ["row", "DINO", "CLIP-I", "CLIP-T", "PRES"]
PROTOCOLS = {"DreamBench (25 prompts)": None, "Quick (first 5 prompts)": 5}


def table(metrics: dict) -> pd.DataFrame:
    rows = [{"row": "this model", "DINO": metrics.get("dino"), "CLIP-I": metrics.get("clip_i"),
             "CLIP-T": metrics.get("clip_t"), "PRES": metrics.get("pres")}]
    rows += [{"row": f"paper: {name}", "DINO": r["dino"], "CLIP-I": r["clip_i"], "CLIP-T": r["clip_t"], "PRES": None}
             for name, r in PAPER_TABLE1.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def photo(upload, label: str = "Real photos of the subject"):
    """An uploaded photo, or a one-line error naming the file as the user named it (not gradio's
    temporary copy), without Python's reason or the server's settings (the parentheses)."""
    path = Path(upload.name if hasattr(upload, "name") else upload)
    try:
        return open_image(path)
    except UserError as exc:
        why = str(exc).replace(f"{path}: ", "", 1).split(" (")[0]
        raise UserError(f"{label}: {path.name}: {why}") from None


def check_evaluation_models() -> None:
    """The evaluation models (the defaults: the server takes no others) are in the server's cache,
    or a one-line error saying what its operator runs to provide them."""
    missing = []
    for what, spec in (("DINO", DEFAULT_DINO), ("CLIP", DEFAULT_CLIP)):
        try:
            resolve_encoder(spec, what)
        except UserError:
            missing.append((what, spec))
    if missing:
        raise UserError(f"Evaluate: the evaluation model{'s' if len(missing) > 1 else ''} "
                        f"{' and '.join(f'{what} ({spec})' for what, spec in missing)} "
                        f"{'are' if len(missing) > 1 else 'is'} not on this server; its operator provides "
                        f"{'them' if len(missing) > 1 else 'it'} with "
                        f"{' and '.join(f'`hf download {spec}`' for _, spec in missing)}, then Evaluate again")


def job_choices(store) -> list[tuple[str, str]]:
    """The finished jobs as (name, the model it trained on and how; the job's id)."""
    return [(f"{store.output(j).name} ({j.method}, on {j.request.get('model') or j.request.get('model_spec')})", j.id)
            for j in store.all() if j.state == "done"]


def tab(engine: Engine, store, data_dir: Path):
    """The tab's components; returns (a function that lists the models and finished jobs anew, the two
    dropdowns it fills), for the page to call when it loads and when the tab is opened."""
    with gr.Row():
        with gr.Column():
            model = gr.Dropdown([m.title for m in engine.catalog.models()], value=engine.entry.title, label="Model",
                                elem_id="eval_model")
            photos = gr.File(label="Real photos of the subject", file_count="multiple", file_types=["image"],
                             elem_id="eval_photos")
            with gr.Row():
                class_name = gr.Textbox(label="Class", placeholder="dog", elem_id="eval_class")
                kind = gr.Radio(["live", "object"], value=None, label="Kind (live: pets and other animals)",
                                elem_id="eval_kind")
                identifier = gr.Textbox(value="sks", label="Identifier", elem_id="eval_identifier")
            with gr.Row():
                protocol = gr.Radio(list(PROTOCOLS), value="Quick (first 5 prompts)", label="Protocol",
                                    elem_id="eval_protocol")
                pres = gr.Checkbox(label="PRES (prior preservation: class images compared with the photos)",
                                   elem_id="eval_pres")
            with gr.Row():
                per_prompt = gr.Slider(1, 8, value=1, step=1, label="Images per prompt (the paper: 4)")
                steps = gr.Slider(1, 100, value=20, step=1, label="Sampling steps (the paper's protocol: 50)")
            run = gr.Button("Evaluate", variant="primary", elem_id="eval_run")
        with gr.Column():
            message = gr.Markdown("", elem_id="eval_message")
            metrics = gr.Dataframe(value=table({}), label="Metrics beside the paper (Table 1)", interactive=False,
                                   elem_id="eval_metrics")
            job = gr.Dropdown(job_choices(store), label="A job's validation across checkpoints", elem_id="eval_job")
            curve = gr.LinePlot(x="step", y="value", color="metric", height=240, label="DINO and CLIP-T by step")

    def evaluate(title, files, cls, subject_kind, ident, chosen, with_pres, images, n_steps):
        try:
            yield from evaluated(title, files, cls, subject_kind, ident, chosen, with_pres, images, n_steps)
        except Exception as exc:                 # as the other tabs: a toast, and the message line says it
            error = ui_error(str(exc) if isinstance(exc, UserError) else f"unexpected {exception_line(exc)}")
            yield f"**error**: {error.message}", table({})
            raise error from None

    def evaluated(title, files, cls, subject_kind, ident, chosen, with_pres, images, n_steps):
        out = None
        try:
            if not files:
                raise UserError("Real photos of the subject: none given; upload photos of the subject")
            if not (cls or "").strip():
                raise UserError("Class: give the subject's class noun (dog, backpack, ...)")
            if subject_kind not in ("live", "object"):
                raise UserError("Kind: choose live (pets and other animals) or object; it picks the paper's prompts")
            real = [photo(f) for f in files]
            check_evaluation_models()
            yield "evaluating...", table({})
            with engine.gate.request():          # loading swaps process-wide torch state: not beside a job's
                evaluator = Evaluator().load()
            entry = engine.catalog.find_model(title, "model") if title else engine.entry
            params = GenerationParams("", steps=int(n_steps), seed=0, clip_skip=trained_clip_skip(entry.spec) or 1)
            out = Path(tempfile.mkdtemp(prefix="bench-", dir=data_dir))
            report = engine.run_on(entry, lambda pipeline: run_bench(
                pipeline, params, real, cls.strip(), subject_kind, out, (ident or "").strip() or "sks", int(images),
                pres=bool(with_pres), evaluator=evaluator, max_prompts=PROTOCOLS.get(chosen)))
        except UserError:
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)    # nothing of a failed run is kept
            raise
        quick = PROTOCOLS.get(chosen)
        note = (f" (a quick check: the first {quick} prompts, at {int(n_steps)} steps; the paper's rows are the whole "
                "protocol, so compare with care)") if quick else ""
        yield f"report: `{out / 'report.md'}`{note}", table(report["metrics"])
    run.click(evaluate, [model, photos, class_name, kind, identifier, protocol, pres, per_prompt, steps],
              [message, metrics], show_progress="hidden")     # (the message line says it: no badge over it)

    job.change(lambda job_id: validation_curve(store, job_id), job, [curve, message])

    def lists(loaded: bool = False):
        """``loaded``: the model picker shows the model loaded now (when the page loads; when the tab is
        opened, the user's choice stays)."""
        return (gr.Dropdown(choices=[m.title for m in engine.catalog.models()],
                            **({"value": engine.entry.title} if loaded else {})),
                gr.Dropdown(choices=job_choices(store)))
    return lists, [model, job]


def validation_curve(store, job_id):
    """(the job's DINO and CLIP-T by step, the message line): a job without validation is said (not an
    empty chart), and an earlier error on the line cleared."""
    job = store.get(job_id) if job_id else None
    if job is None:
        return pd.DataFrame(columns=["step", "value", "metric"]), ""
    rows = read_metrics_csv(store.output(job) / "validation" / "metrics.csv")
    points = pd.DataFrame([{"step": r["step"], "value": r[k], "metric": k.upper().replace("_", "-")}
                           for r in rows for k in ("dino", "clip_t") if r.get(k) is not None],
                          columns=["step", "value", "metric"])
    if len(points):
        return points, ""
    return points, (f"**{store.output(job).name}** ran no validation, so there is no curve: train with "
                    "validate_every set in its overrides (Train tab, Advanced: validate every), e.g. 100")
