"""salis's RoI heads: torchvision's RoIHeads with salis's parts, the forward split by branch as in
detectron2's StandardROIHeads.

- box and mask branches: torchvision's poolers, heads and predictors. torchvision's forward keeps
  the pooled RoI features in local variables, so `forward` is overridden to keep them for the
  other branches; target sampling, losses and post-processing stay torchvision's functions.
- positive-only RoI sampling for pseudo-labeled images (positive_only.py).
- IoU branch (TSP, iou_heads.py): box-IoU and mask-IoU heads.
- loss prediction (learning loss, learning_loss.py), and a per-image embedding (the FPN levels
  average-pooled and concatenated, for core-set) on every inference output.
- MC dropout at inference (mc_dropout.py), on for the forwards inside `mc_dropout(passes, p)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_inference,
    maskrcnn_loss,
    project_masks_on_boxes,
)
from torchvision.ops import boxes as box_ops

from salis.model.box_supervision import box_mask_losses, rgb_to_lab, roi_colors

from salis.model.detections import Detections, postprocess_detections
from salis.model.image_features import image_level_features
from salis.model.iou_heads import (
    IoUHead,
    IoUHeads,
    IoUTraining,
    best_box_ious,
    box_iou_targets,
    jittered_boxes,
    mask_iou_targets,
)
from salis.model.learning_loss import (
    PREDICTED_LOSSES,
    ROI_IMAGE_LOSSES,
    LossPredictionModule,
    batch_mean,
    fastrcnn_loss_terms,
    maskrcnn_loss_terms,
    per_image,
)
from salis.model.mc_dropout import MCDropout, MCSources, mc_disagreement
from salis.model.positive_only import POSITIVE_ONLY, PositiveOnlyTargets, positive_only_flags

__all__ = ["MASK_FROM_BOX", "OWN_LABELS", "POSITIVE_ONLY", "BoxSupervision", "RoIHeadsParts", "SalisRoIHeads"]

# target keys, besides torchvision's and POSITIVE_ONLY:
MASK_FROM_BOX = "mask_from_box"  # True: a box-labeled image; its "masks" are the filled boxes
OWN_LABELS = "own_labels"  # True: targets made from the model's own outputs (no IoU-head loss)
IMAGE_RGB = "image_rgb"  # the resized image in [0, 1], added by SalisTransform for box-labeled images


def target_flags(targets, key: str) -> list[bool]:
    return [bool(t.get(key, False)) for t in targets] if targets is not None else []


@dataclasses.dataclass(frozen=True)
class BoxSupervision:
    """BoxInst's loss weights for box-labeled images (train.box_*); a training setting."""

    projection_weight: float = 1.0
    pairwise_weight: float = 1.0
    color_tau: float = 0.3


@dataclasses.dataclass(frozen=True, eq=False)
class RoIHeadsParts:
    """What salis adds to torchvision's RoI heads; every part is optional."""

    iou: IoUHeads | None = None
    loss_prediction: LossPredictionModule | None = None
    train_dropout_p: float = 0.0  # dropout on the box and mask heads' features while training; 0 = off
    box_supervision: BoxSupervision = BoxSupervision()  # BoxInst's loss weights for box-labeled images


@dataclasses.dataclass(frozen=True, eq=False)
class RoISamples:
    """select_training_samples' output, and the positives the mask branch trains on."""

    proposals: list[Tensor]
    matched_idxs: list[Tensor]
    labels: list[Tensor]
    regression_targets: list[Tensor]
    positives: list[Tensor]  # per image: indices of the foreground RoIs
    mask_rois: list[Tensor]
    mask_matched: list[Tensor]

    @classmethod
    def of(cls, proposals: list[Tensor], matched_idxs: list[Tensor], labels: list[Tensor],
           regression_targets: list[Tensor]) -> RoISamples:
        positives = [torch.where(lab > 0)[0] for lab in labels]
        return cls(
            proposals, matched_idxs, labels, regression_targets, positives,
            [p[pos] for p, pos in zip(proposals, positives)],
            [m[pos] for m, pos in zip(matched_idxs, positives)],
        )


@dataclasses.dataclass(frozen=True, eq=False)
class BoxBranch:
    proposals: list[Tensor]
    features: Tensor  # the box head's output (no training dropout): MC dropout's input
    class_logits: Tensor
    regression: Tensor


@dataclasses.dataclass(frozen=True, eq=False)
class MaskBranch:
    rois: list[Tensor]  # training: the positive proposals; inference: the final boxes
    pooled: Tensor  # the mask pooler's output: the mask-IoU head's input
    features: Tensor  # the mask head's output (no training dropout): MC dropout's input
    logits: Tensor


@dataclasses.dataclass(frozen=True)
class MaskOutput:
    """Which detections' masks inference computes: class score >= min_score (None: all)."""

    min_score: float | None = None


class SalisRoIHeads(PositiveOnlyTargets, RoIHeads):
    box_iou_head: IoUHead | None
    mask_iou_head: IoUHead | None
    loss_prediction: LossPredictionModule | None

    def __init__(self, *args: Any, parts: RoIHeadsParts | None = None, **kwargs: Any) -> None:
        """RoIHeads' arguments, plus salis's parts."""
        super().__init__(*args, **kwargs)
        parts = parts or RoIHeadsParts()
        iou = parts.iou
        # attributes, not a container module: the checkpoints' keys are roi_heads.box_iou_head.* etc.
        self.box_iou_head = iou.box if iou else None
        self.mask_iou_head = iou.mask if iou else None
        self.iou_training = iou.training if iou else IoUTraining()  # what the heads train on
        self.loss_prediction = parts.loss_prediction
        self.train_dropout_p = parts.train_dropout_p
        self.mc_settings = MCDropout()  # an inference setting: see mc_dropout()
        self.mask_settings = MaskOutput()  # an inference setting: see masks_from()
        self.box_supervision = parts.box_supervision
        # set by the training loop each iteration (train.box_pairwise_warmup): the share of the
        # pairwise weight in force, ramping 0 -> 1 as AdelaiDet's BoxInst does
        self.pairwise_ramp = 1.0

    @classmethod
    def from_torchvision(cls, stock: RoIHeads, parts: RoIHeadsParts | None = None) -> SalisRoIHeads:
        """SalisRoIHeads with the submodules and settings of `stock` (as MaskRCNN's constructor built it)."""
        if stock.has_keypoint():
            raise ValueError("salis builds Mask R-CNN without a keypoint branch")
        return cls(
            stock.box_roi_pool,
            stock.box_head,
            stock.box_predictor,
            fg_iou_thresh=stock.proposal_matcher.high_threshold,
            bg_iou_thresh=stock.proposal_matcher.low_threshold,
            batch_size_per_image=stock.fg_bg_sampler.batch_size_per_image,
            positive_fraction=stock.fg_bg_sampler.positive_fraction,
            bbox_reg_weights=stock.box_coder.weights,
            score_thresh=stock.score_thresh,
            nms_thresh=stock.nms_thresh,
            detections_per_img=stock.detections_per_img,
            mask_roi_pool=stock.mask_roi_pool,
            mask_head=stock.mask_head,
            mask_predictor=stock.mask_predictor,
            parts=parts,
        )

    @property
    def feature_levels(self) -> list[str]:
        """The FPN levels the RoI poolers read; embeddings and the loss module read the same."""
        return list(self.box_roi_pool.featmap_names)

    def image_features(self, features: dict[str, Tensor], image_shapes: list[tuple[int, int]]) -> list[Tensor]:
        return image_level_features(features, image_shapes, self.feature_levels)

    @property
    def has_iou_heads(self) -> bool:
        return self.box_iou_head is not None and self.mask_iou_head is not None

    @contextmanager
    def mc_dropout(self, passes: int, p: float) -> Iterator[None]:
        """Inference inside the block adds `passes` MC-dropout passes with dropout `p` per detection;
        the previous setting comes back on leaving it, also on an exception."""
        previous, self.mc_settings = self.mc_settings, MCDropout(passes, p)
        try:
            yield
        finally:
            self.mc_settings = previous

    @contextmanager
    def masks_from(self, min_score: float | None) -> Iterator[None]:
        """Inside the block, inference runs the mask head only on detections with class score >=
        `min_score` and returns their masks at RoI resolution (see _mask_outputs); None: every
        detection's mask, pasted. The previous setting comes back on leaving it."""
        previous, self.mask_settings = self.mask_settings, MaskOutput(min_score)
        try:
            yield
        finally:
            self.mask_settings = previous

    # --- target assignment hooks -------------------------------------------------------

    def select_training_samples(self, proposals, targets):  # type: ignore[override]
        with self.positive_only(targets):
            return super().select_training_samples(proposals, targets)

    def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):  # type: ignore[override]
        matched_idxs, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        return matched_idxs, self.ignore_flagged_background(labels, proposals)

    # --- forward -----------------------------------------------------------------------

    def forward(self, features, proposals, image_shapes, targets=None):  # type: ignore[override]
        if self.has_keypoint():
            raise NotImplementedError("salis builds Mask R-CNN without a keypoint branch")
        if self.training:
            return [], self._forward_train(features, proposals, image_shapes, targets)
        return self._forward_inference(features, proposals, image_shapes), {}

    def _forward_train(self, features, proposals, image_shapes, targets) -> dict[str, Tensor]:
        # keep this order: RoI sampling and the two training dropouts draw from the global RNG, and
        # autograd sums gradients in the order ops were created; a new order changes the results
        samples = RoISamples.of(*self.select_training_samples(proposals, targets))
        box = self._forward_box(features, samples.proposals, image_shapes)
        mask = self._forward_mask(features, samples.mask_rois, image_shapes)
        losses = self._box_mask_losses(box, mask, samples, targets)
        if self.loss_prediction is not None:
            losses[PREDICTED_LOSSES] = self.loss_prediction(self.image_features(features, image_shapes))
        if self.has_iou_heads:
            losses.update(self._iou_losses(features, image_shapes, targets, samples, box, mask))
        return losses

    def _forward_inference(self, features, proposals, image_shapes) -> list[dict[str, Tensor]]:
        box = self._forward_box(features, proposals, image_shapes)
        detections = postprocess_detections(self, box.class_logits, box.regression, proposals, image_shapes)
        floor = self.mask_settings.min_score
        # the mask head's convolutions run on the detections whose masks are kept (all of them
        # for MC dropout, which compares masks); RoIAlign runs on all: the mask-IoU head reads it
        wanted = None if floor is None else [s >= floor for s in detections.scores]
        head_on = None if self.mc_settings.enabled else wanted
        mask = self._forward_mask(features, detections.boxes, image_shapes, head_on)
        pooled = self.image_features(features, image_shapes)
        results = [
            {"boxes": b, "labels": lab, "scores": s, "class_posterior": p, "embedding": e}
            for b, lab, s, p, e in zip(
                detections.boxes, detections.labels, detections.scores, detections.posteriors,
                torch.cat(pooled, dim=1),
            )
        ]
        for result, outputs in zip(results, self._mask_outputs(mask, detections, wanted, head_on is None)):
            result.update(outputs)
        for per_image_outputs in (
            self._predict_loss(pooled),
            self._predict_iou(features, image_shapes, detections, mask),
            self._predict_mc_disagreement(box, detections, mask, image_shapes),
        ):
            for result, outputs in zip(results, per_image_outputs):
                result.update(outputs)
        return results

    # --- box and mask branches -----------------------------------------------------------

    def _forward_box(self, features, proposals, image_shapes) -> BoxBranch:
        head_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, regression = self.box_predictor(self._train_dropout(head_features))
        return BoxBranch(proposals, head_features, class_logits, regression)

    def _forward_mask(self, features, rois, image_shapes, wanted: list[Tensor] | None = None) -> MaskBranch:
        """Pooled features of every RoI; the mask head on those `wanted` (per image, a bool per
        RoI; None: all), whose logits come first in RoI order."""
        pooled = self.mask_roi_pool(features, rois, image_shapes)
        head_features = self.mask_head(pooled if wanted is None else pooled[torch.cat(wanted)])
        return MaskBranch(rois, pooled, head_features, self.mask_predictor(self._train_dropout(head_features)))

    def _mask_outputs(self, mask: MaskBranch, detections: Detections, wanted: list[Tensor] | None,
                      logits_of_all: bool) -> list[dict[str, Tensor]]:
        """Per image: "masks" (N x 1 x h x w probabilities, pasted at image size by the model's
        transform) for every detection; or, with a mask floor, "roi_masks" (M x 1 x 28 x 28
        probabilities at RoI resolution, for the caller to paste) of the detections scoring at least
        the floor and "mask_index" (M: their places among the image's detections)."""
        if wanted is None:
            return [{"masks": m} for m in maskrcnn_inference(mask.logits, detections.labels)]
        logits = mask.logits[torch.cat(wanted)] if logits_of_all else mask.logits
        kept_labels = [lab[w] for lab, w in zip(detections.labels, wanted)]
        probs = maskrcnn_inference(logits, kept_labels)
        return [{"roi_masks": m, "mask_index": torch.where(w)[0]} for m, w in zip(probs, wanted)]

    def _train_dropout(self, x: Tensor) -> Tensor:
        """Dropout on a head's last features while training (model.train_dropout_p; 0 = off)."""
        return F.dropout(x, self.train_dropout_p, training=True) if self.training and self.train_dropout_p > 0 else x

    def _box_mask_losses(self, box: BoxBranch, mask: MaskBranch, samples: RoISamples, targets) -> dict[str, Tensor]:
        from_box = target_flags(targets, MASK_FROM_BOX)
        box_args = (box.class_logits, box.regression, samples.labels, samples.regression_targets)
        # box-labeled images' mask RoIs train with BoxInst's losses, the others with torchvision's
        mask_rois = [r if not b else r[:0] for r, b in zip(mask.rois, from_box)]
        mask_matched = [m if not b else m[:0] for m, b in zip(samples.mask_matched, from_box)]
        keep = torch.cat([torch.full((len(r),), not b, dtype=torch.bool, device=box.class_logits.device)
                          for r, b in zip(mask.rois, from_box)]) if any(from_box) else None
        mask_logits = mask.logits if keep is None else mask.logits[keep]
        mask_args = (mask_logits, mask_rois, [t["masks"] for t in targets], [t["labels"] for t in targets], mask_matched)
        boxed = self._boxinst_losses(mask, samples, targets, from_box) if any(from_box) else None
        if self.loss_prediction is None:
            loss_classifier, loss_box_reg = fastrcnn_loss(*box_args)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, "loss_mask": maskrcnn_loss(*mask_args)}
            if boxed is not None:
                losses["loss_mask_box"] = boxed.sum() / max(len(boxed), 1)
            return losses
        # the same losses, reduced per image too: the loss-prediction module's targets
        cls, box_reg, rois = fastrcnn_loss_terms(*box_args)
        mask_bce, pixels = maskrcnn_loss_terms(*mask_args)
        image_losses = per_image(cls + box_reg, rois) + per_image(mask_bce, pixels)
        losses = {
            "loss_classifier": batch_mean(cls, rois),
            "loss_box_reg": batch_mean(box_reg, rois),
            "loss_mask": batch_mean(mask_bce, pixels),
        }
        if boxed is not None:
            counts = [len(r) if b else 0 for r, b in zip(mask.rois, from_box)]
            image = torch.repeat_interleave(torch.arange(len(counts), device=boxed.device), torch.tensor(counts, device=boxed.device))
            sums = boxed.new_zeros(len(counts)).index_add(0, image, boxed)
            image_losses = image_losses + per_image(sums, boxed.new_tensor(counts, dtype=torch.float32))
            losses["loss_mask_box"] = boxed.sum() / max(len(boxed), 1)
        losses[ROI_IMAGE_LOSSES] = image_losses
        return losses

    def _boxinst_losses(self, mask: MaskBranch, samples: RoISamples, targets, from_box: list[bool]) -> Tensor:
        """Per positive RoI of the box-labeled images: BoxInst's projection + pairwise loss."""
        counts = [len(r) for r in mask.rois]
        logits = mask.logits.split(counts, 0)
        size = mask.logits.shape[-1]
        settings = self.box_supervision
        pairwise_weight = settings.pairwise_weight * self.pairwise_ramp
        out = []
        for i, target in enumerate(targets):
            if not from_box[i] or counts[i] == 0:
                continue
            rois, matched = mask.rois[i], samples.mask_matched[i]
            labels = target["labels"][matched]
            chosen = logits[i][torch.arange(len(labels), device=labels.device), labels]
            boxes = (project_masks_on_boxes(target["masks"], rois, matched, size) >= 0.5).to(chosen.dtype)
            colors = None
            if pairwise_weight > 0 and IMAGE_RGB in target:
                colors = roi_colors(rgb_to_lab(target[IMAGE_RGB].float()), rois.float(), size)
            out.append(box_mask_losses(chosen.float(), boxes.float(), colors, settings.projection_weight,
                                       pairwise_weight, settings.color_tau))
        return torch.cat(out) if out else mask.logits.new_zeros(0)

    # --- IoU branch ----------------------------------------------------------------------

    def _iou_losses(self, features, image_shapes, targets, samples: RoISamples, box: BoxBranch,
                    mask: MaskBranch) -> dict[str, Tensor]:
        """L2 losses of both IoU heads on expert-labeled images: on their sampled positive RoIs
        (at the refined box for the box-IoU head) and on the extra RoIs of _iou_extra_rois
        (IoUTraining says which).

        Pseudo-labeled images (positive_only) give no IoU-head loss: their "ground truth" is the
        model's own output. Targets carry no gradient.
        """
        settings = self.iou_training
        flags = [p or own for p, own in zip(positive_only_flags(targets), target_flags(targets, OWN_LABELS))]
        from_box = target_flags(targets, MASK_FROM_BOX)
        decoded = self.box_coder.decode(box.regression.detach(), samples.proposals).split(
            [len(p) for p in samples.proposals], 0
        )
        mask_counts = [len(r) for r in mask.rois]
        mask_logits = mask.logits.split(mask_counts, 0)
        mask_pooled = mask.pooled.split(mask_counts, 0)

        box_rois, box_targets, mask_inputs, mask_targets = [], [], [], []
        extra_rois: list[Tensor] = []  # per image: the RoIs of _iou_extra_rois (both heads)
        extra_box_targets: list[Tensor] = []
        extra_mask_rois: list[Tensor] = []  # per image: those the mask-IoU head learns from
        extra_mask_matched: list[Tensor | None] = []  # ... and each one's best-overlapping ground truth
        extra_mask_ious: list[Tensor] = []  # ... and its box IoU with it
        for i, target in enumerate(targets):
            empty = decoded[i].new_zeros((0, 4))
            if flags[i]:
                box_rois.append(empty)
                extra_rois.append(empty)
                extra_mask_rois.append(empty)
                extra_mask_matched.append(None)
                extra_mask_ious.append(empty[:, 0])
                continue
            pos, matched = samples.positives[i], samples.mask_matched[i]
            gt_boxes = target["boxes"]
            real = torch.ones(len(pos), dtype=torch.bool, device=pos.device)
            if not settings.gt_proposals and len(pos):  # an appended ground-truth box equals its match
                real = ~(samples.proposals[i][pos] == gt_boxes[matched]).all(dim=1)
            cls = samples.labels[i][pos]
            boxes = box_ops.clip_boxes_to_image(decoded[i][pos, cls], image_shapes[i])[real]
            box_rois.append(boxes)
            box_targets.append(box_iou_targets(boxes, gt_boxes[matched[real]]))
            extra = self._iou_extra_rois(samples, i, gt_boxes, image_shapes[i])
            extra_iou, extra_matched = best_box_ious(extra, gt_boxes)
            extra_rois.append(extra)
            extra_box_targets.append(extra_iou)
            if from_box[i]:  # no mask to measure the predicted mask's IoU against
                extra_mask_rois.append(empty)
                extra_mask_matched.append(None)
                extra_mask_ious.append(empty[:, 0])
                continue
            if len(pos):
                probs = mask_logits[i][torch.arange(len(pos), device=cls.device), cls].detach().sigmoid()
                mask_targets.append(mask_iou_targets(probs[real], mask.rois[i][real], target["masks"],
                                                     matched[real], settings.mask_threshold))
                mask_inputs.append(mask_pooled[i][real])
            extra_mask_rois.append(extra)
            extra_mask_matched.append(extra_matched)
            extra_mask_ious.append(extra_iou)

        # the box-IoU head looks at the predicted box, the same input it sees at inference
        box_pred = self.box_iou_head(self.box_roi_pool(features, box_rois, image_shapes))
        if any(len(r) for r in extra_rois):
            # the extra RoIs teach the heads, not the backbone: pooled from detached features
            # (RoIAlign's backward is most of a CPU step's cost; the positives still backpropagate)
            detached = {level: f.detach() for level, f in features.items()}
            box_pred = torch.cat([box_pred, self.box_iou_head(self.box_roi_pool(detached, extra_rois, image_shapes))])
            box_targets = box_targets + extra_box_targets
            if any(len(r) for r in extra_mask_rois):
                inputs, ious = self._extra_mask_iou_samples(detached, image_shapes, targets, extra_mask_rois,
                                                            extra_mask_matched, extra_mask_ious)
                mask_inputs.append(inputs)
                mask_targets.append(ious)
        if not sum(len(t) for t in box_targets):
            zero = box_pred.sum() * 0.0 + self.mask_iou_head(mask.pooled[:0]).sum() * 0.0
            return {"loss_box_iou": zero, "loss_mask_iou": zero}
        weight = settings.loss_weight
        if sum(len(t) for t in mask_targets):
            mask_loss = weight * F.mse_loss(self.mask_iou_head(torch.cat(mask_inputs)), torch.cat(mask_targets))
        else:  # only box-labeled images: the mask-IoU head has nothing to learn from
            mask_loss = self.mask_iou_head(mask.pooled[:0]).sum() * 0.0
        return {"loss_box_iou": weight * F.mse_loss(box_pred, torch.cat(box_targets)), "loss_mask_iou": mask_loss}

    def _iou_extra_rois(self, samples: RoISamples, i: int, gt_boxes: Tensor, image_shape) -> Tensor:
        """Image i's RoIs for the IoU heads besides its positives: jittered ground-truth boxes
        (IoU in [jitter_min_iou, 1]) and a random subset of the sampler's negative RoIs."""
        settings = self.iou_training
        jittered, _ = jittered_boxes(gt_boxes, settings.jitter_rois, settings.jitter_min_iou, image_shape)
        negatives = samples.proposals[i][samples.labels[i] == 0]
        if settings.background_rois > 0 and len(negatives):
            negatives = negatives[torch.randperm(len(negatives), device=negatives.device)[: settings.background_rois]]
        else:
            negatives = negatives[:0]
        return torch.cat([jittered.to(negatives.dtype), negatives])

    def _extra_mask_iou_samples(self, features, image_shapes, targets, rois: list[Tensor],
                                matched: list[Tensor | None], box_ious: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The mask-IoU head's input at the extra RoIs, and the IoU of the mask the mask head
        predicts there (for the best-overlapping instance's class) with that instance's mask: 0
        without running the mask head where the RoI overlaps no ground-truth box (its mask, inside
        the RoI, cannot meet one)."""
        pooled = self.mask_roi_pool(features, rois, image_shapes)
        touching = torch.cat([iou > 0 for iou in box_ious])
        ious = pooled.new_zeros(len(pooled))
        if touching.any():
            with torch.no_grad():  # the mask head is not trained on these RoIs: it only shows its mask
                logits = self.mask_predictor(self.mask_head(pooled[touching]))
            image_of = torch.cat([torch.full((len(r),), i, device=pooled.device) for i, r in enumerate(rois)])
            at = torch.where(touching)[0]
            all_rois, all_matched = torch.cat(rois), torch.cat([m for m in matched if m is not None])
            for i, target in enumerate(targets):
                mine = image_of[at] == i
                if not mine.any():
                    continue
                index = at[mine]
                labels = target["labels"][all_matched[index]]
                probs = logits[mine][torch.arange(len(labels), device=labels.device), labels].sigmoid()
                ious[index] = mask_iou_targets(probs, all_rois[index], target["masks"], all_matched[index],
                                               self.iou_training.mask_threshold)
        return pooled, ious

    def _predict_iou(self, features, image_shapes, detections: Detections, mask: MaskBranch) -> list[dict[str, Tensor]]:
        if not self.has_iou_heads:
            return []
        counts = [len(b) for b in detections.boxes]
        box_iou = self.box_iou_head(self.box_roi_pool(features, detections.boxes, image_shapes)).split(counts)
        mask_iou = self.mask_iou_head(mask.pooled).split(counts)
        return [{"box_iou": b, "mask_iou": m} for b, m in zip(box_iou, mask_iou)]

    # --- loss prediction and MC dropout (inference) --------------------------------------

    def _predict_loss(self, pooled: list[Tensor]) -> list[dict[str, Tensor]]:
        if self.loss_prediction is None:
            return []
        return [{"predicted_loss": predicted} for predicted in self.loss_prediction(pooled)]

    def _predict_mc_disagreement(self, box: BoxBranch, detections: Detections, mask: MaskBranch,
                                 image_shapes) -> list[dict[str, Tensor]]:
        if not self.mc_settings.enabled:
            return []
        box_features = box.features.split([len(p) for p in box.proposals])
        sources = MCSources(
            box_features=torch.cat([f[k] for f, k in zip(box_features, detections.sources)]),
            proposals=[p[k] for p, k in zip(box.proposals, detections.sources)],
            boxes=detections.boxes,
            labels=detections.labels,
            mask_features=mask.features,
            mask_logits=mask.logits,
            image_shapes=image_shapes,
        )
        return [
            {"mc_class_var": class_var, "mc_box_disagreement": box_dis, "mc_mask_disagreement": mask_dis}
            for class_var, box_dis, mask_dis in mc_disagreement(self, self.mc_settings, sources)
        ]


def pairwise_ramp(iteration: int, warmup_iterations: int) -> float:
    """The share of BoxInst's pairwise weight in force at 0-based `iteration`: linear from 1 /
    warmup_iterations at the first step to 1 once `warmup_iterations` steps have run (AdelaiDet:
    min(iter / 10,000, 1)); 1 throughout without a warm-up. Early on the pairwise term, which a
    mask of all background satisfies, outweighs the projection term that makes the mask fill its box."""
    if warmup_iterations <= 0:
        return 1.0
    return min(1.0, (iteration + 1) / warmup_iterations)


def set_pairwise_ramp(model: nn.Module, ramp: float) -> None:
    """Scale the pairwise weight of every SalisRoIHeads in `model` by `ramp` from now on."""
    for module in model.modules():
        if isinstance(module, SalisRoIHeads):
            module.pairwise_ramp = ramp
