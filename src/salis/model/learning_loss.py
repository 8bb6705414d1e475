"""Learning loss (Yoo & Kweon, CVPR 2019): a small module predicts each image's detector loss.

The module reads the FPN feature maps: per level global average pooling -> FC -> ReLU, the
levels concatenated, one FC -> a scalar. It is trained jointly with the detector by a margin
ranking loss on pairs of images of a batch, against each image's own detector loss (detached).

Per-image detector losses: torchvision reduces each loss over the whole batch (a mean over all
sampled anchors, RoIs or mask pixels of the batch). The functions below compute, with the same
formulas and the same sampled anchors and RoIs, each image's sums and counts. Then
  the batch loss   = sum of every image's sums / sum of counts   (torchvision's value), and
  an image's loss  = its sums / its counts                       (its loss alone),
so the detector trains on exactly the loss it trained on before, and the target of image i is
the loss image i would have had alone in the batch, with the same samples. The target is the
detector's loss (RPN objectness and box, RoI classification and box, mask), not the auxiliary
IoU heads' losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import project_masks_on_boxes

# Entries of the training loss dict that are per-image vectors, not losses: the RPN and the RoI
# heads add them, SalisMaskRCNN.forward turns them into the ranking loss and removes them.
RPN_IMAGE_LOSSES = "_rpn_image_losses"
ROI_IMAGE_LOSSES = "_roi_image_losses"
PREDICTED_LOSSES = "_predicted_losses"


class LossPredictionModule(nn.Module):
    def __init__(self, in_channels: int, num_levels: int, hidden: int = 128, margin: float = 1.0,
                 weight: float = 1.0) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True)) for _ in range(num_levels)
        )
        self.out = nn.Linear(hidden * num_levels, 1)
        self.margin = margin
        self.weight = weight
        # set by the training loop after train.learning_loss_stop_grad_after of the iterations:
        # the module keeps learning, but its loss no longer shapes the backbone's features
        self.detach_input = False

    def forward(self, pooled: list[Tensor]) -> Tensor:
        """Per-level B x C pooled features -> B predicted losses."""
        if self.detach_input:
            pooled = [p.detach() for p in pooled]
        hidden = torch.cat([layer(p.float()) for layer, p in zip(self.levels, pooled)], dim=1)
        return self.out(hidden).squeeze(1)

    def ranking_loss(self, predicted: Tensor, target: Tensor) -> Tensor:
        return self.weight * ranking_loss(predicted, target, self.margin)


def ranking_loss(predicted: Tensor, target: Tensor, margin: float) -> Tensor:
    """Mean over every pair i < j of max(0, -sign(l_i - l_j) * (p_i - p_j) + margin).

    The paper splits a batch into B/2 disjoint pairs; with the small batches used here every
    pair is used instead. Pairs whose target losses are equal carry no order and are skipped;
    with no pair left the loss is 0 (still attached to the graph).
    """
    n = predicted.shape[0]
    i, j = torch.triu_indices(n, n, 1, device=predicted.device)
    sign = torch.sign(target[i] - target[j]).to(predicted.dtype)
    keep = sign != 0
    if not bool(keep.any()):
        return predicted.sum() * 0.0
    return F.margin_ranking_loss(predicted[i][keep], predicted[j][keep], sign[keep], margin=margin)


def _image_index(counts: list[int], device: torch.device) -> Tensor:
    return torch.repeat_interleave(torch.arange(len(counts), device=device), torch.tensor(counts, device=device))


def rpn_loss_terms(
    objectness: Tensor,
    pred_bbox_deltas: Tensor,
    labels: list[Tensor],
    regression_targets: list[Tensor],
    sampled_pos: list[Tensor],
    sampled_neg: list[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """Per image: objectness BCE summed over its sampled anchors, box smooth-L1 summed over its
    sampled positives, and its number of sampled anchors (RegionProposalNetwork.compute_loss)."""
    device = objectness.device
    image = _image_index([len(lab) for lab in labels], device)
    pos = torch.cat(sampled_pos).bool()
    sampled = pos | torch.cat(sampled_neg).bool()
    all_labels = torch.cat(labels)
    bce = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], all_labels[sampled], reduction="none")
    box = F.smooth_l1_loss(
        pred_bbox_deltas[pos], torch.cat(regression_targets)[pos], beta=1 / 9, reduction="none"
    ).sum(1)
    zeros = objectness.new_zeros(len(labels), dtype=torch.float32)
    objectness_sum = zeros.index_add(0, image[sampled], bce.float())
    box_sum = zeros.index_add(0, image[pos], box.float())
    counts = zeros.index_add(0, image[sampled], torch.ones_like(bce, dtype=torch.float32))
    return objectness_sum, box_sum, counts


def fastrcnn_loss_terms(
    class_logits: Tensor, box_regression: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Per image: classification cross-entropy and box smooth-L1 summed over its sampled RoIs,
    and its number of sampled RoIs (torchvision's fastrcnn_loss)."""
    image = _image_index([len(lab) for lab in labels], class_logits.device)
    all_labels = torch.cat(labels)
    ce = F.cross_entropy(class_logits, all_labels, reduction="none")
    pos = torch.where(all_labels > 0)[0]
    box_regression = box_regression.reshape(len(all_labels), -1, 4)
    box = F.smooth_l1_loss(
        box_regression[pos, all_labels[pos]], torch.cat(regression_targets)[pos], beta=1 / 9, reduction="none"
    ).sum(1)
    zeros = class_logits.new_zeros(len(labels), dtype=torch.float32)
    return (
        zeros.index_add(0, image, ce.float()),
        zeros.index_add(0, image[pos], box.float()),
        zeros.index_add(0, image, torch.ones_like(ce, dtype=torch.float32)),
    )


def maskrcnn_loss_terms(
    mask_logits: Tensor,
    mask_rois: list[Tensor],
    gt_masks: list[Tensor],
    gt_labels: list[Tensor],
    mask_matched_idxs: list[Tensor],
) -> tuple[Tensor, Tensor]:
    """Per image: mask BCE summed over its positive RoIs' M x M targets, and its number of
    target pixels (torchvision's maskrcnn_loss)."""
    m = mask_logits.shape[-1]
    image = _image_index([len(r) for r in mask_rois], mask_logits.device)
    labels = torch.cat([gl[idx] for gl, idx in zip(gt_labels, mask_matched_idxs)])
    targets = torch.cat([project_masks_on_boxes(g, r, i, m) for g, r, i in zip(gt_masks, mask_rois, mask_matched_idxs)])
    zeros = mask_logits.new_zeros(len(mask_rois), dtype=torch.float32)
    if targets.numel() == 0:
        return zeros + mask_logits.sum() * 0, zeros
    bce = F.binary_cross_entropy_with_logits(
        mask_logits[torch.arange(len(labels), device=labels.device), labels], targets, reduction="none"
    ).flatten(1).sum(1)
    return zeros.index_add(0, image, bce.float()), zeros.index_add(0, image, torch.full_like(bce, m * m, dtype=torch.float32))


def per_image(sums: Tensor, counts: Tensor) -> Tensor:
    """An image's mean; 0 for an image that sampled nothing (a pseudo image without positives)."""
    return sums / counts.clamp(min=1.0)


def batch_mean(sums: Tensor, counts: Tensor) -> Tensor:
    """torchvision's batch reduction of the same terms."""
    return sums.sum() / counts.sum().clamp(min=1.0)


def stop_loss_prediction_gradient(model: nn.Module, stop: bool) -> None:
    """From now on (stop=True) the ranking loss trains the module only, not the features it reads."""
    for module in model.modules():
        if isinstance(module, LossPredictionModule):
            module.detach_input = stop
