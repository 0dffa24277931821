"""Which settings a checkpoint records (its ``settings.json``) and how a resume compares them with its own."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..outputs import recorded_spec
from .schedule_resume import SCHEDULE_SETTINGS

# Settings a checkpoint's weights depend on: resuming with others would load the wrong tensors (clip
# skip sets which text-encoder layers train, and what the trained weights were conditioned on; a LoRA's
# alpha scales every adapter, so another one rescales all it learned).
SHAPE_SETTINGS = ("model", "method", "rank", "train_text_encoder", "clip_skip", "alpha")
SETTINGS_BEFORE = {"clip_skip": 1}     # what a checkpoint written before a setting existed had
UNKNOWN_BEFORE = ("alpha",)            # what some older checkpoints lack, with nothing known of it: not compared
# Settings an exact resume needs too: with others the run goes on, but not as the uninterrupted run
# would have (the photos, the data stream's order and crops, the noise, the loss, the steps' sizes); a
# resume says so. What acts only on how fast or in how much memory a step runs (checkpointing, compile,
# latent caching, CUDA graphs), on what is written or validated, is not among them.
EXACT_SETTINGS = ("instance_dir", "instance_prompt", "captions", "masked_loss", "caption_dropout", "class_prompt",
                  "prior_preservation", "num_class_images", "prior_loss_weight", "resolution", "seed", "batch_size",
                  "gradient_accumulation", "learning_rate", "text_encoder_lr", "identifier_lr", "lr_scheduler",
                  "center_crop", "random_flip", "lora_dropout", "max_grad_norm", "adam_beta1", "adam_beta2",
                  "weight_decay", "adam_epsilon", "use_8bit_adam", "fused_backward_pass", "offset_noise",
                  "snr_gamma", "mixed_precision", "vae", "model_config")
# settings a run of another method (or without a trained text encoder) does not use: a change is no change
USED_WHEN = {"alpha": lambda s: s.get("method") == "lora", "lora_dropout": lambda s: s.get("method") == "lora",
             "rank": lambda s: s.get("method") == "lora",
             "text_encoder_lr": lambda s: bool(s.get("train_text_encoder")),
             "identifier_lr": lambda s: s.get("method") == "full"}
# and what a LoRA run's checkpoint needs to load as a LoRA on its own (generation/loras.checkpoint_lora)
RECORDED_SETTINGS = SHAPE_SETTINGS + EXACT_SETTINGS + SCHEDULE_SETTINGS    # a checkpoint's settings.json
# recorded where they are (``outputs.recorded_spec``): the same folder however it was typed, from any folder
PATH_SETTINGS = ("model", "instance_dir", "vae", "model_config")
PHOTOS = "photos"       # settings.json's fingerprints of the pictures trained on (``photo_fingerprints``)


def same_setting(key: str, was, now) -> bool:
    """A checkpoint's setting and this run's: a folder is the same folder however it was typed (a
    relative path recorded by a checkpoint of an earlier version: as seen from here); a number the
    same number however it was given (alpha 8 and 8.0)."""
    if key in PATH_SETTINGS:
        if _same_tail(was, now):
            return True
        was, now = recorded_spec(was), recorded_spec(now)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (was, now)):
        return float(was) == float(now)
    return str(was) == str(now)


def _same_tail(was, now) -> bool:
    """A checkpoint of an earlier version recorded a folder as typed, relative to a working folder it did
    not record: the same folder where this run's, wherever it lies, ends with those names."""
    if not isinstance(was, str) or was in ("", "toy") or was.startswith("~") or Path(was).is_absolute():
        return False
    names = tuple(p for p in Path(was).parts if p != ".")
    here = Path(str(now)).expanduser()
    return bool(names) and ".." not in names and here.exists() and here.resolve().parts[-len(names):] == names


def used(key: str, settings: dict) -> bool:
    return USED_WHEN.get(key, lambda _: True)(settings)


def refused_changes(saved: dict, settings: dict) -> list[tuple[str, object, object]]:
    """(setting, the checkpoint's, this run's) for each shape setting a resume cannot change."""
    return [(key, was, settings.get(key)) for key in SHAPE_SETTINGS
            if not (key in UNKNOWN_BEFORE and key not in saved) and used(key, settings)
            and not same_setting(key, was := saved.get(key, SETTINGS_BEFORE.get(key)), settings.get(key))]


CLASS_SETTINGS = ("class_prompt", "prior_preservation", "num_class_images")    # each said: the class images follow


def changed_settings(saved: dict, config, photos: dict | None, restarted: list[str]) -> list[str]:
    """What this run (``config``, its pictures' ``photos``) trains otherwise than the checkpoint's
    run did (``saved``), each said as 'key now (was then)'. The photos are compared by their
    fingerprints where the checkpoint has them (the folder may move, its files change in place),
    else by folder; ``restarted``: the kinds of pictures the data stream found more or fewer of."""
    settings, fingerprinted = recorded_settings(config), PHOTOS in saved and photos is not None
    keys = [key for key in EXACT_SETTINGS if key in saved and used(key, settings)
            and not (key == "instance_dir" and fingerprinted) and not same_setting(key, saved[key], getattr(config, key))]
    changed = [f"{key} {getattr(config, key)} (was {saved[key]})" for key in keys]
    for kind, stream_kind, said in (("instance", "instance", f"set of photos in --instance-dir {config.instance_dir}"),
                                    ("class", "prior", "set of class images")):     # (this run's set of ... differs)
        if kind == "class" and set(keys) & set(CLASS_SETTINGS):
            continue
        was, now = (saved.get(PHOTOS) or {}).get(kind, [0, None]), (photos or {}).get(kind, [0, None])
        if fingerprinted and was != now:
            changed.append(f"{said} ({'edited' if was[0] == now[0] else f'{now[0]}, was {was[0]}'})")
        elif not fingerprinted and stream_kind in restarted:
            changed.append(f"{said} (more or fewer)")
    return changed


def photo_fingerprints(instance: list, prior: list, captions: bool) -> dict:
    """What a checkpoint records of the pictures trained on, computed once per run: the photos by name,
    size and contents (and caption, with ``--captions``; mask, with ``--masked-loss``): few, and a photo
    edited in place counts; the class images, perhaps thousands, by name and size alone."""
    def fingerprint(examples, contents: bool) -> list:
        digest = hashlib.sha256()
        for e in sorted(examples, key=lambda e: e.path.name):
            digest.update(f"{e.path.name}\0{e.path.stat().st_size}\0".encode())
            if contents:            # (hashed as the photos were read: data.load_examples)
                digest.update(bytes.fromhex(e.digest) if e.digest else hashlib.sha256(e.path.read_bytes()).digest())
                digest.update((e.prompt if captions else "").encode() + b"\0")
                digest.update(b"" if e.mask is None else e.mask.tobytes())
        return [len(examples), digest.hexdigest()[:32]]
    return {"instance": fingerprint(instance, True), **({"class": fingerprint(prior, False)} if prior else {})}


def recorded_settings(config, photos: dict | None = None) -> dict:
    """What a checkpoint of a run with ``config`` (training on pictures of fingerprints ``photos``) records."""
    settings = {k: recorded_spec(getattr(config, k)) if k in PATH_SETTINGS else getattr(config, k)
                for k in RECORDED_SETTINGS}
    return {**settings, PHOTOS: photos} if photos is not None else settings
