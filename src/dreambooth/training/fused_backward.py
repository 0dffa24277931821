"""``--fused-backward-pass``: each weight is stepped the moment its gradient is complete, and the
gradient freed, so a full run never holds a whole set of gradients (kohya's fused backward pass).

A full SDXL UNet has 2.6 B weights: 10 GB of fp32 gradients on top of 10 GB of fp32 weights and
5 GB of 8-bit Adam state. Stepping in the backward pass keeps one gradient at a time, which is what
brings SDXL full fine-tuning under 20 GB with checkpointing and 8-bit Adam.

Each weight gets an optimizer of its own (torch's AdamW or bitsandbytes' 8-bit AdamW, the same
math per element as one optimizer over all weights), called from the weight's
post-accumulate-grad hook. :class:`PerWeightOptimizer` shows them to the trainer, the learning-rate
schedule and the checkpoints as one optimizer. What it rules out: gradient clipping (the norm needs
every gradient at once), gradient accumulation, several processes (DDP averages gradients after
the hooks have used them), and fp16's loss scaling. A non-finite loss is caught before the backward
pass, so no weight ever sees its gradient.
"""
from __future__ import annotations

from typing import Callable

import torch


class PerWeightOptimizer(torch.optim.Optimizer):
    def __init__(self, groups: list[dict], make: Callable[[list[dict]], torch.optim.Optimizer]):
        self.optimizers: list[torch.optim.Optimizer] = []
        for group in groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            self.optimizers += [make([{"params": [p], **settings}]) for p in group["params"]]
        super().__init__([p for o in self.optimizers for p in o.param_groups[0]["params"]], {})
        # The sub-optimizers' own groups: the schedule's learning rate reaches them directly.
        self.param_groups = [o.param_groups[0] for o in self.optimizers]
        for optimizer in self.optimizers:
            for p in optimizer.param_groups[0]["params"]:
                p.register_post_accumulate_grad_hook(self._stepper(optimizer))

    @staticmethod
    def _stepper(optimizer: torch.optim.Optimizer):
        def step(_param: torch.Tensor) -> None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    def step(self, closure=None):
        """Nothing left to do: every weight was stepped during the backward pass."""
        return None if closure is None else closure()

    def state_dict(self) -> dict:
        return {"per_weight": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("per_weight")
        if saved is None or len(saved) != len(self.optimizers):
            raise ValueError("not the state of a --fused-backward-pass run with these weights")
        for optimizer, state in zip(self.optimizers, saved):
            optimizer.load_state_dict(state)
