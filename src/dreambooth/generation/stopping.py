"""A server's interrupt or skip within a step: at the UNet's next resnet or transformer block.

diffusers' pipelines end their loop only between steps (``_interrupt``). One step of a large image on
a CPU (2048 x 2048: minutes) would hold the server, and every request queued behind it, until its end.
Checks before each block end the step there instead; the image keeps the last finished step, as the
WebUI's interrupt keeps it, or there is none when no step had finished."""
from __future__ import annotations

import contextlib
from typing import Callable


class StoppedWithinStep(Exception):
    """Raised inside the UNet's forward pass; ``sampling._call`` catches it."""


@contextlib.contextmanager
def stoppable_within_steps(unet, stop: Callable[[], str | None] | None):
    """While inside, ``stop()`` is asked before each resnet and transformer block of ``unet`` (about 40
    a step for SD 1.5, each cheap); None: nothing is asked (the CLI, which Ctrl-C ends)."""
    if stop is None:
        yield
        return
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    def check(module, args):
        if stop() is not None:
            raise StoppedWithinStep

    handles = [m.register_forward_pre_hook(check) for m in unet.modules()
               if isinstance(m, (BasicTransformerBlock, ResnetBlock2D))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
