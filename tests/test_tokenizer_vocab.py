"""The small CLIP tokenizers we write: every listed word must be exactly one token."""
from dreambooth.testing.tiny import TINY_WORDS
from dreambooth.testing.vocab import write_clip_tokenizer


def test_every_word_is_one_token_whatever_the_order(tmp_path):
    words = ["red", "green", "reed", "greenery", "sks", "a", "on", "onion", "background", "back"]
    for i, order in enumerate([words, list(reversed(words)), sorted(words)]):
        tok = write_clip_tokenizer(order, tmp_path / str(i))
        for w in order:
            assert len(tok(w, add_special_tokens=False).input_ids) == 1, (w, order)


def test_tiny_vocabulary_words_are_single_tokens(tmp_path):
    tok = write_clip_tokenizer(list(TINY_WORDS), tmp_path)
    split = [w for w in TINY_WORDS if len(tok(w, add_special_tokens=False).input_ids) != 1]
    assert split == []
    assert len(tok("a photo of zzqq dog", add_special_tokens=False).input_ids) > 5   # unknown words still tokenize
