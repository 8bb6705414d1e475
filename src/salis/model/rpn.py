"""salis's RPN: torchvision's, with positive-only anchor targets for pseudo-labeled images and,
when the model has a loss-prediction module, each image's own loss (see learning_loss.py)."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchvision.models.detection.rpn import RegionProposalNetwork

from salis.model.learning_loss import RPN_IMAGE_LOSSES, batch_mean, per_image, rpn_loss_terms
from salis.model.positive_only import PositiveOnlyTargets


class SalisRPN(PositiveOnlyTargets, RegionProposalNetwork):
    def __init__(self, *args: Any, per_image_losses: bool = False, **kwargs: Any) -> None:
        """RegionProposalNetwork's arguments; per_image_losses adds RPN_IMAGE_LOSSES to the losses."""
        super().__init__(*args, **kwargs)
        self.per_image_losses = per_image_losses
        self._image_losses: Tensor | None = None  # handed from compute_loss to forward

    @classmethod
    def from_torchvision(cls, stock: RegionProposalNetwork, per_image_losses: bool = False) -> SalisRPN:
        """A SalisRPN with the submodules and settings of `stock` (as MaskRCNN's constructor built it)."""
        return cls(
            stock.anchor_generator,
            stock.head,
            fg_iou_thresh=stock.proposal_matcher.high_threshold,
            bg_iou_thresh=stock.proposal_matcher.low_threshold,
            batch_size_per_image=stock.fg_bg_sampler.batch_size_per_image,
            positive_fraction=stock.fg_bg_sampler.positive_fraction,
            pre_nms_top_n=dict(stock._pre_nms_top_n),
            post_nms_top_n=dict(stock._post_nms_top_n),
            nms_thresh=stock.nms_thresh,
            score_thresh=stock.score_thresh,
            per_image_losses=per_image_losses,
        )

    def forward(self, images, features, targets=None):  # type: ignore[override]
        self._image_losses = None
        with self.positive_only(targets):
            boxes, losses = super().forward(images, features, targets)
        if self._image_losses is not None:
            losses[RPN_IMAGE_LOSSES], self._image_losses = self._image_losses, None
        return boxes, losses

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):  # type: ignore[override]
        if not self.per_image_losses:
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        # the same anchors sampled once, reduced per image and over the batch (learning_loss.py)
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        obj, box, counts = rpn_loss_terms(objectness, pred_bbox_deltas, labels, regression_targets, sampled_pos, sampled_neg)
        self._image_losses = per_image(obj + box, counts)
        return batch_mean(obj, counts), batch_mean(box, counts)

    def assign_targets_to_anchors(self, anchors, targets):  # type: ignore[override]
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        return self.ignore_flagged_background(labels, anchors), matched_gt_boxes
