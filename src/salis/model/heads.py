"""Subclasses of torchvision's RPN and RoI heads.

Two hooks are extended, nothing is copied wholesale:
- positive-only classification for pseudo-labeled images (TSP's semi-supervised loss): such an
  image's background anchors and background RoIs are marked "ignore" (-1), so only its
  positives contribute a classification loss; box and mask losses are unchanged.
- the class posterior of every final detection is kept, for uncertainty scores.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops

POSITIVE_ONLY = "positive_only"  # target key: True for a pseudo-labeled image


def _positive_only_flags(targets: list[dict[str, Any]] | None) -> list[bool]:
    if targets is None:
        return []
    return [bool(t.get(POSITIVE_ONLY, False)) for t in targets]


def _ignore_background(labels: list[Tensor], flags: list[bool]) -> list[Tensor]:
    """Turn background (0) into ignore (-1) for the flagged images; samplers then skip them."""
    out = []
    for labels_in_image, positive_only in zip(labels, flags):
        if positive_only:
            labels_in_image = labels_in_image.clone()
            labels_in_image[labels_in_image == 0] = -1
        out.append(labels_in_image)
    return out


class SalisRPN(RegionProposalNetwork):
    """RPN whose anchor targets honour the positive-only flag of pseudo-labeled images."""

    @classmethod
    def from_stock(cls, rpn: RegionProposalNetwork) -> "SalisRPN":
        rpn.__class__ = cls
        return rpn  # type: ignore[return-value]

    def forward(self, images, features, targets=None):  # type: ignore[override]
        self._flags = _positive_only_flags(targets)
        try:
            return super().forward(images, features, targets)
        finally:
            self._flags = []

    def assign_targets_to_anchors(self, anchors, targets):  # type: ignore[override]
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        flags = getattr(self, "_flags", []) or [False] * len(labels)
        return _ignore_background(labels, flags), matched_gt_boxes


class SalisRoIHeads(RoIHeads):
    """RoI heads with positive-only RoI sampling and per-detection class posteriors."""

    @classmethod
    def from_stock(cls, heads: RoIHeads) -> "SalisRoIHeads":
        heads.__class__ = cls
        return heads  # type: ignore[return-value]

    def select_training_samples(self, proposals, targets):  # type: ignore[override]
        self._flags = _positive_only_flags(targets)
        try:
            return super().select_training_samples(proposals, targets)
        finally:
            self._flags = []

    def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):  # type: ignore[override]
        matched_idxs, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        flags = getattr(self, "_flags", []) or [False] * len(labels)
        return matched_idxs, _ignore_background(labels, flags)

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):  # type: ignore[override]
        """torchvision's post-processing, also returning each kept detection's class posterior.

        The stock hook drops the index of the proposal a detection came from, so the full
        softmax cannot be recovered afterwards; this override keeps it (same steps, same order).
        """
        device = class_logits.device
        num_classes = class_logits.shape[-1]
        boxes_per_image = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals).split(boxes_per_image, 0)
        posteriors = F.softmax(class_logits, -1).split(boxes_per_image, 0)

        all_boxes, all_scores, all_labels, self._posteriors = [], [], [], []
        for boxes, post, image_shape in zip(pred_boxes, posteriors, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=device).view(1, -1).expand_as(post)
            proposal_index = torch.arange(post.shape[0], device=device).view(-1, 1).expand_as(post)
            # drop the background column, then flatten: one candidate per (proposal, class)
            boxes = boxes[:, 1:].reshape(-1, 4)
            scores = post[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            proposal_index = proposal_index[:, 1:].reshape(-1)

            keep = torch.where(scores > self.score_thresh)[0]
            keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
            keep = keep[box_ops.batched_nms(boxes[keep], scores[keep], labels[keep], self.nms_thresh)]
            keep = keep[: self.detections_per_img]

            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
            self._posteriors.append(post[proposal_index[keep]])
        return all_boxes, all_scores, all_labels

    def forward(self, features, proposals, image_shapes, targets=None):  # type: ignore[override]
        result, losses = super().forward(features, proposals, image_shapes, targets)
        if not self.training:
            for detections, posterior in zip(result, self._posteriors):
                detections["class_posterior"] = posterior
            self._posteriors = []
        return result, losses
