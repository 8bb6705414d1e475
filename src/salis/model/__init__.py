"""Mask R-CNN for salis: a compact torchvision model whose RPN and RoI heads are subclassed."""

from salis.model.build import build_model
from salis.model.checkpoint import load_checkpoint, load_initial_weights, save_checkpoint

__all__ = ["build_model", "load_checkpoint", "load_initial_weights", "save_checkpoint"]
