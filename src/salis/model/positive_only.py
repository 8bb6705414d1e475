"""Positive-only classification for pseudo-labeled images (TSP's semi-supervised loss), and its
variant with a background term where the labeling model saw nothing.

Such an image's background anchors and background RoIs are marked "ignore" (-1) when targets are
assigned, so only its positives contribute a classification loss; box and mask losses are
unchanged. With `pseudo.background: confident` the image's target also holds UNCERTAIN_BOXES,
every detection of the model that labeled it scoring at least `pseudo.background_score`: then only
the background anchors and RoIs within NEAR_UNCERTAIN_IOU of one of them are ignored (an
instance the gate did not pass may lie there), and the rest stay negatives, as on a labeled image.
torchvision's target-assignment hooks never see the targets' dicts, so the call that does (the
RPN's forward, the RoI heads' sampling) records them for the hook to read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

POSITIVE_ONLY = "positive_only"  # target key: True for a pseudo-labeled image
UNCERTAIN_BOXES = "uncertain_boxes"  # target key: K x 4 xyxy, where background is not trusted
# Background anchors are below 0.3 IoU with every instance (the RPN's negative threshold); one at
# least that close to a detection could be a positive of an instance nobody labeled.
NEAR_UNCERTAIN_IOU = 0.3


def positive_only_flags(targets: Sequence[Mapping[str, Any]] | None) -> list[bool]:
    if targets is None:
        return []
    return [bool(t.get(POSITIVE_ONLY, False)) for t in targets]


def uncertain_boxes_of(targets: Sequence[Mapping[str, Any]] | None) -> list[Tensor | None]:
    """Per image: its UNCERTAIN_BOXES, or None (every background of a flagged image ignored)."""
    if targets is None:
        return []
    return [t.get(UNCERTAIN_BOXES) for t in targets]


def ignore_background(labels: Sequence[Tensor], flags: Sequence[bool],
                      candidates: Sequence[Tensor] | None = None,
                      uncertain: Sequence[Tensor | None] | None = None) -> list[Tensor]:
    """Turn background (0) into ignore (-1) for the flagged images; samplers then skip them. Where
    a flagged image has uncertain boxes (K x 4), only its background candidates (anchors or
    proposals, N x 4, aligned with its labels) within NEAR_UNCERTAIN_IOU of one are ignored."""
    out = []
    for i, (labels_in_image, positive_only) in enumerate(zip(labels, flags)):
        if positive_only:
            boxes = uncertain[i] if uncertain is not None and i < len(uncertain) else None
            background = labels_in_image == 0
            if boxes is not None:
                if candidates is None:
                    raise ValueError("uncertain boxes need the candidates the labels belong to")
                near = torch.zeros_like(background)
                if len(boxes) and len(candidates[i]):
                    near = box_iou(candidates[i].to(boxes.dtype), boxes).amax(dim=1) >= NEAR_UNCERTAIN_IOU
                background = background & near
            labels_in_image = labels_in_image.clone()
            labels_in_image[background] = -1
        out.append(labels_in_image)
    return out


class PositiveOnlyTargets:
    """Mixin for the RPN and the RoI heads: flags recorded for one call, read by the hook."""

    _flags: Sequence[bool] = ()  # per image of the current call; empty outside a call
    _uncertain: Sequence[Tensor | None] = ()  # per image: UNCERTAIN_BOXES or None

    @contextmanager
    def positive_only(self, targets: Sequence[Mapping[str, Any]] | None) -> Iterator[None]:
        self._flags, self._uncertain = positive_only_flags(targets), uncertain_boxes_of(targets)
        try:
            yield
        finally:
            self._flags, self._uncertain = (), ()

    def ignore_flagged_background(self, labels: Sequence[Tensor], candidates: Sequence[Tensor]) -> list[Tensor]:
        return ignore_background(labels, self._flags or [False] * len(labels), candidates, self._uncertain)
