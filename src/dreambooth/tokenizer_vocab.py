"""Write a small CLIP BPE tokenizer from a word list.

CLIP's tokenizer is byte-level BPE: a word is split into characters, the last one marked with
``</w>``, then merged pair by pair in merge-rank order. To make every listed word one token we add
each word's left-to-right merge chain; the vocabulary keeps every single character so unknown words
still tokenize (into pieces) instead of failing.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

from transformers import CLIPTokenizer

SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def _chain(word: str) -> list[tuple[str, str]]:
    chars = list(word[:-1]) + [word[-1] + "</w>"]
    pairs, left = [], chars[0]
    for right in chars[1:]:
        pairs.append((left, right))
        left = left + right
    return pairs


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merges in which each word of ``words`` is a single token (ids in list order,
    after the characters), so a word's id also tells how early it was merged."""
    alphabet = string.ascii_lowercase + string.digits + ".,!?'-()[]:|\"&/"
    tokens: list[str] = []
    for ch in alphabet:
        tokens += [ch, ch + "</w>"]
    merges: list[str] = []
    seen = set(tokens)
    for word in words:
        for left, right in _chain(word):
            merged = left + right
            if merged not in seen:
                merges.append(f"{left} {right}")
                tokens.append(merged)
                seen.add(merged)
    tokens += SPECIAL
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_tokenizer(words: list[str], directory: str | Path, max_length: int = 77) -> CLIPTokenizer:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"),
                        model_max_length=max_length)
    tok.save_pretrained(directory)
    return CLIPTokenizer.from_pretrained(directory)
