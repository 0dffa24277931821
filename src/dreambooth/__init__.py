"""dreambooth: personalise Stable Diffusion 1.x/2.x and SDXL with DreamBooth, then generate and evaluate."""
import os as _os

# Keep the import quiet and offline-friendly; users can still override these.
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# transformers warns on every import that torchvision is missing; we never need it.
_os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"
