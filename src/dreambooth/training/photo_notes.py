"""What training does with photos that kohya's sd-scripts would treat otherwise, said once per run.

* No aspect-ratio buckets: every photo is resized so its short side is the training size, and each
  step trains one square crop of it (random, or the middle with ``--center-crop``). A tall phone shot
  (2:1) thus shows half of itself per step, which a kohya user expects to train whole in its bucket.
* kohya's repeat folders (``img/10_sks dog``): the ``10_`` repeat count is not read; every photo is
  drawn equally often (one permutation per epoch), and ``--max-steps`` sets the run's length.

Also the lines ``data.load_examples`` says of a folder's files (one per reason, :func:`one_line`):
byte-for-byte copies (each copy is drawn as one more photo) and pictures transparent all over.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..images import MAX_ASPECT

FAR_FROM_SQUARE = 4 / 3 + 0.01       # a phone's 4:3 is not said; 3:2, 16:9 and tall shots are
REPEAT_PREFIX = re.compile(r"^(\d+)_(.+)$")        # kohya's "<repeats>_<prompt>" folder names


def photo_notes(examples: list, size: int, center_crop: bool) -> list[str]:
    """The lines to say about the instance photos (``data.Example``), before training."""
    notes = []
    # counted after the middle 4:1 cut (images.middle) that load_examples already warned of
    far = [(e, min(max(e.original_hw) / min(e.original_hw), MAX_ASPECT)) for e in examples if min(e.original_hw) > 0
           and max(e.original_hw) / min(e.original_hw) > FAR_FROM_SQUARE]
    if far:
        names = ", ".join(f"{getattr(e.path, 'name', '?')} {e.original_hw[1]}x{e.original_hw[0]}" for e, _ in far[:3])
        names += f" and {len(far) - 3} more" if len(far) > 3 else ""
        crop = "the middle" if center_crop else "a random"
        cut = any(max(e.original_hw) > MAX_ASPECT * min(e.original_hw) for e, _ in far)
        notes.append(f"{len(far)} photo(s) far from square ({names}): there are no aspect-ratio buckets here; each step "
                     f"trains {crop} {size}x{size} crop of a photo resized to {size} on its short side, as little as "
                     f"{1 / max(r for _, r in far):.0%} of its long side"
                     + (f" (of its middle {MAX_ASPECT}:1, for one longer than that)" if cut else "")
                     + "; crop them square around the subject to train all of it")
    folder = getattr(examples[0].path, "parent", None) if examples else None
    repeats = REPEAT_PREFIX.match(folder.name) if folder is not None else None
    if repeats:
        notes.append(f"--instance-dir '{folder}': kohya's repeat count ({repeats.group(1)}_) is not used; every photo "
                     "is shown equally often and --max-steps sets the run's length (the prompt is --instance-prompt, "
                     "not the folder's name)")
    return notes


def one_line(files: list[tuple[Path, str]], alone, together) -> str:
    """One warning for files passed over for one reason: ``alone(path, detail)`` for a single file,
    ``together(count, names)`` for several, naming the first three ('a.txt, b.txt, c.txt and 4 more')."""
    if len(files) == 1:
        return alone(*files[0])
    names = [" ".join(filter(None, (path.name, detail))) for path, detail in files]
    return together(len(files), ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else ""))


def transparent(files: list[tuple[Path, str]], folder) -> tuple:
    """``load_examples``' group for pictures transparent all over: composited on white, each would
    train as a blank picture under the prompt, so they are skipped."""
    return (files, lambda p, _: f"skipping {p}: transparent all over (alpha 0 everywhere), so it would train as a plain "
                                "white picture; save it with its subject opaque",
            lambda n, names: f"skipping {n} images in {folder} that are transparent all over ({names}): each would "
                             "train as a plain white picture; save them with their subject opaque")


class Repeats:
    """Files of a folder that are byte-for-byte copies of an earlier one trained with the same prompt:
    each is drawn as a photo of its own, so that picture weighs twice (or more) in training. Said, not
    dropped: the user decides. (One picture under two captions is two examples, meant so.)"""

    def __init__(self):
        self.first: dict[tuple[str, str], Path] = {}      # (sha256 of the bytes, prompt) -> the first file
        self.copies: list[tuple[Path, str]] = []

    def add(self, path: Path, prompt: str) -> str:
        """Note ``path`` (a copy of an earlier file with the same prompt is said); returns its SHA-256."""
        key = (hashlib.sha256(path.read_bytes()).hexdigest(), prompt)
        if key in self.first:
            self.copies.append((path, f"(a copy of {self.first[key].name})"))
        self.first.setdefault(key, path)
        return key[0]

    def group(self, folder, pictures: str) -> tuple:
        """``load_examples``' group for them (``pictures``: "photos" or "images")."""
        one = pictures[:-1]
        return (self.copies,
                lambda p, detail: f"{p} is {detail[1:-1]} beside it, byte for byte: that {one} is trained twice as "
                                  f"often as the others; remove one of them",
                lambda n, names: f"{n} {pictures} in {folder} are byte-for-byte copies of another there ({names}): "
                                 f"each copy trains its {one} once more; remove the copies")
