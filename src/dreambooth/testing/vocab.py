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


def _apply_merges(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE on one word: repeatedly merge the adjacent pair of lowest rank."""
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]
    return pieces


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merges in which each word of ``words`` is a single token (ids in list order,
    after the characters), so a word's id also tells how early it was merged.

    Each word is first split by the merges already made (as the tokenizer will split it), then the
    remaining pieces are joined left to right by new merges. New merges rank after all earlier ones,
    so they can never cut into an earlier word.
    """
    alphabet = string.ascii_lowercase + string.digits + ".,!?'-()[]:|\"&/"
    tokens: list[str] = []
    for ch in alphabet:
        tokens += [ch, ch + "</w>"]
    merges: list[str] = []
    ranks: dict[tuple[str, str], int] = {}
    seen = set(tokens)
    for word in words:
        pieces = _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in ranks:
                ranks[(left, right)] = len(merges)
                merges.append(f"{left} {right}")
            left = left + right
            if left not in seen:
                tokens.append(left)
                seen.add(left)
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
