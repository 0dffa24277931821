"""The WebUI prompt grammar (emphasis, editing, alternation, BREAK) and the chunked, weighted encoding."""
import pytest
import torch

from dreambooth.generation.conditioning import (CHUNK_TOKENS, PromptEncoder, apply_emphasis, chunk_ids, pad_pair,
                                                schedule_conditioning, token_count, tokenize_weighted)
from dreambooth.generation.grammar import (get_learned_conditioning_prompt_schedules, parse_prompt_attention,
                                           prompt_schedule, text_at_step)

# ---- parse_prompt_attention: the WebUI's doctest cases, verbatim ---------------------------------------------


def test_a1111_doctest_normal_text():
    assert parse_prompt_attention('normal text') == [['normal text', 1.0]]


def test_a1111_doctest_important_word():
    assert parse_prompt_attention('an (important) word') == [['an ', 1.0], ['important', 1.1], [' word', 1.0]]


def test_a1111_doctest_unbalanced():
    assert parse_prompt_attention('(unbalanced') == [['unbalanced', 1.1]]


def test_a1111_doctest_literal():
    assert parse_prompt_attention('\\(literal\\]') == [['(literal]', 1.0]]


def test_a1111_doctest_unnecessary_parens():
    assert parse_prompt_attention('(unnecessary)(parens)') == [['unnecessaryparens', 1.1]]


def test_a1111_doctest_house_float_weights():
    assert parse_prompt_attention('a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).') == [
        ['a ', 1.0],
        ['house', 1.5730000000000004],
        [' ', 1.1],
        ['on', 1.0],
        [' a ', 1.1],
        ['hill', 0.55],
        [', sun, ', 1.1],
        ['sky', 1.4641000000000006],
        ['.', 1.1]]


# ---- more cases, worked out from the WebUI's rules --------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("", [["", 1.0]]),
    ("[de-emphasis]", [["de-emphasis", 1 / 1.1]]),
    ("[[twice]]", [["twice", 1 / 1.1 / 1.1]]),
    ("((twice))", [["twice", 1.1 * 1.1]]),
    ("(weighted:1.5) plain", [["weighted", 1.5], [" plain", 1.0]]),
    ("(spaces: 1.5 )", [["spaces", 1.5]]),
    ("(neg:-1)", [["neg", -1.0]]),
    ("(a (b:2) c)", [["a ", 1.1], ["b", 2.2], [" c", 1.1]]),
    ("unmatched) and ]", [["unmatched) and ]", 1.0]]),
    ("[open (both", [["open ", 1 / 1.1], ["both", 1.1 * (1 / 1.1)]]),
    ("a:b (c:d)", [["a:b ", 1.0], ["c:d", 1.1]]),
    ("ratio 1:2", [["ratio 1:2", 1.0]]),
    ("stray :1.5) colon", [["stray :1.5) colon", 1.0]]),
    ("\\\\ backslash \\x", [["\\ backslash x", 1.0]]),
    ("(dog:1.0)", [["dog", 1.0]]),
    ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("BREAK", [["", 1.0], ["BREAK", -1], ["", 1.0]]),
    ("a BREAKING news", [["a BREAKING news", 1.0]]),
    ("(a BREAK b)", [["a", 1.1], ["BREAK", -1.1], ["b", 1.1]]),
])
def test_attention_cases(text, expected):
    assert parse_prompt_attention(text) == expected


def test_attention_weight_one_is_plain_text():
    assert parse_prompt_attention("a (dog:1.0) in snow") == parse_prompt_attention("a dog in snow")


# ---- prompt editing and alternation: the WebUI's doctest cases for its schedules ---------------------------------

SCHEDULE_CASES = [
    ("test", [[10, 'test']]),
    ("a [b:3]", [[3, 'a '], [10, 'a b']]),
    ("a [b: 3]", [[3, 'a '], [10, 'a b']]),
    ("a [[[b]]:2]", [[2, 'a '], [10, 'a [[b]]']]),
    ("[(a:2):3]", [[3, ''], [10, '(a:2)']]),
    ("a [b : c : 1] d", [[1, 'a b  d'], [10, 'a  c  d']]),
    ("a[b:[c:d:2]:1]e", [[1, 'abe'], [2, 'ace'], [10, 'ade']]),
    ("a [unbalanced", [[10, 'a [unbalanced']]),
    ("a [b:.5] c", [[5, 'a  c'], [10, 'a b c']]),
    # A1111's docstring expects [[5, 'a  c'], [10, 'a {b|d{ c']] and marks it "not handling this right
    # now": its grammar has no '|' outside [a|b], so its parser fails and the prompt stays literal.
    ("a [{b|d{:.5] c", [[10, 'a [{b|d{:.5] c']]),
    ("((a][:b:c [d:3]", [[3, '((a][:b:c '], [10, '((a][:b:c d']]),
    ("[a|(b:1.1)]", [[1, 'a'], [2, '(b:1.1)'], [3, 'a'], [4, '(b:1.1)'], [5, 'a'], [6, '(b:1.1)'], [7, 'a'],
                     [8, '(b:1.1)'], [9, 'a'], [10, '(b:1.1)']]),
    ("[fe|]male", [[1, 'female'], [2, 'male'], [3, 'female'], [4, 'male'], [5, 'female'], [6, 'male'],
                   [7, 'female'], [8, 'male'], [9, 'female'], [10, 'male']]),
    ("[fe|||]male", [[1, 'female'], [2, 'male'], [3, 'male'], [4, 'male'], [5, 'female'], [6, 'male'],
                     [7, 'male'], [8, 'male'], [9, 'female'], [10, 'male']]),
]


@pytest.mark.parametrize("prompt, expected", SCHEDULE_CASES)
def test_a1111_schedule_doctests(prompt, expected):
    assert get_learned_conditioning_prompt_schedules([prompt], 10)[0] == expected


@pytest.mark.parametrize("prompt, steps, expected", [
    ("a [dog:cat:0.5]", 20, [[10, "a dog"], [20, "a cat"]]),
    ("[dog::4] run", 10, [[4, "dog run"], [10, " run"]]),
    ("a [b:1.5] c", 10, [[10, "a  c"]]),          # a fraction > 1 is past the end
    ("a [b:-3] c", 10, [[10, "a b c"]]),          # before the start: always the second prompt
    ("a [b:20] c", 10, [[10, "a  c"]]),
    ("x [a|b] [c:d:2]", 4, [[1, "x a c"], [2, "x b c"], [3, "x a d"], [4, "x b d"]]),
    ("trailing backslash \\", 10, [[10, "trailing backslash \\"]]),
    # '|' outside [a|b] is in no rule of A1111's grammar: the whole prompt is literal text, no editing
    ("a | b [c:2]", 5, [[5, "a | b [c:2]"]]),
    ("masterpiece | best quality, [cat:dog:0.5]", 10, [[10, "masterpiece | best quality, [cat:dog:0.5]"]]),
    ("(a|b) [c:2]", 5, [[5, "(a|b) [c:2]"]]),
    ("[a|(b|c)] [d:2]", 4, [[4, "[a|(b|c)] [d:2]"]]),
    ("[a|b:c:2]", 4, [[4, "[a|b:c:2]"]]),
    ("[a|[b|c]] [d:2]", 4, [[1, "a "], [2, "c "], [3, "a d"], [4, "c d"]]),   # nested: the same step count
    ("(a [b:c:2])", 5, [[2, "(a b)"], [5, "(a c)"]]),
])
def test_schedule_more(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


def test_text_at_step_uses_first_entry_not_ended():
    sched = prompt_schedule("a [b:c:3]", 10)
    assert [text_at_step(sched, s) for s in (0, 3, 4, 9)] == ["a b", "a b", "a c", "a c"]


def test_deep_nesting_is_fast():
    prompt = "[" * 60 + "a:b:3" + "]" * 60 + " [" * 40
    assert prompt_schedule(prompt, 20)[0][0] == 3
    assert prompt_schedule("[" * 2000, 20) == [[20, "[" * 2000]]


# ---- tokens in chunks -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd1_pipe(tiny_sd1):
    from dreambooth.models import load_pipeline
    return load_pipeline(str(tiny_sd1))


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_sdxl):
    from dreambooth.models import load_pipeline
    return load_pipeline(str(tiny_sdxl))


def _words(n: int) -> str:
    return " ".join(["dog", "cat", "red", "blue"] * (n // 4) + ["dog"] * (n % 4))


def test_chunks_of_75(sd1_pipe):
    tok = sd1_pipe.tokenizer
    chunks = tokenize_weighted(tok, _words(100))
    assert [len(c.tokens) for c in chunks] == [75, 25]
    ids, weights = chunk_ids(tok, chunks[1])
    assert len(ids) == CHUNK_TOKENS + 2 and ids[0] == tok.bos_token_id and ids[26] == tok.eos_token_id
    assert token_count(tok, _words(100)) == 100


def test_break_starts_a_new_chunk(sd1_pipe):
    tok = sd1_pipe.tokenizer
    assert [len(c.tokens) for c in tokenize_weighted(tok, "dog cat BREAK red")] == [2, 1]
    assert [len(c.tokens) for c in tokenize_weighted(tok, "BREAK red")] == [0, 1]
    assert [len(c.tokens) for c in tokenize_weighted(tok, "")] == [0]


def test_token_weights_follow_emphasis(sd1_pipe):
    (chunk,) = tokenize_weighted(sd1_pipe.tokenizer, "dog (cat:1.5) [red]")
    assert chunk.weights == [1.0, 1.5, pytest.approx(1 / 1.1)]


# ---- encoding -----------------------------------------------------------------------------------------------------

def test_plain_prompt_encodes_like_training(sd1_pipe, sdxl_pipe):
    """A short prompt without emphasis gives exactly the family adapter's conditioning."""
    from dreambooth.models.families import adapter_for
    for pipe in (sd1_pipe, sdxl_pipe):
        adapter = adapter_for(pipe)
        with torch.no_grad():
            expected = adapter.encode(adapter.tokenize(["a photo of sks dog"]))
        got = PromptEncoder(pipe).encode("a photo of sks dog")
        assert torch.equal(got.embeds, expected.embeds)
        if expected.pooled is not None:
            assert torch.equal(got.pooled, expected.pooled)


def test_weight_one_is_exact_and_other_weights_differ(sd1_pipe):
    enc = PromptEncoder(sd1_pipe)
    plain = enc.encode("a dog on the beach").embeds
    assert torch.equal(enc.encode("a (dog:1.0) on the beach").embeds, plain)
    assert not torch.equal(enc.encode("a (dog:1.5) on the beach").embeds, plain)


def test_original_emphasis_restores_the_mean(sd1_pipe):
    enc = PromptEncoder(sd1_pipe)
    plain = enc.encode("a dog on the beach").embeds
    heavy = enc.encode("a (dog:1.5) on the beach").embeds
    assert heavy.mean().item() == pytest.approx(plain.mean().item(), rel=1e-4, abs=1e-6)
    z, w = torch.randn(77, 8), torch.ones(77)
    assert apply_emphasis(z, w) is z


def test_long_prompt_is_chunked_and_late_words_count(sd1_pipe, sdxl_pipe):
    for pipe in (sd1_pipe, sdxl_pipe):
        enc = PromptEncoder(pipe)
        a = enc.encode(_words(96) + " dog dog dog dog")
        b = enc.encode(_words(96) + " dog cat dog dog")
        assert a.embeds.shape[1] == 154
        assert torch.equal(a.embeds[:, :77], b.embeds[:, :77])      # first chunk untouched
        assert not torch.equal(a.embeds[:, 77:], b.embeds[:, 77:])
        if a.pooled is not None:
            assert torch.equal(a.pooled, b.pooled)                    # pooled comes from chunk 1


def test_sdxl_emphasis_is_per_encoder(sdxl_pipe):
    enc = PromptEncoder(sdxl_pipe)
    plain = enc.encode("a dog").embeds
    heavy = enc.encode("a (dog:1.4)").embeds
    w1 = sdxl_pipe.text_encoder.config.hidden_size
    for part in (slice(0, w1), slice(w1, None)):
        assert heavy[..., part].mean().item() == pytest.approx(plain[..., part].mean().item(), rel=1e-4, abs=1e-6)


def test_negative_padded_to_positive_length(sd1_pipe):
    enc = PromptEncoder(sd1_pipe)
    sched = schedule_conditioning(enc, _words(100), "blurry", 4)
    pos, neg = sched.at(0)
    assert pos.embeds.shape == neg.embeds.shape == (1, 154, 32)
    assert torch.equal(neg.embeds[:, :77], enc.encode("blurry").embeds)
    assert torch.equal(neg.embeds[:, 77:], enc.empty_chunk())
    p2, n2 = pad_pair(neg, pos, enc.empty_chunk())
    assert p2.embeds.shape == n2.embeds.shape


def test_sdxl_empty_negative_is_zeros(sdxl_pipe):
    enc = PromptEncoder(sdxl_pipe)
    neg = enc.encode_negative("")
    assert not neg.embeds.any() and not neg.pooled.any()


def test_scheduled_conditioning_switches(sd1_pipe):
    enc = PromptEncoder(sd1_pipe)
    sched = schedule_conditioning(enc, "a [dog:cat:2]", "", 4)
    assert sched.changes
    assert torch.equal(sched.at(0)[0].embeds, enc.encode("a dog").embeds)
    assert torch.equal(sched.at(2)[0].embeds, enc.encode("a dog").embeds)
    assert torch.equal(sched.at(3)[0].embeds, enc.encode("a cat").embeds)


def test_emphasis_with_a_zero_mean_stays_finite():
    z = torch.randn(77, 8)
    z = z - z.mean()                                     # an untrained encoder's output: mean ~ 0
    w = torch.ones(77)
    w[3] = 1.5
    out = apply_emphasis(z, w)
    assert torch.isfinite(out).all() and torch.allclose(out[3], z[3] * 1.5, atol=1e-5)


# ---- the token counter: the WebUI's "12/75" by a prompt box ----------------------------------------------------

def test_the_token_counter_counts_as_the_prompt_is_encoded(sd1_pipe):
    from dreambooth.generation.token_counter import counter_text, prompt_tokens
    tok = sd1_pipe.tokenizer
    assert prompt_tokens(tok, "") == (0, 75)
    assert prompt_tokens(tok, "dog cat red") == (3, 75)
    # emphasis syntax and LoRA tags are not tokens; a trailing :weight of an AND part is not either
    assert prompt_tokens(tok, "(dog:1.3) [cat] <lora:sks-dog:0.8> red") == (3, 75)
    assert prompt_tokens(tok, _words(100)) == (100, 150)
    # every chunk but the last counts whole (the WebUI's count): BREAK pads its chunk to 75
    assert prompt_tokens(tok, "dog cat BREAK red") == (76, 150)
    assert prompt_tokens(tok, "dog cat BREAK") == (75, 75) and prompt_tokens(tok, "dog BREAK BREAK") == (150, 150)
    # AND parts and prompt editing: the longest text the encoder is given
    assert prompt_tokens(tok, "dog AND " + _words(80) + " :0.5") == (80, 150)
    assert prompt_tokens(tok, f"dog [{_words(8)}:cat:5]", steps=20) == (9, 75)
    assert prompt_tokens(tok, f"dog [{_words(8)}:cat:25]", steps=20) == (9, 75)
    assert prompt_tokens(tok, "[dog|cat red blue]", steps=3) == (3, 75)
    # a negative prompt takes no AND: the word counts
    assert prompt_tokens(tok, "dog AND cat", negative=True) == (3, 75)
    assert prompt_tokens(tok, "dog AND cat") == (1, 75)
    assert counter_text(tok, _words(76)) == "76/150"
