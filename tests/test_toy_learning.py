"""DreamBooth really learns: a short run on the shipped toy model teaches it a subject it cannot draw,
and prior preservation keeps the subject out of the class prompt.

The subject is a green square with a white checker, pictured on red and blue; the oracle reads every
sample of "a sks square on a {purple, orange, black, yellow} background" and of "a square". Before
training the base never draws the subject; after a short full run (the toy defaults but 500 steps and
no backdrop transform, through ``dreambooth.training.train``) it does on many samples of those new backgrounds. Without prior
preservation the class prompt is pulled toward the subject (its pattern in its colours); with it,
less. About 5 CPU minutes.
"""
from __future__ import annotations

import pytest

from dreambooth.models import TOY_MODEL_DIR

pytestmark = pytest.mark.skipif(not (TOY_MODEL_DIR / "model_index.json").exists(),
                                reason="the toy model's weights are not in this checkout")

SUBJECT = ("square", "green", "checker", "white")
INSTANCE_BACKGROUNDS = ("red", "blue", "red", "blue", "red")
NEW_BACKGROUNDS = ("purple", "orange", "black", "yellow")
SEEDS = (0, 1, 2, 3, 4, 5)
CLASS_SEEDS = tuple(range(24))   # the class prompt's drift is a small share: more samples
STEPS = 500


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch

    from dreambooth.models import load_pipeline
    from dreambooth.toy import demo
    from dreambooth.toy.world import Subject
    from dreambooth.training.trainer import train

    subject = Subject(*SUBJECT)
    root = tmp_path_factory.mktemp("toy-learning")
    instance_dir = root / "instance"
    demo.write_instance_images(subject, instance_dir, INSTANCE_BACKGROUNDS)
    prompts = [demo.context_prompt(subject, bg) for bg in NEW_BACKGROUNDS]

    def measure(pipe):
        grid = [*demo.sample(pipe, prompts, SEEDS, fast_batches=True),      # a prompt's seeds in a batch
                *demo.sample(pipe, [demo.class_prompt(subject)], CLASS_SEEDS, fast_batches=True)]
        return demo.score(grid, subject, NEW_BACKGROUNDS)

    torch.manual_seed(0)
    scores = {"before": measure(load_pipeline("toy"))}
    for name, prior in (("prior", True), ("no_prior", False)):
        # Without the toy preset's backdrop transform: with it the subject hardly drifts into the class
        # prompt even without prior preservation (2 of 24 samples), too thin a margin to test the prior on.
        config = demo.demo_config(root / name, None, instance_dir, subject, max_steps=STEPS,
                                  prior_preservation=prior, class_dir=str(root / "class_images"))
        result = train(config, transforms=[])
        scores[name] = measure(demo.load_trained(result.output))
    print(scores)   # the figures, for the record (pytest -s)
    return scores


def test_subject_is_learned_in_new_contexts(runs):
    """The subject's pattern appears on backgrounds the instance pictures never had."""
    before, after = runs["before"], runs["prior"]
    assert before["pattern_in_context"] <= 0.2, runs
    # measured on the shipped (distilled) base, these settings: 0.04 before, 0.79 after (24 samples each)
    assert after["pattern_in_context"] >= before["pattern_in_context"] + 0.25, runs


def test_prior_preservation_keeps_the_class_prompt(runs):
    """Drift is the class prompt showing the subject's pattern in the subject's colours. (Any
    two-colour pattern is a poor measure here: the base's own "a square" reads as one in about a
    third of samples, blends of two solid colours that the strict reading still lets through.)"""
    before, prior, no_prior = runs["before"], runs["prior"], runs["no_prior"]
    assert before["class_shows_subject"] <= 0.05, runs
    assert prior["class_shows_subject"] <= 0.1, runs
    # measured on 24 seeds: 0.00 before, 0.00 with prior preservation, 0.67 without
    assert prior["class_shows_subject"] < no_prior["class_shows_subject"], runs
