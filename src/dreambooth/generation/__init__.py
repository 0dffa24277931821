"""Generation as in the AUTOMATIC1111 WebUI: one parameter type (``params``), the prompt grammar
(``grammar``), conditioning (``conditioning``) and ``AND`` (``composable``), samplers (``samplers``), the
infotext (``infotext``; what an image records: ``recorded``; a plot's grid: ``xyz_infotext``), models
ready to sample (``pipeline``, ``loras``), the one sampling function (``sampling.generate``), and prompt
matrix / X/Y/Z plots on top of it (``xyz``)."""
from .params import GenerationParams
from .pipeline import GenerationPipeline, load_generation_pipeline
from .sampling import GeneratedImage, generate

__all__ = ["GeneratedImage", "GenerationParams", "GenerationPipeline", "generate", "load_generation_pipeline"]
