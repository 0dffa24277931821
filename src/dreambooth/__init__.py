"""dreambooth: personalise Stable Diffusion 1.x/2.x and SDXL with DreamBooth, then generate and evaluate."""
import os as _os

# tokenizers' threads and our data loading's would fight (and it warns after a fork); users can override it.
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
