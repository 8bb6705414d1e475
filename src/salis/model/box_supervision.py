"""Masks learned from boxes: BoxInst's losses (Tian et al., CVPR 2021), on Mask R-CNN's RoI grid.

For a box-labeled instance the mask head sees no mask. Two terms stand in for the mask loss:

- projection: the predicted mask, max-projected onto the x axis and onto the y axis, must match
  the box's projections (dice loss on each axis): a mask that fills the box's extent in both
  directions and nothing beyond it;
- pairwise: neighbouring pixels of similar colour (LAB distance; similarity exp(-|dc| / 2) >=
  tau, BoxInst's 0.3) inside the box should get the same label: -log(p_i p_j + (1-p_i)(1-p_j)),
  computed in log space.

Both live on the M x M grid of each positive RoI (M = 28 here), where torchvision projects
ground-truth masks too: the box target is the filled ground-truth box projected onto the RoI
(torchvision's project_masks_on_boxes), the colours are the image's LAB values pooled onto the
same grid with roi_align.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

COLOR_THETA = 2.0  # BoxInst: similarity exp(-||c_i - c_j|| / theta) in LAB
DILATION = 1  # neighbour offset on the RoI grid (BoxInst: 2 at 1/4 image resolution)
EPS = 1e-5


def dice_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Per row: 1 - 2 sum(p t) / (sum(p^2) + sum(t^2)), as BoxInst computes it."""
    inter = (pred * target).sum(dim=1)
    union = (pred * pred).sum(dim=1) + (target * target).sum(dim=1)
    return 1.0 - 2.0 * inter / union.clamp(min=EPS)


def projection_loss(mask_logits: Tensor, box_targets: Tensor) -> Tensor:
    """Per RoI (R x M x M logits and 0/1 box targets): dice of the x and of the y projections."""
    probs = mask_logits.sigmoid()
    along_x = dice_loss(probs.amax(dim=1), box_targets.amax(dim=1))
    along_y = dice_loss(probs.amax(dim=2), box_targets.amax(dim=2))
    return along_x + along_y


def neighbour_offsets(dilation: int = DILATION) -> list[tuple[int, int]]:
    """The 8 neighbours (dy, dx); each unordered pair of pixels is counted from both sides."""
    return [(dy * dilation, dx * dilation) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _shifted(x: Tensor, dy: int, dx: int) -> tuple[Tensor, Tensor]:
    """x[..., i + dy, j + dx] for every (i, j) and whether that neighbour lies on the grid."""
    m = x.shape[-1]
    padded = F.pad(x, (DILATION, DILATION, DILATION, DILATION))  # offsets are at most DILATION
    out = padded[..., DILATION + dy : DILATION + dy + m, DILATION + dx : DILATION + dx + m]
    rows = torch.arange(m, device=x.device)
    valid = ((rows + dy >= 0) & (rows + dy < m))[:, None] & ((rows + dx >= 0) & (rows + dx < m))[None, :]
    return out, valid


def color_similarity(colors: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per neighbour offset: (R x M x M similarity exp(-|c_i - c_j| / theta), its validity mask)."""
    out = []
    for dy, dx in neighbour_offsets():
        other, valid = _shifted(colors, dy, dx)
        distance = torch.linalg.vector_norm(colors - other, dim=1)
        out.append((torch.exp(-distance / COLOR_THETA), valid))
    return out


def pairwise_loss(mask_logits: Tensor, colors: Tensor, box_targets: Tensor, tau: float) -> Tensor:
    """Per RoI: mean of -log P(same label) over the neighbour pairs inside the box whose colour
    similarity is >= tau; 0 for a RoI without such a pair."""
    log_fg = F.logsigmoid(mask_logits)
    log_bg = F.logsigmoid(-mask_logits)
    total = mask_logits.new_zeros(len(mask_logits))
    pairs = mask_logits.new_zeros(len(mask_logits))
    inside = box_targets > 0.5
    for (dy, dx), (similarity, valid) in zip(neighbour_offsets(), color_similarity(colors)):
        other_fg, _ = _shifted(log_fg, dy, dx)
        other_bg, _ = _shifted(log_bg, dy, dx)
        other_inside, _ = _shifted(inside.float(), dy, dx)
        log_same = torch.logaddexp(log_fg + other_fg, log_bg + other_bg)
        weight = ((similarity >= tau) & valid & inside & (other_inside > 0.5)).float()
        total = total + (-log_same * weight).flatten(1).sum(1)
        pairs = pairs + weight.flatten(1).sum(1)
    return total / pairs.clamp(min=1.0)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """3 x H x W sRGB in [0, 1] -> CIE LAB (D65), L in [0, 100]."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    to_xyz = rgb.new_tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
    xyz = torch.einsum("ij,jhw->ihw", to_xyz, linear)
    xyz = xyz / rgb.new_tensor([0.950456, 1.0, 1.088754])[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lightness = torch.where(xyz[1] > 0.008856, 116 * f[1] - 16, 903.3 * xyz[1])
    return torch.stack([lightness, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def roi_colors(lab: Tensor, rois: Tensor, size: int) -> Tensor:
    """The LAB image pooled onto each RoI's size x size grid (R x 3 x size x size)."""
    return roi_align(lab[None], [rois], (size, size), spatial_scale=1.0, sampling_ratio=2)


def box_mask_losses(
    mask_logits: Tensor, box_targets: Tensor, colors: Tensor | None, projection_weight: float,
    pairwise_weight: float, tau: float,
) -> Tensor:
    """Per RoI: projection_weight * projection + pairwise_weight * pairwise (no colours: none)."""
    loss = projection_weight * projection_loss(mask_logits, box_targets)
    if pairwise_weight > 0 and colors is not None:
        loss = loss + pairwise_weight * pairwise_loss(mask_logits, colors, box_targets, tau)
    return loss
