"""What training does with photos that kohya's sd-scripts would treat otherwise, said once per run.

* No aspect-ratio buckets: every photo is resized so its short side is the training size, and each
  step trains one square crop of it (random, or the middle with ``--center-crop``). A tall phone shot
  (2:1) thus shows half of itself per step, which a kohya user expects to train whole in its bucket.
* kohya's repeat folders (``img/10_sks dog``): the ``10_`` repeat count is not read; every photo is
  drawn equally often (one permutation per epoch), and ``--max-steps`` sets the run's length.
"""
from __future__ import annotations

import re

FAR_FROM_SQUARE = 4 / 3 + 0.01       # a phone's 4:3 is not said; 3:2, 16:9 and tall shots are
REPEAT_PREFIX = re.compile(r"^(\d+)_(.+)$")        # kohya's "<repeats>_<prompt>" folder names


def photo_notes(examples: list, size: int, center_crop: bool) -> list[str]:
    """The lines to say about the instance photos (``data.Example``), before training."""
    notes = []
    far = [(e, max(e.original_hw) / min(e.original_hw)) for e in examples if min(e.original_hw) > 0
           and max(e.original_hw) / min(e.original_hw) > FAR_FROM_SQUARE]
    if far:
        names = ", ".join(f"{getattr(e.path, 'name', '?')} {e.original_hw[1]}x{e.original_hw[0]}" for e, _ in far[:3])
        names += f" and {len(far) - 3} more" if len(far) > 3 else ""
        crop = "the middle" if center_crop else "a random"
        notes.append(f"{len(far)} photo(s) far from square ({names}): there are no aspect-ratio buckets here; each step "
                     f"trains {crop} {size}x{size} crop of a photo resized to {size} on its short side, as little as "
                     f"{1 / max(r for _, r in far):.0%} of its long side; crop them square around the subject to train "
                     "all of it")
    folder = getattr(examples[0].path, "parent", None) if examples else None
    repeats = REPEAT_PREFIX.match(folder.name) if folder is not None else None
    if repeats:
        notes.append(f"--instance-dir '{folder}': kohya's repeat count ({repeats.group(1)}_) is not used; every photo "
                     "is shown equally often and --max-steps sets the run's length (the prompt is --instance-prompt, "
                     "not the folder's name)")
    return notes
