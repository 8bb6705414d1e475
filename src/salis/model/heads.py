"""Subclasses of torchvision's RPN and RoI heads.

- positive-only classification for pseudo-labeled images (TSP's semi-supervised loss): such an
  image's background anchors and background RoIs are marked "ignore" (-1) in the target
  assignment hooks, so only its positives contribute a classification loss; box and mask
  losses are unchanged.
- the class posterior of every final detection is kept, for uncertainty scores.
- optional box-IoU and mask-IoU heads (TSP). torchvision's RoIHeads.forward keeps the pooled
  RoI features in local variables, so `forward` is overridden for the box + mask path; target
  sampling, losses and post-processing still come from torchvision's own functions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops

from salis.model.iou_heads import IoUHead, box_iou_targets, mask_iou_targets

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
    """RoI heads with positive-only RoI sampling, per-detection class posteriors and IoU heads."""

    box_iou_head: IoUHead | None
    mask_iou_head: IoUHead | None

    @classmethod
    def from_stock(
        cls,
        heads: RoIHeads,
        iou_heads: bool = False,
        in_channels: int = 256,
        hidden: int = 128,
        mask_threshold: float = 0.3,
        iou_loss_weight: float = 1.0,
    ) -> "SalisRoIHeads":
        heads.__class__ = cls
        heads.box_iou_head = IoUHead(in_channels, hidden) if iou_heads else None
        heads.mask_iou_head = IoUHead(in_channels, hidden) if iou_heads else None
        heads.iou_mask_threshold = mask_threshold
        heads.iou_loss_weight = iou_loss_weight
        return heads  # type: ignore[return-value]

    @property
    def has_iou_heads(self) -> bool:
        return self.box_iou_head is not None and self.mask_iou_head is not None

    # --- target assignment hooks -------------------------------------------------------

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

    # --- forward -----------------------------------------------------------------------

    def forward(self, features, proposals, image_shapes, targets=None):  # type: ignore[override]
        if self.has_keypoint():
            raise NotImplementedError("salis builds Mask R-CNN without a keypoint branch")
        if self.training:
            return self._forward_train(features, proposals, image_shapes, targets)
        return self._forward_inference(features, proposals, image_shapes)

    def _forward_train(self, features, proposals, image_shapes, targets):
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_pooled = self.box_roi_pool(features, proposals, image_shapes)
        class_logits, box_regression = self.box_predictor(self.box_head(box_pooled))
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

        positives = [torch.where(lab > 0)[0] for lab in labels]
        mask_rois = [p[pos] for p, pos in zip(proposals, positives)]
        mask_matched = [m[pos] for m, pos in zip(matched_idxs, positives)]
        mask_pooled = self.mask_roi_pool(features, mask_rois, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(mask_pooled))
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        losses["loss_mask"] = maskrcnn_loss(mask_logits, mask_rois, gt_masks, gt_labels, mask_matched)

        if self.has_iou_heads:
            losses.update(
                self._iou_losses(
                    features, image_shapes, targets, proposals, labels, positives,
                    box_regression, mask_rois, mask_matched, mask_pooled, mask_logits,
                )
            )
        return [], losses

    def _iou_losses(
        self, features, image_shapes, targets, proposals, labels, positives,
        box_regression, mask_rois, mask_matched, mask_pooled, mask_logits,
    ) -> dict[str, Tensor]:
        """L2 losses of both IoU heads on the positive RoIs of expert-labeled images only.

        Pseudo-labeled images (positive_only) give no IoU-head loss: their "ground truth" is
        the model's own output. Targets carry no gradient.
        """
        flags = _positive_only_flags(targets)
        boxes_per_image = [len(p) for p in proposals]
        decoded = self.box_coder.decode(box_regression.detach(), proposals).split(boxes_per_image, 0)
        mask_counts = [len(r) for r in mask_rois]
        mask_logits_per_image = mask_logits.split(mask_counts, 0)
        mask_pooled_per_image = mask_pooled.split(mask_counts, 0)

        pred_boxes, box_targets, mask_inputs, mask_targets = [], [], [], []
        for i, target in enumerate(targets):
            pos = positives[i]
            if flags[i] or len(pos) == 0:
                pred_boxes.append(decoded[i].new_zeros((0, 4)))
                continue
            cls = labels[i][pos]
            boxes = box_ops.clip_boxes_to_image(decoded[i][pos, cls], image_shapes[i])
            pred_boxes.append(boxes)
            box_targets.append(box_iou_targets(boxes, target["boxes"][mask_matched[i]]))
            probs = mask_logits_per_image[i][torch.arange(len(pos), device=cls.device), cls].detach().sigmoid()
            mask_targets.append(
                mask_iou_targets(probs, mask_rois[i], target["masks"], mask_matched[i], self.iou_mask_threshold)
            )
            mask_inputs.append(mask_pooled_per_image[i])

        # the box-IoU head looks at the predicted box, the same input it sees at inference
        box_pred = self.box_iou_head(self.box_roi_pool(features, pred_boxes, image_shapes))
        if not box_targets:
            zero = box_pred.sum() * 0.0 + self.mask_iou_head(mask_pooled[:0]).sum() * 0.0
            return {"loss_box_iou": zero, "loss_mask_iou": zero}
        mask_pred = self.mask_iou_head(torch.cat(mask_inputs))
        weight = self.iou_loss_weight
        return {
            "loss_box_iou": weight * F.mse_loss(box_pred, torch.cat(box_targets)),
            "loss_mask_iou": weight * F.mse_loss(mask_pred, torch.cat(mask_targets)),
        }

    def _forward_inference(self, features, proposals, image_shapes):
        box_pooled = self.box_roi_pool(features, proposals, image_shapes)
        class_logits, box_regression = self.box_predictor(self.box_head(box_pooled))
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        posteriors, self._posteriors = self._posteriors, []

        mask_pooled = self.mask_roi_pool(features, boxes, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(mask_pooled))
        mask_probs = maskrcnn_inference(mask_logits, labels)
        result = [
            {"boxes": b, "labels": lab, "scores": s, "masks": m, "class_posterior": p}
            for b, lab, s, m, p in zip(boxes, labels, scores, mask_probs, posteriors)
        ]
        if self.has_iou_heads:
            counts = [len(b) for b in boxes]
            box_iou = self.box_iou_head(self.box_roi_pool(features, boxes, image_shapes)).split(counts)
            mask_iou = self.mask_iou_head(mask_pooled).split(counts)
            for detections, b, m in zip(result, box_iou, mask_iou):
                detections["box_iou"] = b
                detections["mask_iou"] = m
        return result, {}
