"""``dreambooth demo``: DreamBooth end to end on the shipped toy model, on a CPU, in a few minutes."""
from __future__ import annotations

import click

from ..toy.demo import run_demo


@click.command("demo")
@click.option("--output", default="dreambooth-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the pictures, the trained model and metrics.json: a new or empty one, or an earlier "
              "demo's (its results are replaced).")
@click.option("--method", type=click.Choice(["lora", "full"]), default=None,
              help="LoRA adapters or full fine-tuning (default: the toy preset's, full).")
@click.option("--steps", type=int, default=None, help="Training steps (default: the toy preset's).")
@click.option("--seed", type=int, default=0, show_default=True)
def demo_command(output: str, method: str | None, steps: int | None, seed: int) -> None:
    """Teach the toy model a striped green square, then draw it on backgrounds it never saw.

    Writes before.png and after.png (rows: the subject on orange, black and yellow backgrounds, then
    the class prompt 'a square'; columns: seeds) and metrics.json, read by the toy world's oracle.
    """
    metrics = run_demo(output, method=method, seed=seed, max_steps=steps, log=click.echo)
    b, a = metrics["before"], metrics["after"]
    click.echo(f"subject on new backgrounds: {b['subject_in_context']:.0%} before, {a['subject_in_context']:.0%} after; "
               f"'a square' drawn as the subject: {b['class_shows_subject']:.0%} before, {a['class_shows_subject']:.0%} after "
               f"(any pattern: {b['class_drift']:.0%}, {a['class_drift']:.0%})")
    click.echo(f"done in {metrics['total_seconds']:.0f} s")
    for name in ("before.png", "after.png", "metrics.json"):
        click.echo(f"  {output.rstrip('/')}/{name}")


def register(group: click.Group) -> None:
    group.add_command(demo_command)
