"""The UNet's pass in the training step, eager or (``--cuda-graphs``) replayed as CUDA graphs.

Why graphs: on a GPU the LoRA step is bound by the host, not by the GPU. On an H200, 10 SD1.5 LoRA
steps ran 330 ms of kernels in 1.95 s of wall: each step launches about 860 matrix products and
1,500 copies from Python, one by one (docs/benchmarks.md). SDXL's UNet launches four times as many.
``torch.cuda.make_graphed_callables`` records the UNet's forward and backward passes once (after
three warm-up passes) and then replays each with one launch, so the step costs what its kernels do.
Nothing is compiled, so capturing takes seconds, not the minutes ``--compile`` spends.

What a graph needs, and what the trainer guarantees for it:
* fixed shapes: one graph is captured, for the first batch's shapes (one resolution and batch size:
  every step of a run of square pictures); a batch of other shapes runs eager;
* fixed addresses: the weights stay where they were captured (the optimizer updates them in place;
  nothing is parked or moved once steps begin);
* no host work inside: gradient checkpointing without saving and restoring the RNG state
  (``checkpoint_for_graphs``; reading it is what capturing forbids), not with ``--compile``, and on
  one process (DDP reduces gradients from hooks inside the backward pass);
* each step's gradients used before the next replay: the weights' gradients a replay returns are the
  graph's own buffers (the optimizer reads them, then they are dropped), so not with gradient
  accumulation, whose second replay would overwrite the first's;
* no autocast context around the capture: each pass casts the weights anew, and the graph records it.
Memory: the graphs keep one step's activations in a pool of their own between replays, which
allocate nothing (``max_memory_reserved`` shows it, ``max_memory_allocated`` only at the capture).
The returned prediction is the graph's own output buffer, overwritten by the next replay: the step
reads it into its loss at once."""
from __future__ import annotations

import torch

from .. import progress
from ..errors import UserError, exception_line


class UNetCall(torch.nn.Module):
    """The UNet as a function of tensors alone (SDXL's added conditioning as positional tensors),
    returning its prediction: what a graph can record."""

    def __init__(self, unet: torch.nn.Module, added_keys: tuple[str, ...] = ()):
        super().__init__()
        self.unet, self.added_keys = unet, added_keys

    def forward(self, noisy, timesteps, embeds, *added):
        added_cond = dict(zip(self.added_keys, added)) if self.added_keys else None
        return self.unet(noisy, timesteps, embeds, added_cond_kwargs=added_cond).sample


def _shapes(tensors) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device, t.requires_grad) for t in tensors)


class UNetPass:
    """``pass_(noisy, timesteps, embeds, added)`` → the UNet's prediction, under the run's autocast.
    With ``graphs``, the first call's shapes are captured as CUDA graphs and replayed from then on."""

    def __init__(self, unet: torch.nn.Module, accelerator, graphs: bool = False):
        self.unet, self.accelerator, self.graphs = unet, accelerator, graphs
        self.captured: tuple | None = None        # the shapes the graphs were captured for
        self._graphed: torch.nn.Module | None = None

    def __call__(self, noisy, timesteps, embeds, added: dict | None):
        if self.graphs:
            keys = tuple(added) if added else ()
            inputs = (noisy, timesteps, embeds, *(added[k] for k in keys))
            if self.captured is None:
                self._capture(keys, inputs)
            if _shapes(inputs) == self.captured:
                return self._graphed(*inputs)
        with self.accelerator.autocast():
            return self.unet(noisy, timesteps, embeds, added_cond_kwargs=added).sample

    def _capture(self, keys, inputs) -> None:
        # Warm-up and capture run on copies: the step's own tensors are used by its loss afterwards.
        sample = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in inputs)
        # Called outside any autocast context: each pass enters and leaves its own (accelerate's, around
        # the UNet's forward), so the weights' casts are made again in each pass and recorded in the
        # graph. A context around the warm-up passes and the capture would keep their casts in its cache
        # and the graph would replay the first weights forever (pytorch/pytorch#71631).
        cuda = torch.cuda.is_available()
        if cuda:      # what the allocator holds now, without blocks cached from before (class images)
            torch.cuda.empty_cache()
        held = torch.cuda.memory_reserved() if cuda else 0
        try:
            self._graphed = torch.cuda.make_graphed_callables(UNetCall(self.unet, keys), sample, allow_unused_input=True)
        except (RuntimeError, AssertionError) as exc:   # an operation a graph cannot hold, in this model or torch
            raise UserError(f"--cuda-graphs: the UNet's passes could not be captured ({exception_line(exc)}); "
                            "run without --cuda-graphs") from None
        self.captured = _shapes(inputs)
        if cuda:      # the warm-up passes ran on a stream of their own: their cached blocks serve no one else now
            torch.cuda.empty_cache()
            held = torch.cuda.memory_reserved() - held
        batch, *latent = inputs[0].shape
        progress.message(f"--cuda-graphs: the UNet's passes captured for batch {batch} of {'x'.join(map(str, latent))} "
                         "latents" + (f" (the graphs hold {held / 2**30:.2f} GiB)" if cuda else "")
                         + "; batches of other shapes run eager")


def checkpoint_for_graphs(module, *args):
    """Gradient checkpointing a graph can record: the UNet's blocks recomputed in the backward pass
    without torch's checkpoint saving and restoring the random number generators' state, which
    capturing a graph forbids. The same result only where the blocks draw no random numbers (no
    dropout in the UNet, --lora-dropout 0): ``trainables`` uses it only then."""
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False, preserve_rng_state=False)
