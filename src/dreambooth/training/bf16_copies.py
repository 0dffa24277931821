"""bf16 copies of the trained weights, kept by the optimizer: a full fine-tune on a CPU under bf16.

Under bf16 autocast every linear and convolution weight is cast from fp32 to bf16 in each forward
pass, and its gradient cast back to fp32 in the backward pass: two passes over every trained weight
a step, at memory speed, which on a CPU is most of what a step costs beside its matrix products.
Here the step's modules hold bf16 copies instead (the values autocast's cast makes, so the same
gradients, bit for bit), and one compiled pass per weight reads the bf16 gradient and updates the
fp32 weight, AdamW's two moments and the copy together. The fp32 weights stay the truth: saved,
checkpointed, validated; the state is AdamW's, so a checkpoint resumes with or without copies. The
update is AdamW's up to rounding (its arithmetic is ordered differently from torch's kernel).

Only where each gradient is made once per step by one process (accumulation would sum in bf16, DDP
would average in bf16), with torch's fused AdamW, without ``--compile`` or ``--fused-backward-pass``,
and where inductor can compile (it writes the pass in C++; a machine without a compiler trains as
before). Measured in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import contextlib
import functools

import torch

COPIED = (torch.nn.Linear, torch.nn.Conv2d)     # what autocast casts to bf16 (norms and embeddings stay fp32)


def _adamw_pass(p, g, m, v, copy, decay, beta1, beta2, step_size, inv_bc2_sqrt, eps, inv_scale):
    """One AdamW update of a flat fp32 weight ``p`` from its bf16 gradient ``g``, and its bf16 ``copy``."""
    g = g.float() * inv_scale
    m.mul_(beta1).add_(g * (1 - beta1))
    v.mul_(beta2).add_(g * g * (1 - beta2))
    p.mul_(decay).sub_(step_size * m / (v.sqrt() * inv_bc2_sqrt + eps))
    copy.copy_(p)


def _squares(g):
    """The sum of a flat gradient's squares, accumulated in fp32."""
    g = g.float()
    return (g * g).sum()


@functools.cache
def _kernels():
    """The two passes compiled (once per process; inductor keeps them on disk), or None where this
    machine cannot compile: tried on small tensors, so a run knows before its first step."""
    try:
        update = torch.compile(_adamw_pass, dynamic=True, fullgraph=True)
        squares = torch.compile(_squares, dynamic=True, fullgraph=True)
        p, m, v = torch.zeros(17), torch.zeros(17), torch.zeros(17)
        g, copy = torch.zeros(17, dtype=torch.bfloat16), torch.zeros(17, dtype=torch.bfloat16)
        one = torch.tensor(1.0)
        with torch.no_grad():
            update(p, g, m, v, copy, one, one, one, one, one, one, one)
            squares(g)
        return update, squares
    except Exception:        # no C++ compiler, an unsupported platform: the plain path
        return None


def applies(cfg, device: str, processes: int) -> bool:
    """Whether a run of ``cfg`` on a ``device`` of this type trains through bf16 copies, where inductor
    can compile (see the module's docstring for why these conditions)."""
    return (device == "cpu" and cfg.mixed_precision == "bf16" and cfg.method == "full" and processes == 1
            and cfg.gradient_accumulation == 1 and not cfg.use_8bit_adam and not cfg.fused_backward_pass
            and not cfg.compile)


def keeps_copies(cfg, device: torch.device, processes: int) -> bool:
    """Whether this run trains through bf16 copies: where they apply and this machine can compile. Not
    in a process group, even of one process (``accelerate launch`` with a multi-process config): accelerate
    wraps the models in DDP there, which waits for gradients of the fp32 weights the copies stand in for."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return applies(cfg, device.type, processes) and not distributed and _kernels() is not None


class AdamWWithBf16Copies(torch.optim.AdamW):
    """torch's fused AdamW for every weight but the linear and convolution weights of ``models``, which
    train through bf16 copies: the step runs inside :meth:`swapped`, and :meth:`step` updates them."""

    def __init__(self, groups: list[dict], models, **kwargs):
        super().__init__(groups, fused=True, **kwargs)
        self._update, self._squares = _kernels()
        trained = {id(p) for group in self.param_groups for p in group["params"]}
        self.copies: dict[torch.Tensor, torch.nn.Parameter] = {}
        self._slots: list[tuple[torch.nn.Module, torch.Tensor]] = []
        for model in models:
            for module in model.modules():
                weight = getattr(module, "weight", None)
                if isinstance(module, COPIED) and weight is not None and id(weight) in trained and weight.dtype == torch.float32:
                    if weight not in self.copies:
                        self.copies[weight] = torch.nn.Parameter(weight.detach().to(torch.bfloat16))
                    self._slots.append((module, weight))
        self._versions: dict[torch.Tensor, int] = {}

    @contextlib.contextmanager
    def swapped(self):
        """The step's forward and backward passes: each module holds its weight's bf16 copy, brought up
        to date first where the fp32 weight changed outside :meth:`step` (a checkpoint loaded)."""
        with torch.no_grad():
            for weight, copy in self.copies.items():
                if self._versions.get(weight) != weight._version:
                    copy.copy_(weight)
                    self._versions[weight] = weight._version
        for module, weight in self._slots:
            module._parameters["weight"] = self.copies[weight]
        try:
            yield
        finally:
            for module, weight in self._slots:
                module._parameters["weight"] = weight

    def gradients(self, params) -> list[torch.Tensor]:
        """The gradients of ``params`` wherever they are: on the bf16 copy for a copied weight."""
        holders = (self.copies.get(p, p) for p in params)
        return [h.grad for h in holders if h.grad is not None]

    def grad_norm(self, params) -> torch.Tensor:
        """The global 2-norm of ``params``' gradients, the bf16 ones' squares summed in fp32."""
        grads = self.gradients(params)
        low = [g for g in grads if g.dtype == torch.bfloat16]
        rest = [g for g in grads if g.dtype != torch.bfloat16]
        total = torch.nn.utils.get_total_norm(rest, 2.0).float().square() if rest else torch.zeros(())
        for g in low:
            total = total + self._squares(g.reshape(-1))
        return total.sqrt()

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)      # the weights without copies hold their own gradients
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and bool(found_inf):        # a CPU reads it for free: skip, as fused AdamW does
            return loss
        scale = getattr(self, "grad_scale", None)
        inv_scale = torch.ones(()) if scale is None else 1.0 / scale.float()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = float(group["lr"])
            decay = torch.tensor(1.0 - lr * group["weight_decay"])
            b1, b2, eps = torch.tensor(beta1), torch.tensor(beta2), torch.tensor(group["eps"])
            corrections = {}        # by step count: every weight of a group has the same one in practice
            for p in group["params"]:
                copy = self.copies.get(p)
                if copy is None or copy.grad is None:
                    continue
                state = self.state[p]
                if not state:       # AdamW's own state, so a checkpoint resumes either way
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"].item()
                if step not in corrections:     # AdamW's step size and second-moment correction
                    corrections[step] = (torch.tensor(lr / (1 - beta1 ** step)), torch.tensor((1 - beta2 ** step) ** -0.5))
                step_size, inv_bc2_sqrt = corrections[step]
                self._update(p.detach().view(-1), copy.grad.reshape(-1), state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1),
                             copy.detach().view(-1), decay, b1, b2, step_size, inv_bc2_sqrt, eps, inv_scale)
                self._versions[p] = p._version
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for copy in self.copies.values():
            copy.grad = None
