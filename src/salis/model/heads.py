"""Subclasses of torchvision's RPN and RoI heads.

- positive-only classification for pseudo-labeled images (TSP's semi-supervised loss): such an
  image's background anchors and background RoIs are marked "ignore" (-1) in the target
  assignment hooks, so only its positives contribute a classification loss; box and mask
  losses are unchanged.
- the class posterior of every final detection is kept, for uncertainty scores.
- optional box-IoU and mask-IoU heads (TSP). torchvision's RoIHeads.forward keeps the pooled
  RoI features in local variables, so `forward` is overridden for the box + mask path; target
  sampling, losses and post-processing still come from torchvision's own functions.
- a per-image embedding (the FPN levels average-pooled and concatenated, for core-set) on every
  inference output, and the optional loss-prediction module (learning loss), whose training
  needs per-image detector losses from the RPN and the RoI heads (see learning_loss.py).
- MC dropout at inference (`mc_samples` > 0): the backbone, FPN, RPN and the deterministic box
  and mask heads run once; then only the last layer of each head (box predictor, mask
  predictor) runs `mc_samples` times on the same features with dropout on its input. The
  stochastic passes start from the deterministic detections themselves (the box branch from
  the proposal each detection was regressed from, the mask branch from its final box), so
  every detection gets its own T posteriors, boxes and masks without matching detections
  across passes; at p = 0 every pass reproduces the deterministic detection exactly. The cost
  of that exactness: a detection cannot vanish in a pass (there is no occurrence term).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops

from salis.model.image_features import image_level_features
from salis.model.iou_heads import IoUHead, box_iou_targets, mask_iou_targets
from salis.model.learning_loss import (
    PREDICTED_LOSSES,
    ROI_IMAGE_LOSSES,
    RPN_IMAGE_LOSSES,
    LossPredictionModule,
    batch_mean,
    fastrcnn_loss_terms,
    maskrcnn_loss_terms,
    per_image,
    rpn_loss_terms,
)

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
    """RPN whose anchor targets honour the positive-only flag of pseudo-labeled images, and
    which reports each image's own loss when the model has a loss-prediction module."""

    @classmethod
    def from_stock(cls, rpn: RegionProposalNetwork, per_image_losses: bool = False) -> "SalisRPN":
        rpn.__class__ = cls
        rpn.per_image_losses = per_image_losses
        return rpn  # type: ignore[return-value]

    def forward(self, images, features, targets=None):  # type: ignore[override]
        self._flags = _positive_only_flags(targets)
        self._image_losses = None
        try:
            boxes, losses = super().forward(images, features, targets)
        finally:
            self._flags = []
        if self._image_losses is not None:
            losses[RPN_IMAGE_LOSSES], self._image_losses = self._image_losses, None
        return boxes, losses

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):  # type: ignore[override]
        if not getattr(self, "per_image_losses", False):
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        # the same anchors sampled once, reduced per image and over the batch (learning_loss.py)
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        obj, box, counts = rpn_loss_terms(objectness, pred_bbox_deltas, labels, regression_targets, sampled_pos, sampled_neg)
        self._image_losses = per_image(obj + box, counts)
        return batch_mean(obj, counts), batch_mean(box, counts)

    def assign_targets_to_anchors(self, anchors, targets):  # type: ignore[override]
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        flags = getattr(self, "_flags", []) or [False] * len(labels)
        return _ignore_background(labels, flags), matched_gt_boxes


class SalisRoIHeads(RoIHeads):
    """RoI heads with positive-only RoI sampling, per-detection class posteriors and IoU heads."""

    box_iou_head: IoUHead | None
    mask_iou_head: IoUHead | None
    loss_prediction: LossPredictionModule | None
    mc_samples: int = 0  # > 0: inference adds MC-dropout disagreement per detection (set by predict)

    @classmethod
    def from_stock(
        cls,
        heads: RoIHeads,
        iou_heads: bool = False,
        in_channels: int = 256,
        hidden: int = 128,
        mask_threshold: float = 0.3,
        iou_loss_weight: float = 1.0,
        mc_dropout_p: float = 0.5,
        mc_dropout_train: bool = False,
        learning_loss: bool = False,
        learning_loss_channels: int = 128,
        learning_loss_margin: float = 1.0,
        learning_loss_weight: float = 1.0,
    ) -> "SalisRoIHeads":
        heads.__class__ = cls
        heads.box_iou_head = IoUHead(in_channels, hidden) if iou_heads else None
        heads.mask_iou_head = IoUHead(in_channels, hidden) if iou_heads else None
        heads.iou_mask_threshold = mask_threshold
        heads.iou_loss_weight = iou_loss_weight
        heads.mc_dropout_p = mc_dropout_p
        heads.mc_dropout_train = mc_dropout_train
        heads.mc_samples = 0
        heads.loss_prediction = (
            LossPredictionModule(
                in_channels, len(heads.feature_levels), learning_loss_channels, learning_loss_margin, learning_loss_weight
            )
            if learning_loss
            else None
        )
        return heads  # type: ignore[return-value]

    @property
    def feature_levels(self) -> list[str]:
        """The FPN levels the RoI poolers read; embeddings and the loss module read the same."""
        return list(self.box_roi_pool.featmap_names)

    def image_features(self, features: dict[str, Tensor], image_shapes: list[tuple[int, int]]) -> list[Tensor]:
        return image_level_features(features, image_shapes, self.feature_levels)

    def _train_dropout(self, x: Tensor) -> Tensor:
        """Dropout on a head's last features while training, only with model.mc_dropout_train."""
        return F.dropout(x, self.mc_dropout_p, training=True) if self.mc_dropout_train else x

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

        all_boxes, all_scores, all_labels, self._posteriors, self._kept_proposals = [], [], [], [], []
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
            self._kept_proposals.append(proposal_index[keep])
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
        class_logits, box_regression = self.box_predictor(self._train_dropout(self.box_head(box_pooled)))

        positives = [torch.where(lab > 0)[0] for lab in labels]
        mask_rois = [p[pos] for p, pos in zip(proposals, positives)]
        mask_matched = [m[pos] for m, pos in zip(matched_idxs, positives)]
        mask_pooled = self.mask_roi_pool(features, mask_rois, image_shapes)
        mask_logits = self.mask_predictor(self._train_dropout(self.mask_head(mask_pooled)))
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]

        if self.loss_prediction is None:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            losses["loss_mask"] = maskrcnn_loss(mask_logits, mask_rois, gt_masks, gt_labels, mask_matched)
        else:
            # the same losses, reduced per image too: the loss-prediction module's targets
            cls, box, rois = fastrcnn_loss_terms(class_logits, box_regression, labels, regression_targets)
            mask, pixels = maskrcnn_loss_terms(mask_logits, mask_rois, gt_masks, gt_labels, mask_matched)
            losses = {
                "loss_classifier": batch_mean(cls, rois),
                "loss_box_reg": batch_mean(box, rois),
                "loss_mask": batch_mean(mask, pixels),
                ROI_IMAGE_LOSSES: per_image(cls + box, rois) + per_image(mask, pixels),
                PREDICTED_LOSSES: self.loss_prediction(self.image_features(features, image_shapes)),
            }

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
        box_features = self.box_head(box_pooled)
        class_logits, box_regression = self.box_predictor(box_features)
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        posteriors, self._posteriors = self._posteriors, []
        kept, self._kept_proposals = self._kept_proposals, []

        mask_pooled = self.mask_roi_pool(features, boxes, image_shapes)
        mask_features = self.mask_head(mask_pooled)
        mask_logits = self.mask_predictor(mask_features)
        mask_probs = maskrcnn_inference(mask_logits, labels)
        pooled = self.image_features(features, image_shapes)
        embeddings = torch.cat(pooled, dim=1)
        result = [
            {"boxes": b, "labels": lab, "scores": s, "masks": m, "class_posterior": p, "embedding": e}
            for b, lab, s, m, p, e in zip(boxes, labels, scores, mask_probs, posteriors, embeddings)
        ]
        if self.loss_prediction is not None:
            for detections, predicted in zip(result, self.loss_prediction(pooled)):
                detections["predicted_loss"] = predicted
        if self.has_iou_heads:
            counts = [len(b) for b in boxes]
            box_iou = self.box_iou_head(self.box_roi_pool(features, boxes, image_shapes)).split(counts)
            mask_iou = self.mask_iou_head(mask_pooled).split(counts)
            for detections, b, m in zip(result, box_iou, mask_iou):
                detections["box_iou"] = b
                detections["mask_iou"] = m
        if self.mc_samples > 0:
            passes = self._mc_dropout(box_features, proposals, kept, boxes, labels, mask_features, mask_logits, image_shapes)
            for detections, (class_var, box_dis, mask_dis) in zip(result, passes):
                detections["mc_class_var"] = class_var
                detections["mc_box_disagreement"] = box_dis
                detections["mc_mask_disagreement"] = mask_dis
        return result, {}

    def _mc_dropout(
        self, box_features, proposals, kept, boxes, labels, mask_features, mask_logits, image_shapes
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image and detection, over `mc_samples` passes with dropout on the box predictor's
        and the mask predictor's input (F.dropout with training=True: BatchNorm stays in eval):
        the class posterior's variance summed over classes, 1 - mean IoU of the pass's box with
        the deterministic box, 1 - mean IoU of the pass's mask with the deterministic mask (both
        masks binarised at 0.5 on the RoI grid; two empty masks agree)."""
        counts = [len(b) for b in boxes]
        n = sum(counts)
        if n == 0:
            empty = box_features.new_zeros(0)
            return [(empty, empty, empty) for _ in counts]
        per_image_features = box_features.split([len(p) for p in proposals])
        source_features = torch.cat([f[k] for f, k in zip(per_image_features, kept)])
        source_proposals = [p[k] for p, k in zip(proposals, kept)]
        label = torch.cat(labels)
        rows = torch.arange(n, device=label.device)
        reference_boxes = torch.cat(boxes)
        reference_masks = mask_logits[rows, label] >= 0  # sigmoid >= 0.5
        p, passes = self.mc_dropout_p, self.mc_samples

        posteriors = []
        box_iou_sum = reference_boxes.new_zeros(n, dtype=torch.float32)
        mask_iou_sum = torch.zeros_like(box_iou_sum)
        for _ in range(passes):
            logits, regression = self.box_predictor(F.dropout(source_features, p, training=True))
            posteriors.append(F.softmax(logits.float(), -1))
            decoded = self.box_coder.decode(regression, source_proposals)[rows, label]
            pass_boxes = torch.cat(
                [box_ops.clip_boxes_to_image(b, s) for b, s in zip(decoded.split(counts), image_shapes)]
            )
            box_iou_sum += paired_box_iou(pass_boxes.float(), reference_boxes.float())
            pass_masks = self.mask_predictor(F.dropout(mask_features, p, training=True))[rows, label] >= 0
            mask_iou_sum += paired_mask_iou(pass_masks, reference_masks)
        class_var = torch.stack(posteriors).var(dim=0, unbiased=False).sum(dim=1)
        box_dis = 1.0 - box_iou_sum / passes
        mask_dis = 1.0 - mask_iou_sum / passes
        return list(zip(class_var.split(counts), box_dis.split(counts), mask_dis.split(counts)))


def paired_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of row i of `a` with row i of `b` (xyxy boxes); no N x N matrix."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(dim=1)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.ones_like(union))


def paired_mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boolean mask i of `a` with mask i of `b`; two empty masks count as agreeing (1)."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))
