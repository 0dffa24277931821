"""Whole weights and optimizer state under sharded training (FSDP2, started with ``accelerate launch``
and an FSDP config: docs/multi-gpu.md), and the same calls, doing nothing special, without it.

Under FSDP each process holds a shard of every trained weight, of its gradient and of its AdamW
state. Checkpoints and the output hold whole fp32 tensors, as without sharding; the optimizer state
is stored by weight name rather than by number, and each kind resumes under the other. Gathering is
collective: every process calls these functions, and only the first gets the tensors (the others
get empty dicts). Without sharding they read the modules as they are.
"""
from __future__ import annotations

import torch

from .trainables import AUTOCAST

OPTIONS = dict(full_state_dict=True, cpu_offload=True)     # whole tensors, on the first process's CPU


def is_sharded(accelerator) -> bool:
    return bool(getattr(accelerator, "is_fsdp2", False))


def fsdp_plugin(cfg, asked: bool):
    """accelerate's FSDP settings (the rest from the launch's config) when launched with FSDP, else
    None. Under --mixed-precision the weights are gathered and used in bf16/fp16 and the gradients
    reduced in fp32, as DDP reduces its gradients (accelerate's default reduces in low precision, which
    loses more as processes add up). On the toy model in bf16, FSDP's weights after 8 steps were as
    far from DDP's (8e-4) as DDP's own were from an fp32 run's (1.1e-3)."""
    if not asked:
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin
    low = AUTOCAST.get(cfg.mixed_precision)
    policy = {"param_dtype": low, "reduce_dtype": torch.float32} if low is not None else None
    return FullyShardedDataParallelPlugin(mixed_precision_policy=policy)


def shard_count(accelerator, asked: bool, warn) -> int:
    """Into how many shards the trained weights go (1: not sharded). accelerate takes an FSDP config
    (``asked``) on GPUs only: elsewhere it runs DDP, which the user is told."""
    if is_sharded(accelerator):
        return accelerator.num_processes
    if asked:
        warn(f"accelerate launch with FSDP: accelerate shards on GPUs only, so on {accelerator.device.type} "
             "this run is not sharded (every process holds every weight, as with --multi_gpu)")
    return 1


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)     # accelerate's wrapper holds torch's optimizer


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a (possibly sharded) tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def whole_weights(models: dict[str, torch.nn.Module], sharded: bool) -> dict[str, torch.Tensor]:
    """Every trainable weight, fp32 on the CPU, keyed ``component.name`` (``unet.conv_in.weight``)."""
    out = {}
    for name, model in models.items():
        trainable = [key for key, p in model.named_parameters() if p.requires_grad]
        if sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            state = get_model_state_dict(model, options=StateDictOptions(**OPTIONS))
        else:
            state = dict(model.named_parameters())
        out.update({f"{name}.{key}": state[key].detach().to("cpu").contiguous() for key in trainable if key in state})
    return out


def whole_optimizer_state(models: dict[str, torch.nn.Module], optimizer, sharded: bool) -> dict:
    """The optimizer's state_dict: torch's own (weights numbered in the optimizer's order), or under
    FSDP its whole state keyed by weight name (``unet.conv_in.weight``)."""
    if not sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(torch.nn.ModuleDict(models), _inner(optimizer), options=StateDictOptions(**OPTIONS))


def load_optimizer_state(models: dict[str, torch.nn.Module], optimizer, read, sharded: bool, first: bool) -> None:
    """Load what ``read()`` returns, either kind of ``whole_optimizer_state`` (a DDP run's checkpoint
    resumes under FSDP, and the other way round). Under FSDP only the first process (``first``) reads
    it, and torch sends each tensor on to the others, which keep their shards; a failure to read is
    raised in every process alike."""
    if not sharded:
        state = read()
        if not _by_name(state):
            return optimizer.load_state_dict(state)
        return optimizer.load_state_dict(_renumbered(state, {n: i for i, n in enumerate(_names_in_order(models, optimizer))}))
    from accelerate.utils import broadcast_object_list
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    state, failed = {}, [None]
    if first:
        try:
            state = read()
            if not _by_name(state):
                state = _renumbered(state, dict(enumerate(_names_in_order(models, optimizer))))
        except Exception as exc:
            failed = [exc]
    broadcast_object_list(failed)
    if failed[0] is not None:
        raise failed[0]
    set_optimizer_state_dict(torch.nn.ModuleDict(models), _inner(optimizer), optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _by_name(state: dict) -> bool:
    """Whether a saved optimizer state keys its weights by name (under FSDP) or by number."""
    return any(isinstance(key, str) for group in state.get("param_groups", ()) for key in group["params"])


def _names_in_order(models: dict[str, torch.nn.Module], optimizer) -> list[str]:
    """The name of each weight in the order torch's optimizer state_dict numbers them."""
    name_of = {id(p): name for name, p in torch.nn.ModuleDict(models).named_parameters()}
    return [name_of.get(id(p), "") for group in _inner(optimizer).param_groups for p in group["params"]]


def _renumbered(state: dict, key: dict) -> dict:
    """``state`` with each weight's key (number or name) replaced by ``key[old]``."""
    try:
        return {"state": {key[k]: v for k, v in state["state"].items()},
                "param_groups": [{**g, "params": [key[k] for k in g["params"]]} for g in state["param_groups"]]}
    except KeyError as exc:
        raise ValueError(f"weight {exc} is not trained in this run") from None


def copy_whole(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    """Set ``param`` from the whole tensor ``value`` (every process has it): its shard under FSDP."""
    value = value.to(local(param).device, param.dtype)
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor
        value = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
    with torch.no_grad():
        param.copy_(value)


def first_nonfinite(models: dict[str, torch.nn.Module], sharded: bool) -> str | None:
    """The first trainable weight holding a NaN or an infinity (``unet.conv_in.weight``), or None;
    under FSDP over every process's shard, so that all processes agree."""
    bad = next((f"{name}.{key}" for name, model in models.items() for key, p in model.named_parameters()
                if p.requires_grad and not torch.isfinite(local(p)).all()), None)
    if sharded:
        from accelerate.utils import gather_object
        bad = next((b for b in gather_object([bad]) if b is not None), None)
    return bad


def share(models: dict[str, torch.nn.Module], accelerator) -> str:
    """What this process holds of the trained weights (their gradients and AdamW state alike)."""
    params = [p for model in models.values() for p in model.parameters() if p.requires_grad]
    held, total = sum(local(p).numel() for p in params), sum(p.numel() for p in params)
    return (f"FSDP: process {accelerator.process_index} of {accelerator.num_processes} holds {held:,} of the "
            f"{total:,} trained weights, and their gradients and AdamW state")
