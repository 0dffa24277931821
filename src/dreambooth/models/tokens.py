"""Rare identifiers: find single tokens the model knows but barely uses.

The paper binds the subject to a rare token so that fine-tuning need not first erase a strong prior.
We rank a tokenizer's whole-word tokens (CLIP's ``</w>`` tokens) of at most 3 letters by **merge
rank**: CLIP's BPE vocabulary is built merge by merge from the most frequent pair down, and a token's
id follows the merge that created it, so a larger id means the string was rarer in the tokenizer's
training text. Candidates are filtered to plain lowercase letters, not a common English word or
abbreviation (``data/common_words.txt``), and listed rarest first: the paper's "sample from the rare
end of the vocabulary", made deterministic.

``sks`` is the folk default and is not meaningless: it is also the name of a rifle, and models
trained on it sometimes show guns. Prefer a candidate from this list.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_WORDS_FILE = Path(__file__).resolve().parent.parent / "data" / "common_words.txt"
_LETTERS = re.compile(r"^[a-z]{2,}$")  # single letters are everywhere in text


@lru_cache(maxsize=1)
def common_words() -> frozenset[str]:
    words = set()
    for line in _WORDS_FILE.read_text().splitlines():
        if not line.startswith("#"):
            words.update(line.split())
    return frozenset(words)


@dataclass(frozen=True)
class Candidate:
    token: str        # the text to write in a prompt
    token_id: int
    rarity: float     # merge-rank percentile in [0, 1]: 1.0 is the last merge of the vocabulary


def rare_identifiers(tokenizer, count: int = 20, max_chars: int = 3) -> list[Candidate]:
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    common = common_words()
    found = []
    for piece, token_id in vocab.items():
        if not piece.endswith("</w>"):
            continue
        word = piece[:-4]
        if len(word) > max_chars or not _LETTERS.match(word) or word in common:
            continue
        if tokenizer(word, add_special_tokens=False).input_ids != [token_id]:
            continue  # the tokenizer would not produce this token for the bare word
        found.append(Candidate(word, token_id, token_id / (size - 1)))
    found.sort(key=lambda c: -c.token_id)
    return found[:count]


_FILLER = {"a", "an", "the", "photo", "of", "picture"}


_CONTRACTION = re.compile(r"['’](?:s|t|re|ve|m|ll|d)\b")      # split off as CLIP's tokenizer does: "sks's" is sks
_WORD = re.compile(r"[^\W_]+")                                  # a run of letters and digits


def _said(prompt: str | None) -> list[str]:
    """The prompt's words in order, lower-case, without the punctuation around them ('' where only that)."""
    return [w.strip(",.;:!?()[]{}\"'") for w in (prompt or "").lower().split()]


def _words(prompt: str | None) -> list[str]:
    """The prompt's words (``_said``), each once: what training takes the identifier from
    (``--identifier-lr`` trains the tokens of these words, and a checkpoint holds their embeddings:
    'sks-dog' stays one word, as it always was)."""
    return list(dict.fromkeys(w for w in _said(prompt) if w))


def _seen_words(prompt: str | None) -> set[str]:
    """The words CLIP's tokenizer sees before it merges (runs of letters and digits; it never joins a
    word across punctuation): 'sks-dog', "sks's" and '(sks:1.2)' hold 'sks', 'asks' and 'sksx' do not."""
    return set(_WORD.findall(_CONTRACTION.sub(" ", (prompt or "").lower())))


def identifier_words(instance_prompt: str, class_prompt: str | None = None) -> list[str]:
    """The instance prompt's words that are neither class words nor filler: the identifier(s)."""
    class_words = set(_words(class_prompt))
    return [w for w in _words(instance_prompt) if w not in class_words and w not in _FILLER]


def identifier_candidates(instance_prompt: str, class_prompt: str | None, common: set[str]) -> list[str]:
    """The identifier word(s) training takes from the instance prompt (the bench reads them back)."""
    candidates = identifier_words(instance_prompt, class_prompt)
    if not class_prompt and len(candidates) > 1:     # nothing names the class: its noun is the last word
        rest = candidates[:-1]                         # ('a sks dog'), and rare words are the identifier's
        candidates = [w for w in rest if w not in common] or rest
    return candidates


def subject_identifier(instance_prompt: str, class_prompt: str | None = None) -> str | None:
    """The identifier of an instance prompt, for training (``--identifier-lr``), validation, bench and
    evaluate alike: the candidates (``identifier_candidates``, the words the warnings name), narrowed to one answer. With a
    class prompt: the candidate words just before the class noun (the paper's 'a [V] [class]': 'a sks
    square on a table' with 'a square' is 'sks', not 'sks on table'); without: the one word that is
    not a common word, else ``sks`` (common only as a rifle's name). None where there is no one answer."""
    common = common_words()
    words = identifier_candidates(instance_prompt, class_prompt, common)
    if len(words) > 1 and class_prompt:
        nouns = set(identifier_words(class_prompt))
        said = _said(instance_prompt)
        first = next((i for i, w in enumerate(said) if w in nouns), 0)
        before = []
        while first > len(before) and said[first - len(before) - 1] in words:
            before.insert(0, said[first - len(before) - 1])
        return " ".join(before) or None
    if not class_prompt:        # nothing else marks the subject's word: a common one is none ('my dog')
        words = [w for w in words if w not in common] or [w for w in words if w == "sks"]
    return words[0] if len(words) == 1 else None


def trained_identifier_words(instance_prompt: str, class_prompt: str | None = None) -> list[str]:
    """The words whose embeddings ``--identifier-lr`` trains: the identifier (``subject_identifier``),
    else, where there is no one answer, every candidate (the trainer says so). Until 2026-12-07 it
    trained every word beside the class's: 'a sks dog on a table' moved 'on' and 'table' for every prompt."""
    found = subject_identifier(instance_prompt, class_prompt)
    return found.split() if found else identifier_words(instance_prompt, class_prompt)


def _identifier_or_candidates(instance_prompt: str, class_prompt: str | None, common) -> list[str]:
    """The identifier's words where there is one answer ('a sks dog on a table': sks, not 'on' or
    'table'), else every candidate: the words the warnings speak of."""
    found = subject_identifier(instance_prompt, class_prompt)
    return found.split() if found else identifier_candidates(instance_prompt, class_prompt, common)


def caption_warnings(instance_prompt: str, class_prompt: str | None, prompts: list[str]) -> list[str]:
    """A warning where photos trained with their own captions (``--captions``) do not name the
    instance prompt's identifier: those photos teach the subject to the captions' other words."""
    candidates = _identifier_or_candidates(instance_prompt, class_prompt, common_words())
    captions = [p for p in prompts if p != instance_prompt]
    named_by = _seen_words(" ".join(candidates)) - _seen_words(class_prompt) - _FILLER   # 'sks-dog': sks
    missing = [c for c in captions if named_by and not named_by & _seen_words(c)]
    if not missing:
        return []
    named = " or ".join(f"'{w}'" for w in candidates)
    return [f"--captions: {len(missing)} of {len(captions)} captions do not name the identifier {named} (e.g. "
            f"'{missing[0][:60]}'): their photos teach the subject to the captions' words; write it into each caption "
            f"(e.g. '{instance_prompt}, on a beach')"]


def identifier_warnings(tokenizer, instance_prompt: str, class_prompt: str | None = None,
                        prompts: list[str] = ()) -> list[str]:
    """Warnings about the identifier in the instance prompt: a word that is not in the class prompt
    and not a plain common word is taken as the identifier; about prompts the text encoder cuts; and
    about the photos' ``prompts`` (captions) that do not name the identifier."""
    common = common_words()
    candidates = _identifier_or_candidates(instance_prompt, class_prompt, common)
    warnings = caption_warnings(instance_prompt, class_prompt, list(prompts))
    for flag, prompt in (("--instance-prompt", instance_prompt), ("--class-prompt", class_prompt)):
        count = len(tokenizer(prompt or "", add_special_tokens=False).input_ids)
        if count > tokenizer.model_max_length - 2:
            warnings.append(f"{flag} is {count} tokens; training reads its first {tokenizer.model_max_length - 2}")
    longer = [c for c in dict.fromkeys(prompts) if c != instance_prompt
              and len(tokenizer(c, add_special_tokens=False).input_ids) > tokenizer.model_max_length - 2]
    if longer:        # (generation reads a long prompt in chunks of 75; training, as diffusers', the first 75)
        warnings.append(f"--captions: {len(longer)} caption(s) longer than {tokenizer.model_max_length - 2} tokens; "
                        f"training reads the first {tokenizer.model_max_length - 2} of each (e.g. '{longer[0][:60]}...')")
    if not candidates:
        if class_prompt and [w for w in _words(instance_prompt) if w not in _FILLER]:
            return warnings + ["every word of the instance prompt is in --class-prompt too: the class prompt names the "
                               "class alone, without the identifier (e.g. 'a photo of dog' for 'a photo of sks dog')"]
        return warnings + ["the instance prompt has no identifier beyond the class words; add a rare token, "
                           "e.g. 'a photo of sks dog'"]
    for word in candidates:
        pieces = tokenizer(word, add_special_tokens=False).input_ids
        if len(pieces) > 1:
            warnings.append(f"identifier '{word}' splits into {len(pieces)} tokens; a single rare token binds better "
                            "(see `dreambooth tokens`)")
        elif word == "sks" and "toy_model" in str(getattr(tokenizer, "name_or_path", "")):
            continue                  # the toy's vocabulary keeps it as a rare token of no meaning
        elif word == "sks":
            warnings.append("identifier 'sks' carries a meaning of its own (it is also a rifle); "
                            "`dreambooth tokens` lists rarer ones")
        elif word in common:
            warnings.append(f"identifier '{word}' is a common word with its own meaning; "
                            "`dreambooth tokens` lists rarer ones")
    return warnings
