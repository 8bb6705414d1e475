"""TSP's IoU heads: predict, for a detection, the IoU of its box and of its mask with the truth.

Each head: two 3x3 stride-2 convolutions, global average pooling, one fully connected layer,
sigmoid (Wang et al., BMVC 2020). The box-IoU head reads the box branch's RoI features, the
mask-IoU head the mask branch's input features.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou, roi_align

from salis.model.mc_dropout import paired_box_iou


class IoUHead(nn.Module):
    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(hidden, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fresh weights from torch's global generator (what a refit starts from)."""
        for layer in self.convs:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        # A small output layer starts every prediction near 0.5: a sigmoid that starts
        # saturated (Kaiming init of a 1-output layer gives logits in the tens) never
        # receives a gradient through the L2 loss again.
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, roi_features: Tensor) -> Tensor:
        """N x C x S x S RoI features -> N predicted IoUs in (0, 1)."""
        pooled = self.convs(roi_features).mean(dim=(2, 3))
        return torch.sigmoid(self.fc(pooled)).squeeze(1)


@dataclasses.dataclass(frozen=True)
class IoUTraining:
    """What the IoU heads train on (model.iou_*), besides the sampled positive RoIs.

    At inference the heads score every detection, false positives included, at boxes the box
    branch refined: never at a ground-truth box. So the ground-truth boxes torchvision appends to
    the proposals stay out of their losses (gt_proposals False), and each expert-labeled image adds
    `jitter_rois` ground-truth boxes jittered to an IoU spread evenly over [jitter_min_iou, 1]
    (IoU-Net) and `background_rois` of the sampler's negative RoIs (IoU < 0.5, most near 0).
    """

    mask_threshold: float = 0.3  # binarises the predicted mask for the mask-IoU target
    loss_weight: float = 1.0
    jitter_rois: int = 0
    jitter_min_iou: float = 0.5
    background_rois: int = 0
    gt_proposals: bool = True  # True: the appended ground-truth boxes train the heads too (before 2026-12)


@dataclasses.dataclass(frozen=True, eq=False)
class IoUHeads:
    """The pair of heads, with what their training sees (a part of the RoI heads)."""

    box: IoUHead
    mask: IoUHead
    training: IoUTraining = IoUTraining()

    @classmethod
    def build(cls, in_channels: int, hidden: int, training: IoUTraining | None = None) -> IoUHeads:
        box = IoUHead(in_channels, hidden)  # the box head first: a seed gives both their weights of before
        return cls(box, IoUHead(in_channels, hidden), training or IoUTraining())


_CANDIDATES = 32  # jittered candidates per wanted box; the nearest IoU to the wanted one is kept


@torch.no_grad()
def jittered_boxes(gt_boxes: Tensor, count: int, min_iou: float, image_shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(boxes, source): `count` ground-truth boxes (drawn with replacement) jittered so that their
    IoU with their source spreads evenly over [min_iou, 1]: each wanted IoU is drawn uniformly,
    and of _CANDIDATES random shifts and rescalings of the source the nearest is kept (IoU-Net's
    jitter, Jiang et al. 2018). Clipped to the image; draws from torch's global generator."""
    device = gt_boxes.device
    if count <= 0 or len(gt_boxes) == 0:
        return gt_boxes.new_zeros((0, 4)), torch.zeros(0, dtype=torch.long, device=device)
    source = torch.randint(len(gt_boxes), (count,), device=device)
    wanted = min_iou + (1.0 - min_iou) * torch.rand(count, device=device)
    gt = gt_boxes[source].float()
    size = (gt[:, 2:] - gt[:, :2]).clamp(min=1.0)
    centre = (gt[:, 2:] + gt[:, :2]) / 2
    # per candidate a strength in [0, 1], then a shift of up to 40% and a rescaling of up to
    # e^0.6 in each direction: IoUs from 1 down to about 0.1
    strength = torch.rand(count, _CANDIDATES, 1, device=device)
    shift = (torch.rand(count, _CANDIDATES, 2, device=device) * 2 - 1) * 0.4 * strength * size[:, None]
    scale = torch.exp((torch.rand(count, _CANDIDATES, 2, device=device) * 2 - 1) * 0.6 * strength)
    half = size[:, None] * scale / 2
    new_centre = centre[:, None] + shift
    candidates = torch.cat([new_centre - half, new_centre + half], dim=2)
    height, width = image_shape
    candidates[..., 0::2] = candidates[..., 0::2].clamp(0, width)
    candidates[..., 1::2] = candidates[..., 1::2].clamp(0, height)
    ious = paired_box_iou(candidates.reshape(-1, 4), gt.repeat_interleave(_CANDIDATES, 0)).reshape(count, _CANDIDATES)
    nearest = (ious - wanted[:, None]).abs().argmin(dim=1)
    boxes = candidates[torch.arange(count, device=device), nearest].to(gt_boxes.dtype)
    return boxes, source


@torch.no_grad()
def best_box_ious(boxes: Tensor, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """(IoU, index): each box's highest IoU with any ground-truth box, and which (0, 0 if none)."""
    if len(gt_boxes) == 0 or len(boxes) == 0:
        zeros = boxes.new_zeros(len(boxes))
        return zeros, zeros.long()
    return box_iou(boxes, gt_boxes).max(dim=1)


@torch.no_grad()
def box_iou_targets(pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """IoU of each predicted box with its own matched ground-truth box (row i with row i)."""
    if len(pred_boxes) == 0:
        return pred_boxes.new_zeros(0)
    return box_iou(pred_boxes, gt_boxes).diagonal().clone()


@torch.no_grad()
def mask_iou_targets(
    mask_probs: Tensor,
    rois: Tensor,
    gt_masks: Tensor,
    matched_idxs: Tensor,
    threshold: float,
) -> Tensor:
    """IoU of each predicted RoI mask (binarised at `threshold`) with its full ground-truth mask.

    mask_probs: N x M x M probabilities on the RoI grid; rois: N x 4 boxes (image coords);
    gt_masks: K x H x W, the image's ground-truth masks; matched_idxs: N indices into them.
    Intersection and predicted area are measured on the RoI grid and scaled to pixels; the
    ground-truth area is the whole mask's, so ground truth outside the RoI is not ignored
    (a box that cuts an object in half cannot score IoU 1).
    """
    n, m = mask_probs.shape[0], mask_probs.shape[-1]
    if n == 0:
        return mask_probs.new_zeros(0)
    rois = rois.to(mask_probs.dtype)
    indexed = torch.cat([matched_idxs.to(rois)[:, None], rois], 1)
    gt_on_roi = roi_align(gt_masks[:, None].to(rois), indexed, (m, m), 1.0)[:, 0]
    pred = (mask_probs >= threshold).to(rois)
    cell_area = ((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])).clamp(min=0) / (m * m)
    intersection = (pred * (gt_on_roi >= 0.5)).sum(dim=(1, 2)) * cell_area
    pred_area = pred.sum(dim=(1, 2)) * cell_area
    gt_area = gt_masks.flatten(1).sum(1).to(rois)[matched_idxs]
    union = pred_area + gt_area - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-6), torch.zeros_like(union))
