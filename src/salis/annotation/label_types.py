"""The four label types an annotator can be asked for, and how each is derived from a full mask.

- mask: the instance's mask (COCO RLE), as today;
- box: its tight box (COCO xywh), no mask;
- point: one click inside the instance, (x, y) in pixel coordinates (a pixel's centre is at
  col + 0.5, row + 0.5), no mask, no box;
- image: per category, whether it is present and how many instances it has.

The simulated oracle derives the cheap types from the hidden ground truth, so a weak label is
exactly what a careful annotator would have given: salis never learns more than that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from salis.geometry import decode_rles, rle
from salis.params import LABEL_TYPES

__all__ = ["LABEL_TYPES", "click_point", "derive_labels", "image_counts", "label_suffix"]


def label_suffix(label_type: str) -> str:
    """File-name suffix of a label type's request and label files: "" for masks, ".point" etc."""
    if label_type not in LABEL_TYPES:
        raise ValueError(f"unknown label type {label_type!r}; label types are {', '.join(LABEL_TYPES)}")
    return "" if label_type == "mask" else f".{label_type}"


def click_point(mask: np.ndarray, placement: str, rng: np.random.Generator) -> tuple[float, float]:
    """Where an annotator clicks on a binary H x W mask: (x, y) at a pixel centre.

    center: the pixel deepest inside the mask (largest distance to the background; the first in
    raster order on ties). uniform: any mask pixel, equally likely. annotator: a pixel drawn with
    probability proportional to its distance to the background, so clicks land well inside the
    instance, near but not always at its centre, as people click.
    """
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        raise ValueError("cannot click on an empty mask")
    if placement == "uniform":
        rows, cols = np.nonzero(m)
        k = int(rng.integers(len(rows)))
        return float(cols[k]) + 0.5, float(rows[k]) + 0.5
    depth = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    if placement == "center":
        row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
        return float(col) + 0.5, float(row) + 0.5
    if placement == "annotator":
        flat = depth.ravel()
        k = int(rng.choice(len(flat), p=flat / flat.sum()))
        row, col = divmod(k, m.shape[1])
        return float(col) + 0.5, float(row) + 0.5
    raise ValueError(f"unknown point placement {placement!r}; use center, uniform or annotator")


def image_counts(annotations: Iterable[Mapping[str, Any]], category_ids: Iterable[int]) -> list[dict]:
    """[{category_id, count}] for every category (0 = absent), in category id order."""
    counts = {int(c): 0 for c in category_ids}
    for ann in annotations:
        counts[int(ann["category_id"])] += 1
    return [{"category_id": c, "count": n} for c, n in sorted(counts.items())]


def derive_labels(
    annotations: list[dict], label_type: str, height: int, width: int, category_ids: Iterable[int],
    placement: str, rng: np.random.Generator,
) -> tuple[list[dict], dict]:
    """(annotations, image fields) of one image labeled with `label_type`, from its full masks.

    mask: the annotations unchanged. box: {category_id, bbox}. point: {category_id, point}, one
    click per instance in annotation order. image: no annotations; the image fields carry
    `counts`. Every image gets `label_type`.
    """
    fields: dict[str, Any] = {"label_type": label_type}
    if label_type == "mask":
        return [dict(a) for a in annotations], fields
    if label_type == "box":
        return [{"category_id": int(a["category_id"]), "bbox": [float(v) for v in a["bbox"]]} for a in annotations], fields
    if label_type == "point":
        masks = decode_rles([rle(a["segmentation"]) for a in annotations], height, width) if annotations else []
        points = [click_point(m, placement, rng) for m in masks]
        return [{"category_id": int(a["category_id"]), "point": [x, y]} for a, (x, y) in zip(annotations, points)], fields
    if label_type == "image":
        return [], {**fields, "counts": image_counts(annotations, category_ids)}
    raise ValueError(f"unknown label type {label_type!r}; label types are {', '.join(LABEL_TYPES)}")
