"""salis: semi-supervised active learning for instance segmentation."""

__version__ = "0.1.0"
