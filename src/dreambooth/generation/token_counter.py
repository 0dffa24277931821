"""How long a prompt is for the text encoder: the WebUI's token counter (``12/75`` by a prompt box).

A prompt is counted as it is encoded: without its ``<lora:...>`` tags, each ``AND`` part (positive
prompts only) and each text its editing schedule makes over the steps on its own, the longest one
counting. Within a text, every chunk but the last counts as a full 75 (a ``BREAK`` or a comma's word
wrap pads it), as the WebUI counts; the second number is the tokens the encoder is given, in chunks of 75.
"""
from __future__ import annotations

import math

from .composable import split_and
from .conditioning import CHUNK_TOKENS, tokenize_weighted
from .grammar import parse_prompt_attention, prompt_schedule, without_extra_networks


def text_tokens(tokenizer, text: str) -> int:
    """The tokens one plain text (emphasis syntax allowed) takes, chunk padding included: a text that
    ends with ``BREAK`` ends with a chunk it padded, counted whole."""
    chunks = tokenize_weighted(tokenizer, text)
    pieces = [piece for piece in parse_prompt_attention(text) if piece[0]]
    if pieces and pieces[-1] == ["BREAK", -1]:
        return CHUNK_TOKENS * len(chunks)
    return CHUNK_TOKENS * (len(chunks) - 1) + len(chunks[-1].tokens)


def prompt_tokens(tokenizer, prompt: str, steps: int = 20, negative: bool = False) -> tuple[int, int]:
    """(tokens, tokens the encoder is given): ``(12, 75)`` for a short prompt, ``(80, 150)`` past one chunk."""
    prompt = without_extra_networks(prompt or "")
    parts = [prompt] if negative else [text for text, _ in split_and(prompt)]
    texts = {text for part in parts for _, text in prompt_schedule(part, max(1, int(steps)))}
    count = max(text_tokens(tokenizer, text) for text in texts)
    return count, CHUNK_TOKENS * max(1, math.ceil(count / CHUNK_TOKENS))


def counter_text(tokenizer, prompt: str, steps: int = 20, negative: bool = False) -> str:
    """The counter as the WebUI shows it: ``12/75``."""
    return "{}/{}".format(*prompt_tokens(tokenizer, prompt, steps, negative))
