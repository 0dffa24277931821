"""A run's pictures: the class images found or made, the stream of batches drawn from them and the
photos, and the fingerprints a checkpoint records of both (a resume compares them)."""
from __future__ import annotations

from .. import progress
from ..parking import Parking
from .data import ExampleStream, load_examples
from .prior import class_folder, class_params, ensure_class_images
from .resume_settings import photo_fingerprints


def prepare_data(run, cfg, instance: list) -> None:
    """Set ``run.stream``, ``run.photos`` (the fingerprints) and the counts of photos and class images."""
    for transform in run.transforms:
        transform.prepare(instance, progress.message)
    prior, acc = [], run.accelerator
    if cfg.prior_preservation:
        class_dir = class_folder(cfg)
        pipeline = run.generation_pipeline(for_output=False)
        pipeline.parking = Parking(run.device, run.memory.class_parking)    # parts take turns (preflight)
        ensure_class_images(pipeline, class_params(cfg), class_dir, cfg.num_class_images, run.autocast_dtype, (
            acc.process_index, acc.num_processes), acc.wait_for_everyone, cfg.class_batch_size, run.pause_point,
            warn=run.warn)
        pipeline.parking.release()
        prior = load_examples(class_dir, cfg.class_prompt, cfg.resolution, flag="--class-dir",
                              warn=run.warn)[:cfg.num_class_images]    # a folder may hold more: the first
    run.class_images, run.instance_images = len(prior), len(instance)
    run.photos = photo_fingerprints(instance, prior, cfg.captions)     # once: every checkpoint records them
    progress.message(f"training on {len(instance)} photo(s)" + (f" and {len(prior)} class image(s)" if prior else ""))
    run.stream = ExampleStream(instance, prior, cfg.batch_size, cfg.resolution, cfg.center_crop, cfg.random_flip,
                               cfg.seed, cfg.caption_dropout, run.transforms, (acc.process_index, acc.num_processes),
                               run.warn)
