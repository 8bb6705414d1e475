"""One vector per image from the FPN feature maps: what core-set and the loss-prediction module read."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def _level_scale(feature_size: int, image_size: int) -> float:
    """The level's scale as torchvision's MultiScaleRoIAlign infers it: the nearest power of two."""
    return 2.0 ** round(math.log2(feature_size / image_size))


def image_level_features(
    features: Mapping[str, Tensor], image_shapes: Sequence[tuple[int, int]], levels: Sequence[str]
) -> list[Tensor]:
    """One B x C tensor per level: each image's feature map averaged over the part that covers it.

    torchvision pads the images of a batch to a common size; averaging over the padding too would
    make an image's vector depend on which images share its batch, so the padding is left out.
    """
    max_h = max(int(s[0]) for s in image_shapes)
    max_w = max(int(s[1]) for s in image_shapes)
    pooled = []
    for name in levels:
        fmap = features[name]
        fh, fw = fmap.shape[-2:]
        sh, sw = _level_scale(fh, max_h), _level_scale(fw, max_w)
        sizes = [(min(fh, max(1, math.ceil(h * sh))), min(fw, max(1, math.ceil(w * sw)))) for h, w in image_shapes]
        if all(size == (fh, fw) for size in sizes):
            pooled.append(fmap.mean(dim=(2, 3)))  # no padding in this batch: one reduction
        else:
            pooled.append(torch.stack([fmap[i, :, :h, :w].mean(dim=(1, 2)) for i, (h, w) in enumerate(sizes)]))
    return pooled
