"""MC dropout at inference: per detection, the disagreement of T stochastic passes.

The backbone, FPN, RPN and the deterministic box and mask heads run once; then only the last layer
of each head (box predictor, mask predictor) runs T times on the same features with dropout on its
input. The stochastic passes start from the deterministic detections themselves (the box branch
from the proposal each detection was regressed from, the mask branch from its final box), so every
detection gets its own T posteriors, boxes and masks without matching detections across passes;
at p = 0 every pass reproduces the deterministic detection exactly. The cost of that exactness: a
detection cannot vanish in a pass (there is no occurrence term).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops


@dataclasses.dataclass(frozen=True)
class MCDropout:
    """Inference setting of the RoI heads (score.mc_passes, score.mc_dropout_p)."""

    passes: int = 0  # T; 0 = no stochastic passes
    p: float = 0.5  # dropout probability on the predictors' input

    @property
    def enabled(self) -> bool:
        return self.passes > 0


@dataclasses.dataclass(frozen=True, eq=False)
class MCSources:
    """What the passes restart from, per detection (all images' detections concatenated)."""

    box_features: Tensor  # N x D: box-head features of the proposal each detection came from
    proposals: list[Tensor]  # per image: that proposal, N_i x 4
    boxes: list[Tensor]  # per image: the deterministic boxes, N_i x 4
    labels: list[Tensor]  # per image: the detections' classes
    mask_features: Tensor  # N x C x S x S: mask-head features on the deterministic boxes
    mask_logits: Tensor  # N x K x M x M: the deterministic mask logits
    image_shapes: list[tuple[int, int]]


def mc_disagreement(heads: RoIHeads, settings: MCDropout, sources: MCSources) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per image, per detection over `settings.passes` passes with dropout on the box predictor's and
    the mask predictor's input (F.dropout with training=True: BatchNorm stays in eval): the class
    posterior's variance summed over classes, 1 - mean IoU of the pass's box with the deterministic
    box, 1 - mean IoU of the pass's mask with the deterministic mask (both masks binarised at 0.5
    on the RoI grid; two empty masks agree)."""
    counts = [len(b) for b in sources.boxes]
    n = sum(counts)
    if n == 0:
        empty = sources.box_features.new_zeros(0)
        return [(empty, empty, empty) for _ in counts]
    label = torch.cat(sources.labels)
    rows = torch.arange(n, device=label.device)
    reference_boxes = torch.cat(sources.boxes)
    reference_masks = sources.mask_logits[rows, label] >= 0  # sigmoid >= 0.5

    posteriors = []
    box_iou_sum = reference_boxes.new_zeros(n, dtype=torch.float32)
    mask_iou_sum = torch.zeros_like(box_iou_sum)
    for _ in range(settings.passes):
        # the box pass draws its dropout mask before the mask pass: a seed keeps giving the same scores
        logits, regression = heads.box_predictor(F.dropout(sources.box_features, settings.p, training=True))
        posteriors.append(F.softmax(logits.float(), -1))
        decoded = heads.box_coder.decode(regression, sources.proposals)[rows, label]
        pass_boxes = torch.cat(
            [box_ops.clip_boxes_to_image(b, s) for b, s in zip(decoded.split(counts), sources.image_shapes)]
        )
        box_iou_sum += paired_box_iou(pass_boxes.float(), reference_boxes.float())
        pass_masks = heads.mask_predictor(F.dropout(sources.mask_features, settings.p, training=True))[rows, label] >= 0
        mask_iou_sum += paired_mask_iou(pass_masks, reference_masks)
    class_var = torch.stack(posteriors).var(dim=0, unbiased=False).sum(dim=1)
    box_dis = 1.0 - box_iou_sum / settings.passes
    mask_dis = 1.0 - mask_iou_sum / settings.passes
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
