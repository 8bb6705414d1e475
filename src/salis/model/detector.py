"""The whole Mask R-CNN: turns the per-image losses of the RPN and RoI heads into the
loss-prediction module's ranking loss (learning loss), when the model has that module."""

from __future__ import annotations

import torch
from torchvision.models.detection import MaskRCNN

from salis.model.heads import _positive_only_flags
from salis.model.learning_loss import PREDICTED_LOSSES, ROI_IMAGE_LOSSES, RPN_IMAGE_LOSSES


class SalisMaskRCNN(MaskRCNN):
    @classmethod
    def from_stock(cls, model: MaskRCNN) -> "SalisMaskRCNN":
        model.__class__ = cls
        return model  # type: ignore[return-value]

    def forward(self, images, targets=None):  # type: ignore[override]
        out = super().forward(images, targets)
        if not self.training or PREDICTED_LOSSES not in out:
            return out
        predicted = out.pop(PREDICTED_LOSSES)
        # the target is each image's detector loss, with no gradient (as in the paper)
        target = (out.pop(RPN_IMAGE_LOSSES) + out.pop(ROI_IMAGE_LOSSES)).detach()
        # pseudo-labeled images' "loss" is measured against the model's own output: not ranked
        expert = torch.tensor([not flag for flag in _positive_only_flags(targets)], device=predicted.device)
        out["loss_learning_loss"] = self.roi_heads.loss_prediction.ranking_loss(predicted[expert], target[expert])
        return out
