"""Training: the typed config and presets (``config``), data and loss masks (``data``, ``masks``),
class images (``prior``), what trains (``trainables``), the one loop (``trainer``), its callbacks
(``callbacks``), checkpoints (``checkpoint``), outputs (``saving``) and validation (``validation``,
``curves``)."""
from .callbacks import TrainingCallback, TrainResult
from .config import TrainConfig, build_config
from .results import summary
from .trainer import Trainer, train

__all__ = ["TrainConfig", "TrainResult", "Trainer", "TrainingCallback", "build_config", "summary", "train"]
