"""The whole Mask R-CNN: torchvision's MaskRCNN with salis's RPN, RoI heads and transform; turns
their per-image losses into the loss-prediction module's ranking loss (learning loss), when the
model has that module."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from salis.model.heads import IMAGE_RGB, MASK_FROM_BOX, OWN_LABELS, RoIHeadsParts, SalisRoIHeads, target_flags
from salis.model.learning_loss import PREDICTED_LOSSES, ROI_IMAGE_LOSSES, RPN_IMAGE_LOSSES
from salis.model.positive_only import UNCERTAIN_BOXES, positive_only_flags
from salis.model.rpn import SalisRPN


class SalisTransform(GeneralizedRCNNTransform):
    """torchvision's transform; a box-labeled image's target also gets the resized image in [0, 1]
    (IMAGE_RGB), which BoxInst's pairwise colour term reads on the RoI grid, and a pseudo-labeled
    image's UNCERTAIN_BOXES are resized with its boxes."""

    @classmethod
    def from_torchvision(cls, stock: GeneralizedRCNNTransform) -> SalisTransform:
        return cls(stock.min_size, stock.max_size, stock.image_mean, stock.image_std,
                   size_divisible=stock.size_divisible, fixed_size=stock.fixed_size)

    def forward(self, images, targets=None):  # type: ignore[override]
        originals = [image.shape[-2:] for image in images]
        image_list, targets = super().forward(images, targets)
        if targets is not None:  # torchvision resizes "boxes" only; a pseudo image's uncertain boxes alike
            for target, before, after in zip(targets, originals, image_list.image_sizes):
                if target.get(UNCERTAIN_BOXES) is not None:
                    target[UNCERTAIN_BOXES] = resize_boxes(target[UNCERTAIN_BOXES], before, after)
        if targets is not None and any(target_flags(targets, MASK_FROM_BOX)):
            tensors = image_list.tensors
            mean = torch.as_tensor(self.image_mean, dtype=tensors.dtype, device=tensors.device)[:, None, None]
            std = torch.as_tensor(self.image_std, dtype=tensors.dtype, device=tensors.device)[:, None, None]
            for i, target in enumerate(targets):
                if bool(target.get(MASK_FROM_BOX, False)):
                    h, w = image_list.image_sizes[i]
                    target[IMAGE_RGB] = (tensors[i, :, :h, :w] * std + mean).clamp(0.0, 1.0)
        return image_list, targets


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
        self.transform = SalisTransform.from_torchvision(self.transform)

    def forward(self, images, targets=None):  # type: ignore[override]
        out = super().forward(images, targets)
        if not self.training or PREDICTED_LOSSES not in out:
            return out
        predicted = out.pop(PREDICTED_LOSSES)
        # the target is each image's detector loss, with no gradient (as in the paper)
        target = (out.pop(RPN_IMAGE_LOSSES) + out.pop(ROI_IMAGE_LOSSES)).detach()
        # pseudo-labeled images' "loss" is measured against the model's own output: not ranked
        # (and so are images whose targets the model made itself)
        mine = [p or own for p, own in zip(positive_only_flags(targets), target_flags(targets, OWN_LABELS))]
        expert = torch.tensor([not flag for flag in mine], device=predicted.device)
        out["loss_learning_loss"] = self.roi_heads.loss_prediction.ranking_loss(predicted[expert], target[expert])
        return out
