"""The registry of label kinds: every kind of label an annotator can be asked for.

    label_kind("point").suffix          # ".point"
    label_kind(name).seconds_per_instance(params.cost)
    label_kinds()                       # every kind, in salis.params.LABEL_TYPES order

Each kind is one module here (see base.LabelKind for the parts it owns) registered below; its name
(and any cost terms) go in salis.params, which validates `annotation.policy` against LABEL_TYPES.
tests/test_label_kinds.py checks that every registered kind implements every part.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from salis.annotation.kinds.base import DEFAULT_KIND, AnnotatorView, LabelKind, Parser
from salis.annotation.kinds.box import BoxKind
from salis.annotation.kinds.correct import CorrectKind
from salis.annotation.kinds.image import ImageKind
from salis.annotation.kinds.mask import MaskKind
from salis.annotation.kinds.point import PointKind
from salis.params import LABEL_TYPES

__all__ = ["DEFAULT_KIND", "AnnotatorView", "LabelKind", "Parser", "label_kind", "label_kinds", "recognised_kind", "register",
           "registered", "kinds_training"]

_REGISTRY: dict[str, LabelKind] = {}


def register(kind: LabelKind) -> LabelKind:
    if kind.name in _REGISTRY:
        raise ValueError(f"label kind {kind.name!r} is registered twice")
    _REGISTRY[kind.name] = kind
    return kind


for _kind in (MaskKind(), BoxKind(), PointKind(), ImageKind(), CorrectKind()):
    register(_kind)


def label_kind(name: str) -> LabelKind:
    """The kind called `name`; a ValueError naming the known ones otherwise."""
    try:
        return _REGISTRY[str(name)]
    except KeyError:
        raise ValueError(f"unknown label type {name!r}; label types are {', '.join(_REGISTRY)}") from None


def label_kinds() -> list[LabelKind]:
    """Every registered kind: those salis.params names first, in its order, then any others."""
    order = {name: i for i, name in enumerate(LABEL_TYPES)}
    return sorted(_REGISTRY.values(), key=lambda k: order.get(k.name, len(order)))


def kinds_training(route: str) -> list[LabelKind]:
    """The kinds training uses through `route` (full, boxes or weak)."""
    return [k for k in label_kinds() if k.training == route]


def recognised_kind(entry: dict) -> LabelKind | None:
    """The kind whose geometry an exported annotation holds (the most specific first), or None."""
    for kind in sorted(label_kinds(), key=lambda k: k.recognition_rank):
        if kind.recognises(entry):
            return kind
    return None


@contextmanager
def registered(kind: LabelKind) -> Iterator[LabelKind]:
    """Register a kind for the duration of a block (tests add throwaway kinds this way)."""
    register(kind)
    try:
        yield kind
    finally:
        del _REGISTRY[kind.name]
