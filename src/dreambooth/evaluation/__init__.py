"""Evaluation as in the DreamBooth paper: the evaluation models (``encoders``), the metrics DINO,
CLIP-I, CLIP-T, PRES and DIV (``metrics``), the prompts of generated images (``prompts``), and the
DreamBench protocol for one subject (``dreambench``, ``report``)."""
from .metrics import Evaluator, evaluate_dirs, format_summary

__all__ = ["Evaluator", "evaluate_dirs", "format_summary"]
