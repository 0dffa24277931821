"""Composable diffusion: ``AND`` in a prompt, as the WebUI does it.

``a red circle AND a blue background:0.8`` is two prompts, each with a weight (1 when none is given;
``text:weight`` at the end of a part, as the WebUI reads it, even with no ``AND``). Each part has its own
editing schedule and conditioning; at every step the UNet predicts the noise for the negative prompt
and for each part in one batch, and the prediction is ``uncond + cfg * sum_i w_i (cond_i - uncond)``.
diffusers' pipeline does the CFG itself (``uncond + cfg * (cond - uncond)``), so the UNet's "cond" half
is replaced by ``uncond + sum_i w_i (cond_i - uncond)`` within the call (``composing``): the same
sum, with the pipeline, its samplers and callbacks unchanged. The negative prompt takes no ``AND``.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch

from ..models.families import Conditioning
from .conditioning import PromptEncoder, ScheduledConditioning, pad_pair, schedule_conditioning

_AND = re.compile(r"\bAND\b")
# The WebUI's reading of a part (>= 1.6): its text, over any number of lines, then an optional ":weight" at the end.
_WEIGHTED = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """The parts of a prompt and their weights: ``[(text, weight), ...]``, one part when there is no AND."""
    parts = []
    for part in _AND.split(prompt):
        m = _WEIGHTED.search(part)
        text, weight = m.groups() if m else (part, None)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


@dataclass
class ComposedConditioning:
    """Each part's scheduled conditioning (with the shared negative) and its weight."""
    parts: list[tuple[float, ScheduledConditioning]]

    def at(self, step: int) -> tuple[Conditioning, Conditioning]:
        """(first part, negative) at ``step``: what the pipeline is given; ``composing`` does the rest."""
        return self.parts[0][1].at(step)

    @property
    def changes(self) -> bool:
        return any(c.changes for _, c in self.parts)

    @property
    def composed(self) -> bool:
        """Whether the UNet's prediction must be composed: several parts, or one with a weight."""
        return len(self.parts) > 1 or self.parts[0][0] != 1

    def all_at(self, step: int) -> tuple[Conditioning, list[tuple[float, Conditioning]]]:
        """(negative, [(weight, part)]) at ``step``, all of one length: the parts padded with their last
        vector as the WebUI pads them, then parts and negative padded with empty chunks as ``at`` pads."""
        first = self.parts[0][1]
        conds = [(w, c._at(c.positive, step)) for w, c in self.parts]
        uncond = first._at(first.negative, step)
        longest = max(c.embeds.shape[1] for _, c in conds)
        conds = [(w, Conditioning(torch.cat([c.embeds, c.embeds[:, -1:].expand(-1, longest - c.embeds.shape[1], -1)],
                                            dim=1), c.pooled)) for w, c in conds]
        padded = [pad_pair(c, uncond, first.empty) for _, c in conds]
        return padded[0][1], [(w, p[0]) for (w, _), p in zip(conds, padded)]


def compose_conditioning(encoder: PromptEncoder, prompt: str, negative_prompt: str, steps: int,
                         after: int = 0) -> ComposedConditioning:
    """``schedule_conditioning`` for each ``AND`` part of ``prompt``."""
    return ComposedConditioning([(w, schedule_conditioning(encoder, text, negative_prompt, steps, after))
                                 for text, w in split_and(prompt)])


@contextlib.contextmanager
def composing(unet, conditioning, n: int, state: dict):
    """Within: ``unet`` (called by the pipeline with the negative and the first part, or the first part
    alone at CFG 1) predicts for the negative and every part at ``state["step"]`` in one batch and gives
    back ``uncond + sum_i w_i (cond_i - uncond)`` as the conditional half (``n`` images)."""
    if not getattr(conditioning, "composed", False):
        yield
        return
    forward, own = unet.forward, unet.__dict__.get("forward")      # (own: someone else's, put back after)

    def composed_forward(sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=None, **kwargs):
        with_cfg = sample.shape[0] == 2 * n
        uncond, parts = conditioning.all_at(state["step"])
        k = 1 + len(parts)
        like = encoder_hidden_states
        hidden = torch.cat([c.embeds.to(like.device, like.dtype).expand(n, -1, -1) for c in [uncond] + [p for _, p in parts]])
        if torch.is_tensor(timestep) and timestep.dim() > 0 and timestep.shape[0] == sample.shape[0]:
            timestep = timestep[:n].repeat(k)
        if added_cond_kwargs:                  # SDXL: each part's pooled vector, the same time ids
            pooled = added_cond_kwargs["text_embeds"]
            ids = added_cond_kwargs["time_ids"]
            added_cond_kwargs = dict(added_cond_kwargs, time_ids=torch.cat([ids[:n], ids[-n:].repeat(k - 1, 1)]),
                                     text_embeds=torch.cat([c.pooled.to(pooled.device, pooled.dtype).expand(n, -1)
                                                            for c in [uncond] + [p for _, p in parts]]))
        out = forward(sample[:n].repeat(k, *[1] * (sample.dim() - 1)), timestep, hidden, *args,
                      added_cond_kwargs=added_cond_kwargs, **kwargs)
        eps = out[0] if isinstance(out, tuple) else out.sample
        eps_u = eps[:n]
        combined = eps_u + sum(w * (eps[n * (i + 1):n * (i + 2)] - eps_u) for i, (w, _) in enumerate(parts))
        result = torch.cat([eps_u, combined]) if with_cfg else combined
        return (result,) if isinstance(out, tuple) else type(out)(sample=result)

    unet.forward = composed_forward
    try:
        yield
    finally:
        if own is not None:
            unet.forward = own
        else:
            del unet.forward
