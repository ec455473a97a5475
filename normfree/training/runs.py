"""The import path `evaluate_checkpoint` had before the training floor's rooms were named
(checkpoint_eval.py holds it now); scripts and the compatibility tests still use it."""

from .checkpoint_eval import evaluate_checkpoint

__all__ = ["evaluate_checkpoint"]
