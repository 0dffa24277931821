"""Generation as in the AUTOMATIC1111 WebUI: one parameter type (``params``), the prompt grammar
(``grammar``) and conditioning (``conditioning``), samplers (``samplers``), the infotext
(``infotext``), models ready to sample (``pipeline``, ``loras``), the one sampling function
(``sampling.generate``), and prompt matrix / X/Y/Z plots on top of it (``xyz``)."""
from .params import GenerationParams
from .pipeline import GenerationPipeline, load_generation_pipeline
from .sampling import GeneratedImage, generate

__all__ = ["GeneratedImage", "GenerationParams", "GenerationPipeline", "generate", "load_generation_pipeline"]
