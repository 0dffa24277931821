"""Writing a training run's output: the output folder's guard, the weights in the formats users'
tools load (a diffusers LoRA and a kohya/A1111 LoRA file, or a diffusers pipeline folder and
optionally one single-file checkpoint), ``training_args.json``, and ``--keep-best``. ``run`` is the
trainer (``trainer.Trainer``): its weights, family and counts."""
from __future__ import annotations

import datetime
import shutil
import time
from pathlib import Path

import torch

from .. import progress
from ..models.identifier import merged as merged_identifier
from ..models.loading import load_pipeline
from ..models.lora import kohya_metadata, modelspec_metadata, save_diffusers_lora, save_kohya_lora
from ..models.registry import remember_output
from ..models.single_file import export_single_file
from ..outputs import TRAINING_ARGS_FILE, as_user_file, named_weights_file, recorded_spec
from .config import save_config
from .sharding import is_sharded, whole_weights
from .trainables import move

SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def model_name(spec: str) -> str:
    """A local model by its file or folder name alone, as kohya records it (a shared LoRA file carries no
    path of the machine it was trained on); a hub id as it is."""
    return Path(spec).expanduser().name if spec != "toy" and Path(spec).expanduser().exists() else spec


def kohya_training_metadata(run, directory: Path) -> dict[str, str]:
    cfg = run.config
    date = datetime.datetime.fromtimestamp(int(run.started_at)).isoformat()
    return modelspec_metadata(run.family.name, run.prediction_type, directory.name, cfg.resolution, date,
                              cfg.instance_prompt) | kohya_metadata(run.family.name, cfg.rank, cfg.alpha, run.prediction_type, {
        "ss_output_name": directory.name, "ss_sd_model_name": model_name(cfg.model), "ss_resolution": f"({cfg.resolution}, {cfg.resolution})",
        "ss_training_started_at": run.started_at, "ss_training_finished_at": time.time(),
        "ss_learning_rate": cfg.learning_rate, "ss_unet_lr": cfg.learning_rate,
        "ss_text_encoder_lr": (cfg.text_encoder_lr or cfg.learning_rate) if cfg.train_text_encoder else 0,
        "ss_num_train_images": run.instance_images, "ss_num_reg_images": run.class_images,
        "ss_max_train_steps": cfg.max_steps, "ss_steps": run.step, "ss_batch_size_per_device": cfg.batch_size,
        "ss_gradient_accumulation_steps": cfg.gradient_accumulation, "ss_lr_scheduler": cfg.lr_scheduler,
        "ss_lr_warmup_steps": cfg.lr_warmup_steps, "ss_mixed_precision": cfg.mixed_precision,
        "ss_seed": cfg.seed, "ss_network_dropout": cfg.lora_dropout, "ss_noise_offset": cfg.offset_noise,
        "ss_min_snr_gamma": cfg.snr_gamma, "ss_max_grad_norm": cfg.max_grad_norm,
        "ss_caption_dropout_rate": cfg.caption_dropout, "ss_prior_loss_weight": cfg.prior_loss_weight,
        "ss_clip_skip": cfg.clip_skip,
        "ss_gradient_checkpointing": cfg.gradient_checkpointing, "ss_cache_latents": cfg.cache_latents,
        "ss_optimizer": "bitsandbytes.optim.AdamW8bit" if cfg.use_8bit_adam else "torch.optim.AdamW",
        "ss_training_comment": f"dreambooth {cfg.method}: {cfg.instance_prompt}",
    })


def save_model(run, directory: Path) -> list[Path]:
    """Write the current weights in the output format (a LoRA file, or a pipeline folder). Under
    FSDP every process calls it: the weights are checked and gathered whole (``sharding.whole_weights``)
    by all of them, and the first writes (the others get [])."""
    run.assert_finite()
    weights = None
    if is_sharded(run.accelerator):
        weights = whole_weights(run.trainables, sharded=True)
        if not run.accelerator.is_main_process:
            return []
    directory.mkdir(parents=True, exist_ok=True)
    cfg = run.config
    if cfg.method == "lora":
        files = [save_diffusers_lora(type(run.pipe), directory, run.trainables)]
        if cfg.export_kohya:
            files.append(save_kohya_lora(named_weights_file(directory, "lora"), run.trainables, run.family.name,
                                         kohya_training_metadata(run, directory), SAVE_DTYPES[cfg.save_precision]))
        return files
    return _save_full(run, directory, weights)


def _save_full(run, directory: Path, weights: dict[str, torch.Tensor] | None) -> list[Path]:
    cfg = run.config
    dtype = SAVE_DTYPES[cfg.save_precision]
    # Frozen parts are reloaded from the base so low-precision training copies never leak into the output;
    # gathered weights go into the base's own modules (the trained ones hold shards). The trained
    # modules themselves are never cast: --keep-best saves mid-run, and the run goes on with them.
    with merged_identifier(run.family.text_encoders):   # a plain embedding matrix in the output
        trained = {name: saving_copy(model, dtype) for name, model in run.trainables.items()} if weights is None else {}
        base = load_pipeline(cfg.model, vae=cfg.vae, model_config=cfg.model_config, components=trained)
        for name in run.trainables if weights is not None else ():
            getattr(base, name).load_state_dict(
                {key.partition(".")[2]: v for key, v in weights.items() if key.partition(".")[0] == name}, strict=True)
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            if getattr(base, name, None) is not None:
                move(getattr(base, name), "cpu", dtype)
        base.save_pretrained(directory, safe_serialization=True)
    as_user_file(directory)
    files = [directory / "model_index.json"]
    if cfg.export_single_file:
        files.append(export_single_file(directory, named_weights_file(directory), run.family.name, dtype=dtype))
    return files


def saving_copy(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module``'s architecture holding its weights on the CPU in ``dtype``, for writing; ``module`` is
    left as it is. Built on the meta device, so it holds nothing but the cast weights (none at all
    where they already are CPU tensors of ``dtype``: those are shared)."""
    from diffusers import ModelMixin
    with torch.device("meta"):
        copy = type(module).from_config(module.config) if isinstance(module, ModelMixin) else type(module)(module.config)
    weights = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype) for k, v in module.state_dict().items()}
    copy.load_state_dict(weights, strict=True, assign=True)
    for name, buffer in module.named_buffers():     # those not in the state dict (non-persistent) too
        owner, _, leaf = name.rpartition(".")
        if copy.get_buffer(name).is_meta:
            copy.get_submodule(owner)._buffers[leaf] = buffer.detach().to("cpu")
    return copy.eval()


def keep_best(output: Path, best: Path | None) -> None:
    """Put the weights validation kept (``--keep-best``, in ``best``) in place of the final ones."""
    if best is None:
        return
    for entry in best.iterdir():
        name = named_weights_file(output).name if entry.name == named_weights_file(best).name else entry.name
        target = output / name
        if target.is_dir():
            shutil.rmtree(target)
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target)
    progress.message(f"--keep-best: the output holds the weights kept in {best}")


def save_output(run) -> list[Path]:
    """The run's output: the weights, ``training_args.json``; remembered as a training output."""
    if not (run.accelerator.is_main_process or is_sharded(run.accelerator)):
        return []
    with progress.task("saving", 1) as bar:        # a phase of the run's time (phases.py)
        files = save_model(run, run.output)      # under FSDP every process takes part in gathering
        bar.advance()
    if not run.accelerator.is_main_process:
        return []
    args = run.output / TRAINING_ARGS_FILE
    import diffusers
    # paths absolute ('~' for the home folder): a LoRA output is a --model from any folder
    # (specs.lora_output_base), and the record is a --config from any folder
    local = {key: recorded_spec(getattr(run.config, key)) for key in ("model", "vae", "model_config", "instance_dir",
                                                                     "class_dir", "output", "dino_model", "clip_model")}
    save_config(run.config.replace(**local), args, {
        "family": run.family.name, "prediction_type": run.prediction_type, "steps_done": run.step,
        "instance_images": run.instance_images, "class_images": run.class_images,
        "num_processes": run.accelerator.num_processes,
        "global_batch_size": run.config.batch_size * run.accelerator.num_processes,
        "losses": run.losses,          # per optimizer step, the global batch's (the mean over processes)
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    })
    remember_output(run.output, run.config.method)
    return files + [args]
