"""Which settings a checkpoint records (its ``settings.json``) and how a resume compares them with its own."""
from __future__ import annotations

from ..outputs import recorded_spec
from .schedule_resume import SCHEDULE_SETTINGS

# Settings a checkpoint's weights depend on: resuming with others would load the wrong tensors (clip
# skip sets which text-encoder layers train, and what the trained weights were conditioned on).
SHAPE_SETTINGS = ("model", "method", "rank", "train_text_encoder", "clip_skip")
SETTINGS_BEFORE = {"clip_skip": 1}     # what a checkpoint written before a setting existed had
# Settings an exact resume needs too: with others the run goes on, but not as the uninterrupted run
# would have (the photos, the data stream's order and crops, the noise, the steps' sizes); a resume says so.
EXACT_SETTINGS = ("instance_dir", "instance_prompt", "class_prompt", "resolution", "seed", "batch_size",
                  "gradient_accumulation", "learning_rate", "lr_scheduler", "center_crop", "random_flip",
                  "prior_loss_weight", "mixed_precision")
# and what a LoRA run's checkpoint needs to load as a LoRA on its own (generation/loras.checkpoint_lora)
RECORDED_SETTINGS = SHAPE_SETTINGS + EXACT_SETTINGS + SCHEDULE_SETTINGS + ("alpha",)    # a checkpoint's settings.json
# recorded where they are (``outputs.recorded_spec``): the same folder however it was typed, from any folder
PATH_SETTINGS = ("model", "instance_dir")


def same_setting(key: str, was, now) -> bool:
    """A checkpoint's setting and this run's: a folder is the same folder however it was typed (a
    relative path recorded by a checkpoint of an earlier version: as seen from here)."""
    if key in PATH_SETTINGS:
        was, now = recorded_spec(was), recorded_spec(now)
    return str(was) == str(now)


def recorded_settings(config) -> dict:
    """What a checkpoint of a run with ``config`` records."""
    return {k: recorded_spec(getattr(config, k)) if k in PATH_SETTINGS else getattr(config, k) for k in RECORDED_SETTINGS}
