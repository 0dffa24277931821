"""Failures of a run that ``accelerate launch`` started as several processes.

A check that fails on one process leaves the others waiting at the next collective until it exits,
and then they fail with the backend's error ("Connection closed by peer"), which reads as a bug of
ours. So the checks before anything is written fail together (:func:`failing_together`): every
process learns every process's error and the first says them all once; and a process whose peer
stopped mid-run says so, with the last checkpoint to resume from (:class:`ProcessLost`).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from ..errors import UserError
from .results import last_checkpoint

# what a process group's backend raises when a peer is gone: gloo's RuntimeError names its transport
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo/transport")


class ProcessLost(UserError):
    """Another process of this run stopped (its own message says why); this one stops with it."""

    def __init__(self, step: int, checkpoint: Path | None, every: tuple[int, int] = (0, 0)):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"training stopped at step {step}: another process of this run stopped (its message, "
                         f"or the launcher's, says why); {last_checkpoint(checkpoint, step, every)}")


def peer_gone(exc: BaseException) -> bool:
    """``exc`` is a collective's failure because another process of the run is gone."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "1") or not isinstance(exc, RuntimeError):
        return False
    dist_error = getattr(torch.distributed, "DistError", ())
    return isinstance(exc, dist_error) or any(sign in str(exc) for sign in PEER_GONE)


@contextlib.contextmanager
def failing_together(accelerator):
    """Within the block a process's UserError is every process's: each raises one naming what failed
    where, marked ``said_by_first`` so that only the first process prints it."""
    error = None
    try:
        yield
    except UserError as exc:
        if accelerator.num_processes == 1:
            raise
        error = exc
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object
    said = gather_object([None if error is None else str(error)])
    failed = [(rank, text) for rank, text in enumerate(said) if text is not None]
    if not failed:
        return
    texts = list(dict.fromkeys(text for _, text in failed))
    if len(texts) == 1 and failed[0][0] == 0:               # the first process's (and perhaps all of theirs)
        together = UserError(texts[0])
    else:
        together = UserError("\n".join(
            f"process{'es' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {text}"
            for text in texts for ranks in [[r for r, t in failed if t == text]]))
    together.said_by_first = True
    raise together from error


def prepare_models(accelerator, trainables: dict, optimizer, unused_in: tuple[str, ...] = ()) -> tuple[list, object]:
    """accelerate's ``prepare`` of the trained models (in ``trainables``' order) and the optimizer: DDP or
    FSDP wrappers under ``accelerate launch``. DDP looks for weights without a gradient in the models
    named in ``unused_in`` alone (SDXL's first text encoder, whose last layer feeds nothing): in the
    others it would search the graph every step for none (and say so)."""
    names = list(trainables)
    apart = [n for n in names if n in unused_in] if accelerator.num_processes > 1 else []
    *wrapped, optimizer = accelerator.prepare(*(trainables[n] for n in names if n not in apart), optimizer)
    prepared = dict(zip([n for n in names if n not in apart], wrapped))
    if apart:
        from accelerate.utils import DistributedDataParallelKwargs
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
        alone = accelerator.prepare(*(trainables[n] for n in apart))
        prepared.update(zip(apart, alone if len(apart) > 1 else [alone]))
    return [prepared[n] for n in names], optimizer
