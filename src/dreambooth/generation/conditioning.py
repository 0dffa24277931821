"""Prompts turned into UNet conditioning the WebUI way.

The weighted pieces of a prompt (``grammar.parse_prompt_attention``) are tokenized, packed in chunks
of 75 tokens (``BREAK`` closes a chunk early; a full one ends after a comma in its last 20 tokens),
each chunk wrapped in start/end tokens and encoded by the family adapter (so SDXL's two encoders and
pooled output are handled in one place), then the
weights multiply the encoder output and the mean is restored ("Original" emphasis). Chunks are
concatenated along the token axis; the pooled SDXL vector comes from the first chunk.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import progress
from ..models.families import Conditioning, adapter_for
from .grammar import parse_prompt_attention, prompt_schedule

CHUNK_TOKENS = 75                       # tokens of text per chunk; +2 for the start and end tokens
COMMA_BACKTRACK = 20                    # the WebUI's comma_padding_backtrack, at its default

# ----------------------------------------------------------------------------------------------
# Tokens in chunks of 75, with weights
# ----------------------------------------------------------------------------------------------

@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)     # text tokens only, at most CHUNK_TOKENS
    weights: list[float] = field(default_factory=list)


def tokenize_weighted(tokenizer, text: str) -> list[Chunk]:
    """The prompt's text tokens with their emphasis weights, packed into chunks of 75.

    Each weighted piece is tokenized on its own (so emphasis boundaries are token boundaries);
    ``BREAK`` ends the current chunk even when it is not full. A chunk that fills up ends after its last
    comma when that is within its last ``COMMA_BACKTRACK`` tokens, the words after it going on to the next
    (the WebUI's "Prompt word wrap length limit"), so a phrase is not cut in two. There is always at
    least one chunk.
    """
    pieces = parse_prompt_attention(text)
    texts = [t for t, w in pieces if not (t == "BREAK" and w == -1)]
    ids = iter(tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False).input_ids if texts else [])
    comma = tokenizer.get_vocab().get(",</w>")
    chunks: list[Chunk] = []
    current = Chunk()
    last_comma = -1                      # where in ``current`` its last comma is
    for piece_text, weight in pieces:
        if piece_text == "BREAK" and weight == -1:
            chunks.append(current)
            current, last_comma = Chunk(), -1
            continue
        for token in next(ids):
            if token == comma:
                last_comma = len(current.tokens)
            elif len(current.tokens) == CHUNK_TOKENS and last_comma != -1 \
                    and CHUNK_TOKENS - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                chunks.append(Chunk(current.tokens[:cut], current.weights[:cut]))
                current, last_comma = Chunk(current.tokens[cut:], current.weights[cut:]), -1
            if len(current.tokens) == CHUNK_TOKENS:
                chunks.append(current)
                current, last_comma = Chunk(), -1
            current.tokens.append(token)
            current.weights.append(float(weight))
    if current.tokens or not chunks:
        chunks.append(current)
    return chunks


def chunk_ids(tokenizer, chunk: Chunk) -> tuple[list[int], list[float]]:
    """One chunk as the encoder's 77 ids (start, text, end, padding) and 77 weights."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id]
    ids += [pad] * (CHUNK_TOKENS + 2 - len(ids))
    weights = [1.0, *chunk.weights, 1.0] + [1.0] * (CHUNK_TOKENS - len(chunk.weights))
    return ids, weights


def token_count(tokenizer, text: str) -> int:
    """Text tokens of a prompt (what the WebUI shows as 12/75), emphasis syntax excluded."""
    return sum(len(c.tokens) for c in tokenize_weighted(tokenizer, text))


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------

def apply_emphasis(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """WebUI "Original" emphasis on one chunk: multiply each token's vector by its weight, then
    rescale so the mean of the whole chunk is what it was. All-ones weights return ``z`` itself."""
    if bool((weights == 1).all()):
        return z
    original_mean = z.mean()
    z = z * weights.to(z.dtype).unsqueeze(-1)
    new_mean = z.mean()
    # A mean that is ~0 next to the values (untrained encoders: layer norm with zero bias) cannot be
    # restored by scaling; the ratio would blow up. Real CLIP outputs have a clear non-zero mean.
    if min(original_mean.abs(), new_mean.abs()) <= 1e-6 * z.abs().mean():
        return z
    return z * (original_mean / new_mean)


class PromptEncoder:
    """Encodes WebUI prompts for one pipeline, with a cache (prompt editing and batches re-use
    the same texts)."""

    def __init__(self, pipe, clip_skip: int = 1):
        self.pipe = pipe
        self.adapter = adapter_for(pipe)
        self.family = self.adapter.name
        self.widths = [te.config.hidden_size for te in self.adapter.text_encoders]
        self.clip_skip, warning = self.adapter.clip_skip_for(clip_skip)
        if warning:
            progress.warn(warning)
        self.zero_empty_negative = bool(getattr(pipe, "config", {}).get("force_zeros_for_empty_prompt", False)) \
            if self.family == "sdxl" else False
        self._cache: dict[str, Conditioning] = {}

    @torch.no_grad()
    def encode(self, text: str) -> Conditioning:
        """Conditioning of one plain (already schedule-resolved) prompt, batch of 1:
        embeds ``(1, 77 * chunks, dim)``, pooled ``(1, dim2)`` for SDXL."""
        if text in self._cache:
            return self._cache[text]
        per_tokenizer = [tokenize_weighted(tok, text) for tok in self.adapter.tokenizers]
        n_chunks = max(len(c) for c in per_tokenizer)
        ids, weights = [], []
        for tok, chunks in zip(self.adapter.tokenizers, per_tokenizer):
            chunks = chunks + [Chunk()] * (n_chunks - len(chunks))
            rows = [chunk_ids(tok, c) for c in chunks]
            ids.append(torch.tensor([r[0] for r in rows], dtype=torch.long))
            weights.append(torch.tensor([r[1] for r in rows], dtype=torch.float32))
        cond = self.adapter.encode(ids, clip_skip=self.clip_skip)   # (chunks, 77, sum(widths)), pooled (chunks, d)
        parts = torch.split(cond.embeds, self.widths, dim=-1) if len(self.widths) > 1 else (cond.embeds,)
        weighted = []
        for part, w in zip(parts, weights):
            w = w.to(part.device)
            weighted.append(torch.stack([apply_emphasis(part[k], w[k]) for k in range(n_chunks)]))
        embeds = torch.cat(weighted, dim=-1) if len(weighted) > 1 else weighted[0]
        embeds = embeds.reshape(1, n_chunks * embeds.shape[1], embeds.shape[2])
        pooled = None if cond.pooled is None else cond.pooled[:1]
        result = Conditioning(embeds, pooled)
        self._cache[text] = result
        return result

    def encode_negative(self, text: str) -> Conditioning:
        """Like ``encode``; an empty negative prompt on SDXL models that ask for it
        (``force_zeros_for_empty_prompt``) is all zeros, as in diffusers and the WebUI."""
        cond = self.encode(text)
        if text == "" and self.zero_empty_negative:
            pooled = None if cond.pooled is None else torch.zeros_like(cond.pooled)
            return Conditioning(torch.zeros_like(cond.embeds), pooled)
        return cond

    def empty_chunk(self) -> torch.Tensor:
        """The embedding of an empty 77-token chunk, used to pad a shorter conditioning."""
        return self.encode("").embeds[:, :CHUNK_TOKENS + 2]


def pad_pair(cond: Conditioning, uncond: Conditioning, empty: torch.Tensor) -> tuple[Conditioning, Conditioning]:
    """Make positive and negative conditioning the same length by appending empty chunks to the
    shorter one (both are whole chunks long)."""
    a, b = cond.embeds.shape[1], uncond.embeds.shape[1]
    if a == b:
        return cond, uncond

    def grow(c: Conditioning, to: int) -> Conditioning:
        reps = (to - c.embeds.shape[1]) // empty.shape[1]
        filler = empty.to(c.embeds.dtype).to(c.embeds.device).expand(c.embeds.shape[0], -1, -1)
        if not c.embeds.any():
            filler = torch.zeros_like(filler)            # a zeroed (empty SDXL) negative stays zero
        return Conditioning(torch.cat([c.embeds] + [filler] * reps, dim=1), c.pooled)

    return (grow(cond, b), uncond) if a < b else (cond, grow(uncond, a))


@dataclass
class ScheduledConditioning:
    """Positive and negative conditioning of one prompt pair for every sampling step."""
    positive: list[tuple[int, Conditioning]]
    negative: list[tuple[int, Conditioning]]
    empty: torch.Tensor

    @staticmethod
    def _at(schedule, step):
        for end, cond in schedule:
            if step <= end:
                return cond
        return schedule[-1][1]

    def at(self, step: int) -> tuple[Conditioning, Conditioning]:
        """(positive, negative) at 0-based step, padded to the same length."""
        return pad_pair(self._at(self.positive, step), self._at(self.negative, step), self.empty)

    @property
    def changes(self) -> bool:
        return len(self.positive) > 1 or len(self.negative) > 1


def schedule_conditioning(encoder: PromptEncoder, prompt: str, negative_prompt: str,
                          steps: int, after: int = 0) -> ScheduledConditioning:
    """Both prompts' editing/alternation schedules, each distinct text encoded once (``after``: a
    hires pass's, see ``prompt_schedule``)."""
    pos = [(end, encoder.encode(text)) for end, text in prompt_schedule(prompt, steps, after)]
    neg = [(end, encoder.encode_negative(text)) for end, text in prompt_schedule(negative_prompt, steps, after)]
    return ScheduledConditioning(pos, neg, encoder.empty_chunk())
