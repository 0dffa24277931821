"""The settings of diffusers' DreamBooth scripts and kohya's sd-scripts that users bring out of habit,
with what ``dreambooth train`` calls them: one mapping for the command line (``cli.peer_flags``: an
unknown option names ours instead of a near spelling) and for ``--config`` files (an unknown key,
``network_dim: 8`` from a kohya config turned YAML, names ours too). docs/training.md has the tables."""
from __future__ import annotations


ATTENTION = "nothing (attention is always PyTorch's fused SDPA)"
NO_BUCKETS = "nothing (no aspect-ratio buckets: each photo trains on a square crop; docs/training.md, Data)"
NO_EMA = ("nothing (no EMA copy of the weights is kept here: the output is the last step's weights, or with "
          "--keep-best the best validation step's)")
BOTH_FORMATS = ("nothing (a LoRA run always writes both diffusers' and kohya's .safetensors; a full run a diffusers "
                "folder, and one .safetensors with --export-single-file)")

PEER_NAMES = {
    # diffusers' train_dreambooth*.py
    "pretrained_model_name_or_path": "--model", "pretrained_vae_model_name_or_path": "--vae",
    "instance_data_dir": "--instance-dir", "class_data_dir": "--class-dir", "output_dir": "--output",
    "with_prior_preservation": "--prior-preservation", "train_batch_size": "--batch-size",
    "max_train_steps": "--max-steps", "num_train_epochs": "--max-steps",
    "gradient_accumulation_steps": "--gradient-accumulation",
    "checkpointing_steps": "--checkpoint-every", "checkpoints_total_limit": "--keep-checkpoints",
    "resume_from_checkpoint": "--resume", "validation_prompt": "--validation-prompts",
    "validation_steps": "--validate-every", "num_validation_images": "--validation-seeds (one image per seed)",
    "adam_weight_decay": "--weight-decay", "sample_batch_size": "--class-batch-size",
    "enable_xformers_memory_efficient_attention": ATTENTION,
    "train_text_encoder_ti": "--identifier-lr (the full method)",
    # EMA: diffusers' train_text_to_image*.py (--use_ema and its options), and the short name
    "use_ema": NO_EMA, "ema": NO_EMA, "ema_decay": NO_EMA, "offload_ema": NO_EMA, "foreach_ema": NO_EMA,
    # kohya's sd-scripts
    "network_dim": "--rank", "network_alpha": "--alpha", "network_module": "--method lora",
    "network_dropout": "--lora-dropout", "network_train_unet_only": "nothing (the default; --train-text-encoder adds "
    "the text encoder)",
    "train_data_dir": "--instance-dir (the folder of photos itself)", "reg_data_dir": "--class-dir",
    "output_name": "nothing (the --output folder's name names the files)", "max_train_epochs": "--max-steps",
    "save_every_n_steps": "--checkpoint-every", "save_every_n_epochs": "--checkpoint-every (in steps)",
    "save_state": "--checkpoint-every N", "save_last_n_steps": "--keep-checkpoints",
    "save_model_as": BOTH_FORMATS, "unet_lr": "--learning-rate",
    "optimizer_type": "--use-8bit-adam (AdamW otherwise)", "xformers": ATTENTION, "sdpa": "nothing (always on)",
    "mem_eff_attn": ATTENTION, "cache_latents": "--cache-latents",
    "cache_latents_to_disk": "--cache-latents (kept in memory)",
    "noise_offset": "--offset-noise", "flip_aug": "--random-flip", "min_snr_gamma": "--snr-gamma",
    "caption_dropout_rate": "--caption-dropout",
    "caption_extension": "--captions (it reads NAME.txt, and kohya's NAME.caption, beside NAME.jpg)",
    "sample_every_n_steps": "--validate-every", "sample_every_n_epochs": "--validate-every (in steps)",
    "sample_prompts": "--validation-prompts", "sample_sampler": "--validation-sampler",
    "enable_bucket": NO_BUCKETS, "min_bucket_reso": NO_BUCKETS, "max_bucket_reso": NO_BUCKETS,
    "bucket_reso_steps": NO_BUCKETS, "bucket_no_upscale": NO_BUCKETS,
    "random_crop": "nothing (a random crop is the default; --center-crop for the middle)",
    "full_fp16": "--mixed-precision fp16", "full_bf16": "--mixed-precision bf16",
    "v2": "nothing (the model's family is read from it)",
    "v_parameterization": "nothing (read from the model's scheduler)",
    "no_half_vae": "--vae (an fp16-fix VAE; the VAE runs in fp32 unless it is fp16-safe)",
    "dataset_config": "--config (a YAML file of our settings: kohya's TOML is not read)",
    "config_file": "--config (a YAML file of our settings: kohya's TOML is not read)",
    "network_weights": "--resume (a checkpoint of ours)",
}


def as_setting(ours: str) -> str:
    """A flag as the key of a settings file: ``--method lora`` is ``method: lora``."""
    if not ours.startswith("--"):
        return ours
    head, _, rest = ours.partition(" ")
    key = head[2:].replace("-", "_")
    return key if not rest else f"{key} {rest}" if rest.startswith("(") else f"{key}: {rest}"


def setting_hint(name: str) -> str:
    """``"; dreambooth train calls it rank"`` for a settings file's ``network_dim`` key, or ''."""
    ours = PEER_NAMES.get(str(name).replace("-", "_"))
    return f"; dreambooth train calls it {as_setting(ours)}" if ours else ""
