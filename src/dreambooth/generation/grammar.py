"""The AUTOMATIC1111 WebUI prompt language, as text: nothing here touches a model.

* ``extract_loras(prompt)``: ``<lora:name:weight>`` tags taken out of the prompt, as the WebUI's
  extra networks are (the tags never reach the text encoder).
* ``prompt_schedule(prompt, steps)``: prompt editing ``[from:to:when]`` and alternation ``[a|b]``
  resolved into the plain prompts used at each sampling step, as ``[[end_step, text], ...]`` (the
  WebUI's ``get_learned_conditioning_prompt_schedules`` for one prompt). A prompt the WebUI's grammar
  cannot parse (a ``|`` outside ``[a|b]``, for one) is used as literal text, with no editing at all.
* ``parse_prompt_attention(text)``: emphasis ``(x)``, ``[x]``, ``(x:1.5)``, escapes and ``BREAK``
  turned into ``[[text, weight], ...]``, exactly as the WebUI returns it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UserError

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# ----------------------------------------------------------------------------------------------
# Extra networks: <lora:name:weight>
# ----------------------------------------------------------------------------------------------

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
LORA_TAG_TYPES = ("lora", "lyco")     # LyCORIS tags of older WebUI extensions name LoRA files too


@dataclass(frozen=True)
class LoraTag:
    name: str
    weight: float = 1.0

    def __str__(self) -> str:
        return f"<lora:{self.name}:{self.weight:g}>"


def without_extra_networks(prompt: str) -> str:
    """``prompt`` without its ``<type:...>`` extra-network tags, of any type (what CLIP-T reads)."""
    return _EXTRA_NETWORK.sub(" ", prompt)


def extract_loras(prompt: str) -> tuple[str, list[LoraTag]]:
    """(prompt without its extra-network tags, the LoRA tags), as the WebUI parses a prompt: every
    ``<type:...>`` tag is removed where it stands; ``<lora:name>`` has weight 1. A tag of another
    type, or with separate text-encoder and UNet weights, is a one-line error."""
    tags: list[LoraTag] = []

    def take(m: re.Match) -> str:
        kind, items = m.group(1), m.group(2).split(":")
        if kind.lower() not in LORA_TAG_TYPES:
            raise UserError(f"--prompt: <{kind}:...>: only <lora:name:weight> extra networks are supported")
        if len(items) > 2:
            raise UserError(f"--prompt: {m.group(0)}: give one weight (<lora:name:weight>); separate text-encoder "
                            "and UNet weights are not supported")
        try:
            weight = float(items[1]) if len(items) > 1 and items[1].strip() else 1.0
        except ValueError:
            raise UserError(f"--prompt: {m.group(0)}: the weight {items[1]!r} is not a number") from None
        tags.append(LoraTag(items[0].strip(), weight))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), tags


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
    A ``|`` outside an alternation is in no rule of the WebUI's grammar, so the whole prompt fails to
    parse (``_NoParse``) and is then used as it is, as the WebUI does.
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
            elif s[i] == "|":
                raise _NoParse()
            else:
                part, i = self._prompt(i)
                nodes.extend(part)
        return nodes

    def _prompt(self, i: int) -> tuple[list, int]:
        """The longest nested prompt starting at ``i``; stops before a character it cannot take."""
        key = ("prompt", i)
        if key not in self._memo:
            self._memo[key] = self._prompt_uncached(i)
        return self._memo[key]

    def _prompt_uncached(self, i: int) -> tuple[list, int]:
        s, nodes = self.s, []
        stops = "[]():|"
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
            inner, j = self._prompt(i + 1)
            if j < len(s) and s[j] == ")":
                return ["(", *inner, ")"], j + 1
            if j < len(s) and s[j] == ":":
                second, k = self._prompt(j + 1)
                if k < len(s) and s[k] == ")":
                    return ["(", *inner, ":", *second, ")"], k + 1
            return None
        # "[": alternation, then editing, then de-emphasis
        first, j = self._prompt(i + 1)
        if j < len(s) and s[j] == "|":
            options = [first]
            while j < len(s) and s[j] == "|":
                option, j = self._prompt(j + 1)
                options.append(option)
            if j < len(s) and s[j] == "]":
                return [_Alternate(options)], j + 1
        first, j = self._prompt(i + 1)
        if j < len(s) and s[j] == ":":
            end = self._when(j + 1)
            if end is not None:
                return [_Edit(None, first, end[0])], end[1]
            second, k = self._prompt(j + 1)
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


def prompt_schedule(prompt: str, steps: int, after: int = 0) -> list[list]:
    """The plain prompts a prompt stands for during ``steps`` sampling steps, as
    ``[[end_step, text], ...]``: ``text`` is used while the (0-based) step is ``<= end_step``.

    ``[to:when]`` adds ``to`` after step ``when``, ``[from::when]`` removes ``from`` after it,
    ``[from:to:when]`` swaps; ``when`` with a decimal point is a fraction of ``steps``. ``[a|b|c]``
    cycles through its options every step. ``after``: a first pass's steps before these (hires fix, as
    the WebUI >= 1.6 has it): ``when`` counts on from them, a fraction from 1.0 (``[b:c:0.5]`` is ``c``
    throughout, ``[b:1.5]`` adds ``b`` half-way). ``prompt_schedule("a [b:3]", 10)``: ``[[3, 'a '], [10, 'a b']]``.
    """
    try:
        nodes = _ScheduleParser(prompt).parse()
    except (_NoParse, RecursionError):       # unparseable, or brackets nested hundreds deep: literal text
        return [[steps, prompt]]
    ends = {steps}
    for node in _walk(nodes):
        if isinstance(node, _Edit):
            value = float(node.when)
            value = (value - (1.0 if after else 0.0)) * steps if "." in node.when else value - after
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
