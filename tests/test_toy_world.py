"""The toy world: exact, reproducible rendering, its captions, the oracle that reads pictures back,
and the toy tokenizer's rare tokens. Fast: no model is run."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from dreambooth.toy import oracle, world
from dreambooth.toy.world import COLOURS, PALETTE, PATTERNS, SHAPES, Subject

CAPTION_RE = re.compile(r"^a (\w+) (\w+) on a (\w+) background$")


def test_palette_and_shapes_are_the_issues():
    assert PALETTE == {
        "red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
        "purple": (140, 40, 180), "orange": (250, 140, 20), "white": (245, 245, 245), "black": (15, 15, 15),
    }
    assert set(SHAPES) == {"circle", "square", "triangle", "cross"}


def test_renderer_is_deterministic():
    a, ca, _ = world.sample_batch(seed=7, n=20)
    b, cb, _ = world.sample_batch(seed=7, n=20)
    c, _, _ = world.sample_batch(seed=8, n=20)
    assert a.shape == (20, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and ca == cb
    assert not np.array_equal(a, c)


def test_pixels_are_exact_palette_colours():
    images, _, scenes = world.sample_batch(seed=1, n=50)
    for img, scene in zip(images, scenes):
        colours = {tuple(int(v) for v in px) for px in img.reshape(-1, 3)}
        assert colours == {PALETTE[scene.background], PALETTE[scene.colour]}
        assert scene.background != scene.colour


def test_size_and_position_ranges():
    rng = np.random.default_rng(3)
    for _ in range(300):
        s = world.sample_scene(rng)
        assert 0.25 * 32 <= s.half <= 0.38 * 32
        assert s.half <= s.cx <= 32 - s.half and s.half <= s.cy <= 32 - s.half
        mask = world.shape_mask(s.shape, s.cx, s.cy, s.half)
        ys, xs = np.nonzero(mask)
        # the shape spans about twice its half-width and fits inside the picture
        assert 2 * s.half - 2 <= xs.max() - xs.min() + 1 <= 2 * s.half + 1
        assert 2 * s.half - 2 <= ys.max() - ys.min() + 1 <= 2 * s.half + 1


def test_triangle_points_up_and_cross_is_a_plus():
    tri = world.shape_mask("triangle", 16, 16, 10)
    assert tri[8].sum() < tri[24].sum()         # narrow top, wide base
    cross = world.shape_mask("cross", 16, 16, 10)
    assert cross[16, 7] and cross[7, 16] and not cross[8, 8]


def test_captions_format_and_dropout():
    rng = np.random.default_rng(0)
    captions = [world.sample_caption(rng, world.sample_scene(rng)) for _ in range(4000)]
    empty = sum(c == "" for c in captions) / len(captions)
    assert 0.08 <= empty <= 0.12
    for c in captions:
        if c:
            m = CAPTION_RE.match(c)
            assert m, c
            assert m.group(1) in COLOURS and m.group(2) in SHAPES and m.group(3) in COLOURS
            assert m.group(1) != m.group(3)
    scene = world.Scene("square", "red", "blue", 16, 16, 10)
    assert scene.caption() == "a red square on a blue background"
    assert len(world.all_prompts()) == 8 * 4 * 7


def test_pretraining_swaps_a_share_of_full_captions_for_partial_ones():
    import torch

    from dreambooth.toy.pretrain import CAPTIONS, EMPTY, partial_table, swap_partial
    texts, index = partial_table()
    g = torch.Generator().manual_seed(0)
    cap = torch.randint(len(CAPTIONS), (3000,), generator=g)
    cap[::10] = EMPTY                                # dropped captions stay dropped
    out = swap_partial(cap, 0.3, index, g)
    assert (out[::10] == EMPTY).all()
    swapped = out != cap
    assert 0.26 <= swapped.float().mean() / 0.9 <= 0.34
    for row, new in zip(cap[swapped].tolist(), out[swapped].tolist()):
        colour, shape, background = CAPTION_RE.match(CAPTIONS[row]).groups()
        assert texts[new - EMPTY - 1] in {f"a {colour} {shape}", f"a {shape}",
                                          f"a {shape} on a {background} background"}
    forms = torch.bincount((index[cap[swapped]] == out[swapped, None]).float().argmax(1), minlength=3)
    assert forms.min() >= 0.8 * forms.float().mean()  # the three forms equally likely
    assert world.caption(None, "cross", None) == "a cross"


def test_pretraining_partial_table_matches_its_full_caption():
    from dreambooth.toy.pretrain import CAPTIONS, EMPTY, partial_table
    texts, index = partial_table()
    assert index.shape == (len(CAPTIONS), len(world.PARTIAL_FORMS))
    assert len(set(texts)) == len(texts) == 8 * 4 + 4 * 8 + 4
    for full, rows in zip(CAPTIONS, index.tolist()):
        colour, shape, background = CAPTION_RE.match(full).groups()
        assert [texts[r - EMPTY - 1] for r in rows] == [
            f"a {colour} {shape}", f"a {shape} on a {background} background", f"a {shape}"]


def test_pretraining_learning_rate_warms_up_holds_then_decays_to_its_floor():
    from dreambooth.toy.pretrain import _lr_factor
    # UNet phase with --decay-from 4400 --steps 7200: warm-up, constant, cosine to 5%
    assert _lr_factor(0, 300, 4400, 7200, 0.05) == pytest.approx(1 / 300)
    assert _lr_factor(299, 300, 4400, 7200, 0.05) == _lr_factor(4400, 300, 4400, 7200, 0.05) == 1.0
    assert _lr_factor(5800, 300, 4400, 7200, 0.05) == pytest.approx(0.525)   # half-way
    assert _lr_factor(7199, 300, 4400, 7200, 0.05) == pytest.approx(0.05, abs=1e-5)
    assert _lr_factor(9000, 300, 4400, 7200, 0.05) == 0.05                  # resumed past the end
    decay = [_lr_factor(s, 300, 4400, 7200, 0.05) for s in range(4400, 7200)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    # decay_from == steps (the default, off): constant after warm-up
    assert {_lr_factor(s, 300, 20_000, 20_000, 0.05) for s in range(300, 20_000, 97)} == {1.0}
    # VAE phases: 50-step warm-up, then a cosine over all steps to 10%
    assert _lr_factor(49, 50, 0, 500, 0.1) == pytest.approx(1 - 0.9 * (1 - math.cos(math.pi * 49 / 500)) / 2)
    assert _lr_factor(250, 50, 0, 500, 0.1) == pytest.approx(0.55)


def test_oracle_reads_solid_shapes():
    rng = np.random.default_rng(11)
    for _ in range(200):
        s = world.sample_scene(rng)
        r = oracle.read(world.render(s))
        assert (r.background, r.colour, r.shape) == (s.background, s.colour, s.shape)
        assert r.pattern < 0.05 and not r.patterned and r.second is None


@pytest.mark.parametrize("pattern", PATTERNS)
def test_oracle_reads_patterned_subjects(pattern):
    rng = np.random.default_rng(5)
    subject = Subject("circle", "yellow", pattern, "black")
    for bg in ("red", "blue", "green", "white"):
        s = subject.scene(bg, rng)
        r = oracle.read(world.render(s))
        assert r.background == bg
        assert {r.colour, r.second} == {"yellow", "black"}
        assert r.patterned
        if pattern in ("stripes", "checker"):
            assert 0.4 <= r.pattern <= 0.5


@pytest.mark.parametrize("shape", SHAPES)
def test_every_subject_reads_as_patterned(shape):
    """Every colour pair and pattern on this shape, at a random size and place: the oracle sees both
    colours and the pattern (the smallest cross with dots included)."""
    rng = np.random.default_rng(3)
    for pattern in PATTERNS:
        for colour in COLOURS:
            for second in COLOURS:
                if second == colour:
                    continue
                free = [c for c in COLOURS if c not in (colour, second)]
                s = Subject(shape, colour, pattern, second).scene(free[rng.integers(len(free))], rng)
                r = oracle.read(world.render(s))
                assert r.patterned and {r.colour, r.second} == {colour, second}, (s, r)


def test_a_blob_or_a_blend_is_not_a_pattern():
    """What a decoder draws when it is unsure -- one off-colour patch, or a noisy shape in a colour
    halfway between two palette colours -- is not a two-colour pattern."""
    rng = np.random.default_rng(4)
    s = world.Scene("square", "green", "blue", 16.0, 16.0, 11.0)
    blob = world.render(s)
    blob[10:18, 10:18] = PALETTE["white"]                      # one big patch: a quarter of the square
    assert oracle.read(blob).pattern == 0.0
    blend = world.render(s).astype(np.float32)
    inside = world.shape_mask("square", 16.0, 16.0, 11.0)
    blend[inside] = (np.array(PALETTE["green"]) + np.array(PALETTE["white"])) / 2   # a cyan-ish square
    blend[inside] += rng.normal(0, 20, (int(inside.sum()), 3))
    assert not oracle.read(blend.astype(np.uint8)).patterned


def test_oracle_tolerates_generated_looking_pictures():
    """Blurred edges and pixel noise, as a decoder produces, do not change the reading."""
    rng = np.random.default_rng(2)
    for _ in range(50):
        s = world.sample_scene(rng)
        img = world.render(s).astype(np.float32)
        blurred = img.copy()
        blurred[1:-1, 1:-1] = (img[1:-1, 1:-1] * 4 + img[:-2, 1:-1] + img[2:, 1:-1] + img[1:-1, :-2]
                               + img[1:-1, 2:]) / 8
        noisy = np.clip(blurred + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        r = oracle.read(noisy)
        assert (r.background, r.colour) == (s.background, s.colour)
        assert r.pattern < oracle.PATTERN_THRESHOLD


def test_oracle_accepts_pil_and_float_arrays():
    s = world.Scene("cross", "green", "white", 15.0, 17.0, 11.0)
    img = world.render(s)
    assert oracle.read(world.render_pil(s)) == oracle.read(img) == oracle.read(img / 255.0)


def test_rare_tokens_are_single_tokens_absent_from_captions(tmp_path):
    from dreambooth.toy.architecture import CAPTION_WORDS, RARE_TOKENS, build_tokenizer
    tok = build_tokenizer(tmp_path)
    assert "sks" in RARE_TOKENS and len(RARE_TOKENS) >= 4
    caption_ids = set()
    for c, s, b in world.all_prompts():
        caption_ids.update(tok(world.caption(c, s, b), add_special_tokens=False).input_ids)
    for word in CAPTION_WORDS:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    for word in RARE_TOKENS:
        ids = tok(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, word
        assert ids[0] not in caption_ids
        assert word not in {w for c in world.all_prompts() for w in world.caption(*c).split()}
