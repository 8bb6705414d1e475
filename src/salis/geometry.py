"""Boxes and masks in the formats the layers exchange: xyxy (torchvision) and xywh (COCO)
boxes; binary masks and COCO run-length encodings (RLE) with string counts (JSON, parquet)
or bytes counts (what pycocotools takes)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """N x 4 corner boxes -> N x 4 (x, y, width, height), float64."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] -= out[:, :2]
    return out


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """N x 4 COCO boxes -> N x 4 corner boxes, float32 (torchvision's dtype)."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, 2:] += out[:, :2]
    return out


def rle(segmentation: Mapping[str, Any], height: int | None = None, width: int | None = None) -> dict:
    """A compressed COCO RLE (counts str or bytes) as pycocotools takes it; the size comes from
    the segmentation unless height and width are given."""
    counts = segmentation["counts"]
    size = [int(height), int(width)] if height is not None and width is not None else [int(s) for s in segmentation["size"]]
    return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rles_from_counts(counts: Iterable[str], height: int, width: int) -> list[dict]:
    """RLE counts strings of one image (the `rle` column of the instance tables) -> pycocotools RLEs."""
    return [{"size": [int(height), int(width)], "counts": c.encode("ascii")} for c in counts]


def encode_masks(masks: np.ndarray) -> list[str]:
    """N x H x W binary masks -> N compressed RLE counts strings."""
    masks = np.asarray(masks)
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [r["counts"].decode("ascii") for r in rles]


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A 2-D binary mask as JSON-ready compressed RLE ({"size": [h, w], "counts": str})."""
    # pycocotools wants a Fortran-ordered uint8 array; counts come back as bytes.
    encoded = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def decode_rles(rles: list[dict], height: int, width: int) -> np.ndarray:
    """pycocotools RLEs of one image -> N x H x W uint8 masks (0 x H x W for none)."""
    if not rles:
        return np.zeros((0, height, width), dtype=np.uint8)
    return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1)).astype(np.uint8)


def mask_ious(detections: list[dict], ground_truth: list[dict]) -> np.ndarray:
    """len(detections) x len(ground_truth) mask IoUs of pycocotools RLEs (no crowd)."""
    if not detections or not ground_truth:
        return np.zeros((len(detections), len(ground_truth)))
    return np.asarray(mask_utils.iou(detections, ground_truth, [0] * len(ground_truth)))
