"""``dreambooth tokens``: candidate rare identifiers from a model's own tokenizer."""
from __future__ import annotations

import click

from ..models.loading import load_pipeline
from ..models.specs import is_lora_output, lora_output_base
from ..models.tokens import rare_identifiers


@click.command("tokens")
@click.option("--model", required=True, help="Model whose tokenizer to search (any --model spec, e.g. toy).")
@click.option("--model-config", default=None, help="For a single-file --model: the diffusers folder or hub id of its base.")
@click.option("--count", default=20, show_default=True, type=click.IntRange(1, 1000), help="How many candidates.")
def tokens_command(model: str, model_config: str | None, count: int) -> None:
    """List rare single-token identifiers (rarest first) for the instance prompt."""
    if is_lora_output(model):            # a LoRA output's tokenizer is its base model's
        model, _, trained_config = lora_output_base(model)
        model_config = model_config or trained_config
    found = rare_identifiers(load_pipeline(model, model_config=model_config).tokenizer, count)
    click.echo(f"{'token':<8} {'id':>7} {'rarity':>7}   (rarity: merge-rank percentile, 1.0 = rarest)")
    for c in found:
        click.echo(f"{c.token:<8} {c.token_id:>7} {c.rarity:>7.3f}")
    click.echo("note: 'sks', the folk default, is left out: it carries a meaning (a rifle).")


def register(group: click.Group) -> None:
    group.add_command(tokens_command)
