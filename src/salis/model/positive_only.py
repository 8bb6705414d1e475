"""Positive-only classification for pseudo-labeled images (TSP's semi-supervised loss).

Such an image's background anchors and background RoIs are marked "ignore" (-1) when targets are
assigned, so only its positives contribute a classification loss; box and mask losses are
unchanged. torchvision's target-assignment hooks never see the targets' dicts, so the call that
does (the RPN's forward, the RoI heads' sampling) records the flags for the hook to read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor

POSITIVE_ONLY = "positive_only"  # target key: True for a pseudo-labeled image


def positive_only_flags(targets: Sequence[Mapping[str, Any]] | None) -> list[bool]:
    if targets is None:
        return []
    return [bool(t.get(POSITIVE_ONLY, False)) for t in targets]


def ignore_background(labels: Sequence[Tensor], flags: Sequence[bool]) -> list[Tensor]:
    """Turn background (0) into ignore (-1) for the flagged images; samplers then skip them."""
    out = []
    for labels_in_image, positive_only in zip(labels, flags):
        if positive_only:
            labels_in_image = labels_in_image.clone()
            labels_in_image[labels_in_image == 0] = -1
        out.append(labels_in_image)
    return out


class PositiveOnlyTargets:
    """Mixin for the RPN and the RoI heads: flags recorded for one call, read by the hook."""

    _flags: Sequence[bool] = ()  # per image of the current call; empty outside a call

    @contextmanager
    def positive_only(self, targets: Sequence[Mapping[str, Any]] | None) -> Iterator[None]:
        self._flags = positive_only_flags(targets)
        try:
            yield
        finally:
            self._flags = ()

    def ignore_flagged_background(self, labels: Sequence[Tensor]) -> list[Tensor]:
        return ignore_background(labels, self._flags or [False] * len(labels))
