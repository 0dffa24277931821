"""Models: what a spec names (``specs``), loading (``loading``), what differs between SD1, SD2 and
SDXL (``families``), LoRA adapters and their file formats (``lora``), single-file export
(``single_file``), WebUI hashes (``hashes``), rare identifiers (``tokens``, ``identifier``)."""
from .families import adapter_for, detect_family, family_of
from .loading import load_pipeline, load_vae
from .specs import TOY_MODEL_DIR, ModelRef, resolve_model

__all__ = ["ModelRef", "TOY_MODEL_DIR", "adapter_for", "detect_family", "family_of", "load_pipeline", "load_vae",
           "resolve_model"]
