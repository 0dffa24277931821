"""The flags of diffusers' DreamBooth scripts and kohya's sd-scripts that users type out of habit, with
what ``dreambooth train`` calls them (docs/training.md has the whole table). Where one is not
ours, an unknown-option error names ours instead of a near spelling."""
from __future__ import annotations

PEER_FLAGS = {
    # diffusers' train_dreambooth*.py
    "pretrained_model_name_or_path": "--model", "pretrained_vae_model_name_or_path": "--vae",
    "instance_data_dir": "--instance-dir", "class_data_dir": "--class-dir", "output_dir": "--output",
    "with_prior_preservation": "--prior-preservation", "train_batch_size": "--batch-size",
    "max_train_steps": "--max-steps", "gradient_accumulation_steps": "--gradient-accumulation",
    "checkpointing_steps": "--checkpoint-every", "checkpoints_total_limit": "--keep-checkpoints",
    "resume_from_checkpoint": "--resume", "validation_prompt": "--validation-prompts",
    "validation_steps": "--validate-every", "adam_weight_decay": "--weight-decay",
    "enable_xformers_memory_efficient_attention": "nothing (attention is always PyTorch's fused SDPA)",
    "train_text_encoder_ti": "--identifier-lr (the full method)",
    # kohya's sd-scripts
    "network_dim": "--rank", "network_alpha": "--alpha", "network_module": "--method lora",
    "train_data_dir": "--instance-dir (the folder of photos itself)", "reg_data_dir": "--class-dir",
    "output_name": "nothing (the --output folder's name names the files)", "max_train_epochs": "--max-steps",
    "save_every_n_steps": "--checkpoint-every", "save_state": "--checkpoint-every N",
    "unet_lr": "--learning-rate", "optimizer_type": "--use-8bit-adam (AdamW otherwise)",
    "xformers": "nothing (attention is always PyTorch's fused SDPA)", "sdpa": "nothing (always on)",
    "cache_latents": "--cache-latents",
}


def peer_hint(option: str) -> str | None:
    """``"; dreambooth train calls it --rank"`` for kohya's ``--network_dim`` (or ``--network-dim``)."""
    ours = PEER_FLAGS.get(option.lstrip("-").replace("-", "_"))
    return f"; dreambooth train calls it {ours}" if ours else None
