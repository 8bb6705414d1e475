"""Mask R-CNN for salis: a compact torchvision model whose RPN and RoI heads are subclassed.

No re-exports here: each stage imports the modules it uses (see tests/test_dvc_deps.py).
"""
