"""torchvision's box post-processing, also keeping each detection's class posterior and source.

RoIHeads.postprocess_detections drops the index of the proposal a detection came from, so the
full softmax cannot be recovered afterwards (uncertainty scores need it), nor the proposal's
features (MC dropout restarts from them). The steps and their order are torchvision's.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops


@dataclasses.dataclass(frozen=True, eq=False)
class Detections:
    """Per image, the final detections."""

    boxes: list[Tensor]
    scores: list[Tensor]
    labels: list[Tensor]
    posteriors: list[Tensor]  # N_i x (C+1): the full softmax, column 0 is background
    sources: list[Tensor]  # N_i: index of the proposal each detection was regressed from


def postprocess_detections(
    heads: RoIHeads,
    class_logits: Tensor,
    box_regression: Tensor,
    proposals: list[Tensor],
    image_shapes: list[tuple[int, int]],
) -> Detections:
    """Decode, clip, threshold, NMS per class, keep the top `heads.detections_per_img`."""
    device = class_logits.device
    num_classes = class_logits.shape[-1]
    boxes_per_image = [p.shape[0] for p in proposals]
    pred_boxes = heads.box_coder.decode(box_regression, proposals).split(boxes_per_image, 0)
    posteriors = F.softmax(class_logits, -1).split(boxes_per_image, 0)

    out = Detections([], [], [], [], [])
    for boxes, post, image_shape in zip(pred_boxes, posteriors, image_shapes):
        boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
        labels = torch.arange(num_classes, device=device).view(1, -1).expand_as(post)
        proposal_index = torch.arange(post.shape[0], device=device).view(-1, 1).expand_as(post)
        # drop the background column, then flatten: one candidate per (proposal, class)
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores = post[:, 1:].reshape(-1)
        labels = labels[:, 1:].reshape(-1)
        proposal_index = proposal_index[:, 1:].reshape(-1)

        keep = torch.where(scores > heads.score_thresh)[0]
        keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
        keep = keep[box_ops.batched_nms(boxes[keep], scores[keep], labels[keep], heads.nms_thresh)]
        keep = keep[: heads.detections_per_img]

        out.boxes.append(boxes[keep])
        out.scores.append(scores[keep])
        out.labels.append(labels[keep])
        out.posteriors.append(post[proposal_index[keep]])
        out.sources.append(proposal_index[keep])
    return out
