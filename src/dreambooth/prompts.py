"""The AUTOMATIC1111 WebUI prompt language, and prompts turned into UNet conditioning.

Three layers, each usable alone:

* ``prompt_schedule(prompt, steps)``: prompt editing ``[from:to:when]`` and alternation ``[a|b]``
  resolved into the plain prompts used at each sampling step, as ``[[end_step, text], ...]`` (the
  WebUI's ``get_learned_conditioning_prompt_schedules`` for one prompt).
* ``parse_prompt_attention(text)``: emphasis ``(x)``, ``[x]``, ``(x:1.5)``, escapes and ``BREAK``
  turned into ``[[text, weight], ...]``, exactly as the WebUI returns it.
* ``PromptEncoder``: a prompt encoded the WebUI way: the weighted pieces are tokenized, packed in
  chunks of 75 tokens (``BREAK`` closes a chunk early), each chunk wrapped in start/end tokens and
  encoded by the family adapter (so SDXL's two encoders and pooled output are handled in one place),
  then the weights multiply the encoder output and the mean is restored ("Original" emphasis).
  Chunks are concatenated along the token axis; the pooled SDXL vector comes from the first chunk.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .families import Conditioning, adapter_for

CHUNK_TOKENS = 75                       # tokens of text per chunk; +2 for the start and end tokens
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# ----------------------------------------------------------------------------------------------
# Emphasis: parse_prompt_attention
# ----------------------------------------------------------------------------------------------

_ESCAPABLE = "()[]\\"
_SPECIAL = "\\()[]:"
_WEIGHT_AT_COLON = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)


def _scan_attention_tokens(text: str):
    """Yield ``(kind, value)`` lexemes of the emphasis syntax, left to right.

    kinds: ``literal`` (an escaped character, or nothing for a stray backslash), ``open`` (``(`` or
    ``[``), ``weight`` (``:1.5)``; value is the number as written, ``raw`` the whole lexeme),
    ``close`` (``)`` or ``]``), ``text`` (a run of ordinary characters, or a lone ``:``).
    """
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            if i + 1 < n and text[i + 1] in _ESCAPABLE:
                yield "literal", text[i + 1], text[i:i + 2]
                i += 2
            else:
                yield "literal", "", "\\"     # a backslash escaping nothing vanishes
                i += 1
        elif ch in "([":
            yield "open", ch, ch
            i += 1
        elif ch == ":":
            m = _WEIGHT_AT_COLON.match(text, i)
            if m:
                yield "weight", m.group(1), m.group(0)
                i = m.end()
            else:
                yield "text", ":", ":"
                i += 1
        elif ch in ")]":
            yield "close", ch, ch
            i += 1
        else:
            j = i
            while j < n and text[j] not in _SPECIAL:
                j += 1
            yield "text", text[i:j], text[i:j]
            i = j


def parse_prompt_attention(text: str) -> list[list]:
    """Split a prompt into ``[text, weight]`` pairs the way the A1111 WebUI does.

    ``(abc)`` multiplies the weight of abc by 1.1, ``[abc]`` by 1/1.1, ``(abc:1.5)`` by 1.5; brackets
    nest and multiply; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters; brackets left open
    at the end still apply; a closing bracket without its opener is text. ``BREAK`` (a word of its
    own) becomes the pair ``["BREAK", -1]``. Neighbours of equal weight are merged.

    >>> parse_prompt_attention('an (important) word')
    [['an ', 1.0], ['important', 1.1], [' word', 1.0]]
    """
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in res[start:]:
            piece[1] *= factor

    def add_text(chunk: str) -> None:
        for k, part in enumerate(_BREAK_SPLIT.split(chunk)):
            if k:
                res.append(["BREAK", -1])
            res.append([part, 1.0])

    for kind, value, raw in _scan_attention_tokens(text):
        if kind == "literal":
            res.append([value, 1.0])
        elif kind == "open":
            (round_open if value == "(" else square_open).append(len(res))
        elif kind == "weight" and round_open:
            try:
                factor = float(value)
            except ValueError:          # "(a:1.2.3)": not a number; the WebUI would crash, we keep text
                add_text(raw)
                continue
            scale_from(round_open.pop(), factor)
        elif kind == "close" and value == ")" and round_open:
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
        elif kind == "close" and value == "]" and square_open:
            scale_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            add_text(raw)

    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)

    if not res:
        return [["", 1.0]]
    merged = [res[0]]
    for piece in res[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return merged


# ----------------------------------------------------------------------------------------------
# Prompt editing and alternation: prompt_schedule
# ----------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_WS = re.compile(r"\s+")


@dataclass
class _Edit:
    """``[before:after:when]``; ``before`` is None when written ``[after:when]``."""
    before: list | None
    after: list
    when: str
    at: int = 0            # ``when`` as a step number, set once the step count is known


@dataclass
class _Alternate:
    options: list = field(default_factory=list)


class _NoParse(Exception):
    pass


class _ScheduleParser:
    """Recursive descent over the WebUI's prompt-editing grammar.

    A nested prompt is a run of plain text, whitespace and bracketed constructs: ``(p)``, ``(p:p)``
    and ``[p]`` are kept as text (emphasis is parsed later), ``[p|p|...]`` alternates, ``[p:N]`` and
    ``[p:p:N]`` edit. At the top level a bracket or colon that starts no construct is plain text.
    A ``|`` outside an alternation is plain text.
    """

    def __init__(self, text: str):
        self.s = text
        self._memo: dict = {}      # (kind, position) -> result: keeps nested brackets linear

    def parse(self) -> list:
        nodes, i, s = [], 0, self.s
        while i < len(s):
            if s[i] in "[(":
                got = self._construct(i)
                if got is not None:
                    nodes.extend(got[0])
                    i = got[1]
                    continue
                nodes.append(s[i])
                i += 1
            elif s[i] in ")]:":
                nodes.append(s[i])
                i += 1
            else:
                part, i = self._prompt(i, in_alternate=False)
                nodes.extend(part)
        return nodes

    def _prompt(self, i: int, in_alternate: bool) -> tuple[list, int]:
        """The longest nested prompt starting at ``i``; stops before a character it cannot take."""
        key = ("prompt", i, in_alternate)
        if key not in self._memo:
            self._memo[key] = self._prompt_uncached(i, in_alternate)
        return self._memo[key]

    def _prompt_uncached(self, i: int, in_alternate: bool) -> tuple[list, int]:
        s, nodes = self.s, []
        stops = "[]():|" if in_alternate else "[]():"
        while i < len(s):
            ch = s[i]
            if ch in "[(":
                got = self._construct(i)
                if got is None:
                    break
                nodes.extend(got[0])
                i = got[1]
            elif ch == "\\":
                if i + 1 >= len(s) or s[i + 1] == "\n":
                    raise _NoParse()
                nodes.append(s[i:i + 2])
                i += 2
            elif ch in stops:
                break
            else:
                j = i
                while j < len(s) and s[j] not in stops and s[j] not in "[(\\":
                    j += 1
                nodes.append(s[i:j])
                i = j
        return nodes, i

    def _construct(self, i: int):
        """A bracketed construct at ``i`` as ``(nodes, end)``, or None."""
        key = ("construct", i)
        if key not in self._memo:
            self._memo[key] = self._construct_uncached(i)
        return self._memo[key]

    def _construct_uncached(self, i: int):
        s = self.s
        if s[i] == "(":
            inner, j = self._prompt(i + 1, False)
            if j < len(s) and s[j] == ")":
                return ["(", *inner, ")"], j + 1
            if j < len(s) and s[j] == ":":
                second, k = self._prompt(j + 1, False)
                if k < len(s) and s[k] == ")":
                    return ["(", *inner, ":", *second, ")"], k + 1
            return None
        # "[": alternation, then editing, then de-emphasis
        first, j = self._prompt(i + 1, True)
        if j < len(s) and s[j] == "|":
            options = [first]
            while j < len(s) and s[j] == "|":
                option, j = self._prompt(j + 1, True)
                options.append(option)
            if j < len(s) and s[j] == "]":
                return [_Alternate(options)], j + 1
        first, j = self._prompt(i + 1, False)
        if j < len(s) and s[j] == ":":
            end = self._when(j + 1)
            if end is not None:
                return [_Edit(None, first, end[0])], end[1]
            second, k = self._prompt(j + 1, False)
            if k < len(s) and s[k] == ":":
                end = self._when(k + 1)
                if end is not None:
                    return [_Edit(first, second, end[0])], end[1]
            return None
        if j < len(s) and s[j] == "]":
            return ["[", *first, "]"], j + 1
        return None

    def _when(self, i: int):
        """``[ws] NUMBER [ws] ]`` at ``i`` as ``(number_text, end)``, or None."""
        s = self.s
        m = _WS.match(s, i)
        i = m.end() if m else i
        m = _NUMBER.match(s, i)
        if not m:
            return None
        number, i = m.group(0), m.end()
        m = _WS.match(s, i)
        i = m.end() if m else i
        if i < len(s) and s[i] == "]":
            return number, i + 1
        return None


def _walk(nodes):
    for node in nodes:
        if isinstance(node, _Edit):
            yield node
            yield from _walk(node.before or [])
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            yield node
            for option in node.options:
                yield from _walk(option)


def _render(nodes, step: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Edit):
            out.append(_render(node.before or [], step) if step <= node.at else _render(node.after, step))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int) -> list[list]:
    """The plain prompts a prompt stands for during ``steps`` sampling steps, as
    ``[[end_step, text], ...]``: ``text`` is used while the (0-based) step is ``<= end_step``.

    ``[to:when]`` adds ``to`` after step ``when``, ``[from::when]`` removes ``from`` after it,
    ``[from:to:when]`` swaps; ``when`` with a decimal point is a fraction of ``steps``. ``[a|b|c]``
    cycles through its options every step. Same results as the WebUI's schedules:

    >>> prompt_schedule("a [b:3]", 10)
    [[3, 'a '], [10, 'a b']]
    """
    try:
        nodes = _ScheduleParser(prompt).parse()
    except (_NoParse, RecursionError):       # unparseable, or brackets nested hundreds deep: literal text
        return [[steps, prompt]]
    ends = {steps}
    for node in _walk(nodes):
        if isinstance(node, _Edit):
            value = float(node.when)
            value = value * steps if "." in node.when else value
            node.at = min(steps, int(value))
            if node.at >= 1:
                ends.add(node.at)
        else:
            ends.update(range(1, steps + 1))
    return [[end, _render(nodes, end)] for end in sorted(ends)]


def get_learned_conditioning_prompt_schedules(prompts: list[str], steps: int) -> list[list[list]]:
    """``prompt_schedule`` for each prompt of a list (the WebUI's name and signature)."""
    return [prompt_schedule(p, steps) for p in prompts]


def text_at_step(schedule: list[list], step: int) -> str:
    """The prompt of a schedule used at 0-based sampling step ``step``."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[-1][1]


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
    ``BREAK`` ends the current chunk even when it is not full. There is always at least one chunk.
    """
    pieces = parse_prompt_attention(text)
    texts = [t for t, w in pieces if not (t == "BREAK" and w == -1)]
    ids = iter(tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False).input_ids if texts else [])
    chunks: list[Chunk] = []
    current = Chunk()
    for piece_text, weight in pieces:
        if piece_text == "BREAK" and weight == -1:
            chunks.append(current)
            current = Chunk()
            continue
        for token in next(ids):
            if len(current.tokens) == CHUNK_TOKENS:
                chunks.append(current)
                current = Chunk()
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

    def __init__(self, pipe):
        self.pipe = pipe
        self.adapter = adapter_for(pipe)
        self.family = self.adapter.name
        self.widths = [te.config.hidden_size for te in self.adapter.text_encoders]
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
        cond = self.adapter.encode(ids)                   # (chunks, 77, sum(widths)), pooled (chunks, d)
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
                          steps: int) -> ScheduledConditioning:
    """Both prompts' editing/alternation schedules, each distinct text encoded once."""
    pos = [(end, encoder.encode(text)) for end, text in prompt_schedule(prompt, steps)]
    neg = [(end, encoder.encode_negative(text)) for end, text in prompt_schedule(negative_prompt, steps)]
    return ScheduledConditioning(pos, neg, encoder.empty_chunk())
