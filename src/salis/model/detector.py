"""The whole Mask R-CNN: torchvision's MaskRCNN with salis's RPN and RoI heads; turns their
per-image losses into the loss-prediction module's ranking loss (learning loss), when the model
has that module."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN

from salis.model.heads import RoIHeadsParts, SalisRoIHeads
from salis.model.learning_loss import PREDICTED_LOSSES, ROI_IMAGE_LOSSES, RPN_IMAGE_LOSSES
from salis.model.positive_only import positive_only_flags
from salis.model.rpn import SalisRPN


class SalisMaskRCNN(MaskRCNN):
    rpn: SalisRPN
    roi_heads: SalisRoIHeads

    def __init__(self, backbone: nn.Module, num_classes: int | None = None, *, parts: RoIHeadsParts | None = None,
                 **kwargs: Any) -> None:
        """MaskRCNN's arguments, plus salis's parts of the RoI heads."""
        super().__init__(backbone, num_classes, **kwargs)
        parts = parts or RoIHeadsParts()
        # MaskRCNN's constructor hard-codes the stock RPN and RoI heads; they own nothing but the
        # submodules handed to it, so salis's subclasses are built around the same ones
        self.rpn = SalisRPN.from_torchvision(self.rpn, per_image_losses=parts.loss_prediction is not None)
        self.roi_heads = SalisRoIHeads.from_torchvision(self.roi_heads, parts)

    def forward(self, images, targets=None):  # type: ignore[override]
        out = super().forward(images, targets)
        if not self.training or PREDICTED_LOSSES not in out:
            return out
        predicted = out.pop(PREDICTED_LOSSES)
        # the target is each image's detector loss, with no gradient (as in the paper)
        target = (out.pop(RPN_IMAGE_LOSSES) + out.pop(ROI_IMAGE_LOSSES)).detach()
        # pseudo-labeled images' "loss" is measured against the model's own output: not ranked
        expert = torch.tensor([not flag for flag in positive_only_flags(targets)], device=predicted.device)
        out["loss_learning_loss"] = self.roi_heads.loss_prediction.ranking_loss(predicted[expert], target[expert])
        return out
