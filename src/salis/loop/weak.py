"""Weak labels become training targets, with the latest model's detections (weak_label stage).

Points (PointWSSIS: "The Devil is in the Points"): every instance of a point-labeled image is
known by its click. Each point claims the detection that best explains it: one of its class,
scoring at least weak.point_min_score, whose mask contains the point; detections holding no
other point first (one that holds several is likely instances merged), then by TSP's instance
score s (the class score without IoU heads); a detection serves one point at most (the best
pairs are matched first). A claimed mask that still holds other points is cut to the pixels
nearer its own point than theirs. Unclaimed detections are dropped. A point left without a detection is
reported and refined: the mask head runs at a square box around it (weak.refine_box_scale x the
class's median labeled box side), then once more at the box of the connected part of that mask
which holds the point. As every instance is known, the image trains with the full
classification loss, not the positive-only loss of pseudo-labeled images; a point whose
refinement finds nothing leaves its image incomplete, so that image falls back to positive-only.

Image-level labels (class presence and counts): detections of classes the image does not hold
are dropped, at most the counted number per class are kept (best class score first, at least
weak.image_score_thresh). When every counted instance found a detection the image is complete
(full classification loss); otherwise it trains positive-only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils
from scipy import ndimage

from salis.acquisition.measures import instance_scores
from salis.artifacts.tables import WEAK
from salis.geometry import encode_masks
from salis.params import WeakParams

if TYPE_CHECKING:  # only a type here: this module runs without torch (no weak labels, no model)
    from salis.engine.inference import Prediction

# (image id, boxes N x 4 xyxy, category ids) -> N x H x W masks: the mask head at given boxes
RefineFn = Callable[[int, np.ndarray, Sequence[int]], np.ndarray]


@dataclasses.dataclass
class WeakSummary:
    """What the weak_label stage made of the weak labels (for metrics and `salis status`)."""

    point_images: int = 0
    points: int = 0
    points_claimed: int = 0  # explained by a detection
    points_refined: int = 0  # got a mask from the refinement step
    points_failed: int = 0  # neither: their image trains positive-only
    image_label_images: int = 0
    counted_instances: int = 0
    image_label_kept: int = 0
    complete_images: int = 0  # weak images that train with the full classification loss
    # complete images without any instance (no click, every count 0): they train as background
    empty_images: list[int] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {f"weak_{k}": int(v) for k, v in dataclasses.asdict(self).items() if k != "empty_images"}
        out["weak_empty_image_ids"] = sorted(self.empty_images)
        return out


def ranking_scores(pred: Prediction) -> np.ndarray:
    """TSP's instance score s per detection, or its class score where IoU heads are missing."""
    triplet = np.stack([pred.scores, pred.box_ious, pred.mask_ious], axis=1).astype(np.float64)
    if len(triplet) and np.isfinite(triplet).all():
        return instance_scores(triplet)
    return pred.scores.astype(np.float64)


def points_inside(masks: np.ndarray, points: Sequence[tuple[float, float, int]]) -> np.ndarray:
    """len(masks) x len(points): whether each mask holds each point's pixel."""
    out = np.zeros((len(masks), len(points)), dtype=bool)
    if len(masks) == 0:
        return out
    height, width = masks.shape[1:]
    for p, (x, y, _) in enumerate(points):
        row, col = int(np.floor(y)), int(np.floor(x))
        if 0 <= row < height and 0 <= col < width:
            out[:, p] = masks[:, row, col]
    return out


def claim_detections(pred: Prediction, points: Sequence[tuple[float, float, int]], min_score: float) -> list[int | None]:
    """Per point (x, y, category id): the index of the detection it claims, or None. A detection
    that holds no other point is preferred (one holding several is likely several instances
    merged); then the higher ranking score."""
    rank = ranking_scores(pred)
    inside = points_inside(pred.masks, points)
    pairs = []
    for p, (x, y, category) in enumerate(points):
        for d in range(len(pred)):
            if inside[d, p] and int(pred.category_ids[d]) == int(category) and pred.scores[d] >= min_score:
                pairs.append((int(inside[d].sum()) - 1, -rank[d], p, d))
    claims: list[int | None] = [None] * len(points)
    taken: set[int] = set()
    for _, _, p, d in sorted(pairs):
        if claims[p] is None and d not in taken:
            claims[p], taken = d, taken | {d}
    return claims


def own_share(mask: np.ndarray, k: int, points: Sequence[tuple[float, float, int]]) -> np.ndarray:
    """A mask that holds other points besides point k, cut to the pixels nearer to point k than to
    those (and to the part of that cut connected to it): a merged detection split per click."""
    others = [j for j, (x, y, _) in enumerate(points) if j != k and points_inside(mask[None], [points[j]])[0, 0]]
    if not others:
        return mask
    rows, cols = np.nonzero(mask)
    order = sorted([k, *others])  # ties go to the lower point index, whichever point asks
    centres = np.array([[points[j][0], points[j][1]] for j in order])
    pixels = np.stack([cols + 0.5, rows + 0.5], axis=1)
    nearest = np.asarray(order)[np.argmin(((pixels[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)]
    cut = np.zeros_like(mask, dtype=bool)
    cut[rows[nearest == k], cols[nearest == k]] = True
    part = component_at(cut, points[k][0], points[k][1])
    return part if part.any() else cut


def component_at(mask: np.ndarray, x: float, y: float) -> np.ndarray:
    """The 8-connected part of a binary mask that holds pixel (x, y); empty when it is off the mask."""
    row, col = int(np.floor(y)), int(np.floor(x))
    if not (0 <= row < mask.shape[0] and 0 <= col < mask.shape[1]) or not mask[row, col]:
        return np.zeros_like(mask, dtype=bool)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return labels == labels[row, col]


def square_box(x: float, y: float, side: float, height: int, width: int) -> np.ndarray:
    """A side x side box (xyxy) centred on (x, y), clipped to the image."""
    half = side / 2.0
    return np.array([max(x - half, 0.0), max(y - half, 0.0), min(x + half, float(width)), min(y + half, float(height))],
                    dtype=np.float32)


def mask_box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32)


def refine_points(
    image_id: int, points: Sequence[tuple[float, float, int]], sides: Sequence[float], height: int, width: int,
    refine: RefineFn,
) -> list[np.ndarray]:
    """A mask per point from the mask head: at a square box around it, then at that mask's box;
    each time only the connected part holding the point is kept (empty when none holds it)."""
    if not points:
        return []
    boxes = np.stack([square_box(x, y, s, height, width) for (x, y, _), s in zip(points, sides)])
    categories = [int(c) for _, _, c in points]
    first = [component_at(m, x, y) for m, (x, y, _) in zip(refine(image_id, boxes, categories), points)]
    again = [k for k, m in enumerate(first) if m.any()]
    if not again:
        return first
    second = refine(image_id, np.stack([mask_box(first[k]) for k in again]), [categories[k] for k in again])
    out = list(first)
    for k, m in zip(again, second):
        x, y, _ = points[k]
        refined = component_at(m, x, y)
        out[k] = refined if refined.any() else first[k]
    return out


def median_sides(store: dict, fallback: float) -> dict[int, float]:
    """Per category: the median sqrt(w h) of the expert-drawn boxes and masks in the label store."""
    by_category: dict[int, list[float]] = {}
    for ann in store["annotations"]:
        if "bbox" in ann:
            w, h = float(ann["bbox"][2]), float(ann["bbox"][3])
            by_category.setdefault(int(ann["category_id"]), []).append(float(np.sqrt(max(w * h, 0.0))))
    sides = {c: float(np.median(v)) for c, v in by_category.items() if v}
    every = [s for v in by_category.values() for s in v]
    sides[-1] = float(np.median(every)) if every else fallback
    return sides


def point_targets(
    pred: Prediction, points: Sequence[tuple[float, float, int]], weak: WeakParams, sides: dict[int, float],
    refine: RefineFn, summary: WeakSummary,
) -> pd.DataFrame:
    """Point-guided pseudo-labels of one image: rows of the WEAK table."""
    height, width = pred.masks.shape[1:]
    claims = claim_detections(pred, points, weak.point_min_score)
    masks: list[np.ndarray] = []
    scores: list[float] = []
    origins: list[str] = []
    categories: list[int] = []
    lonely = [k for k, d in enumerate(claims) if d is None]
    lonely_sides = [weak.refine_box_scale * sides.get(int(points[k][2]), sides[-1]) for k in lonely]
    refined = dict(zip(lonely, refine_points(pred.image_id, [points[k] for k in lonely], lonely_sides, height, width, refine)))
    failed = 0
    for k, (x, y, category) in enumerate(points):
        claimed = own_share(pred.masks[claims[k]].astype(bool), k, points) if claims[k] is not None else None
        if claimed is not None and claimed.any():
            masks.append(claimed)
            scores.append(float(pred.scores[claims[k]]))
            origins.append("detection")
        elif k in refined and own_share(refined[k], k, points).any():
            masks.append(own_share(refined[k], k, points))
            scores.append(float("nan"))
            origins.append("refined")
        else:  # nothing left of a mask for this click (e.g. two clicks on one pixel)
            failed += 1
            continue
        categories.append(int(category))
    summary.point_images += 1
    summary.points += len(points)
    summary.points_claimed += sum(o == "detection" for o in origins)
    summary.points_refined += sum(o == "refined" for o in origins)
    summary.points_failed += failed
    summary.complete_images += failed == 0
    if not points:
        summary.empty_images.append(pred.image_id)
    return weak_rows(pred.image_id, masks, categories, scores, origins, "point", "full" if failed == 0 else "positive_only")


def image_label_targets(
    pred: Prediction, counts: Iterable[dict], weak: WeakParams, summary: WeakSummary
) -> pd.DataFrame:
    """Image-label-filtered pseudo-labels of one image: at most `count` detections per present class."""
    wanted = {int(c["category_id"]): int(c["count"]) for c in counts}
    order = np.lexsort((np.arange(len(pred)), -pred.scores.astype(np.float64)))
    kept: list[int] = []
    found = {c: 0 for c in wanted}
    for d in order:
        category = int(pred.category_ids[d])
        usable = pred.scores[d] >= weak.image_score_thresh and pred.masks[d].any()  # an empty mask is no target
        if usable and found.get(category, 0) < wanted.get(category, 0):
            found[category] += 1
            kept.append(int(d))
    kept.sort()
    complete = all(found[c] == n for c, n in wanted.items())
    summary.image_label_images += 1
    summary.counted_instances += sum(wanted.values())
    summary.image_label_kept += len(kept)
    summary.complete_images += complete
    if not sum(wanted.values()):
        summary.empty_images.append(pred.image_id)
    return weak_rows(
        pred.image_id, [pred.masks[d].astype(bool) for d in kept], [int(pred.category_ids[d]) for d in kept],
        [float(pred.scores[d]) for d in kept], ["detection"] * len(kept), "image", "full" if complete else "positive_only",
    )


def weak_rows(
    image_id: int, masks: Sequence[np.ndarray], categories: Sequence[int], scores: Sequence[float],
    origins: Sequence[str], label_type: str, supervision: str,
) -> pd.DataFrame:
    if not masks:
        return WEAK.empty()
    stacked = np.stack(masks).astype(np.uint8)
    height, width = stacked.shape[1:]
    counts = encode_masks(stacked)
    rles = [{"size": [height, width], "counts": c.encode("ascii")} for c in counts]
    boxes = np.asarray(mask_utils.toBbox(rles), dtype=np.float32).reshape(-1, 4)
    n = len(masks)
    return pd.DataFrame({
        "image_id": np.full(n, image_id, dtype=np.int64),
        "category_id": np.asarray(categories, dtype=np.int64),
        "score": np.asarray(scores, dtype=np.float32),
        "x": boxes[:, 0], "y": boxes[:, 1], "w": boxes[:, 2], "h": boxes[:, 3],
        "area": stacked.reshape(n, -1).sum(1).astype(np.int64),
        "height": np.full(n, height, dtype=np.int32),
        "width": np.full(n, width, dtype=np.int32),
        "rle": counts,
        "label_type": [label_type] * n,
        "supervision": [supervision] * n,
        "origin": list(origins),
    })


@dataclasses.dataclass
class WeakContext:
    """What every weak route may read: the store's clicks, params, class box sides, the refiner."""

    points: dict[int, list[tuple[float, float, int]]]
    weak: WeakParams
    sides: dict[int, float]
    refine: RefineFn
    summary: WeakSummary


def _point_route(pred: Prediction, image: dict, ctx: WeakContext) -> pd.DataFrame:
    return point_targets(pred, ctx.points.get(pred.image_id, []), ctx.weak, ctx.sides, ctx.refine, ctx.summary)


def _image_route(pred: Prediction, image: dict, ctx: WeakContext) -> pd.DataFrame:
    return image_label_targets(pred, image.get("counts", []), ctx.weak, ctx.summary)


# The training route of each weak label kind (salis.annotation.kinds, training == "weak"): how its
# labels and the model's detections become WEAK rows. tests/test_label_kinds.py checks every weak
# kind has one.
WEAK_ROUTES: dict[str, Callable[[Prediction, dict, WeakContext], pd.DataFrame]] = {
    "point": _point_route,
    "image": _image_route,
}


def weak_targets(
    predictions: Iterable[Prediction], store: dict, weak: WeakParams, refine: RefineFn, fallback_side: float,
) -> tuple[pd.DataFrame, WeakSummary]:
    """Targets of every weak-labeled image predicted, from the label store's points and counts;
    the WEAK table (images in prediction order) and what was made of them."""
    images = {int(im["id"]): im for im in store["images"]}
    points: dict[int, list[tuple[float, float, int]]] = {}
    for ann in store["annotations"]:
        if "point" in ann:
            x, y = ann["point"]
            points.setdefault(int(ann["image_id"]), []).append((float(x), float(y), int(ann["category_id"])))
    ctx = WeakContext(points, weak, median_sides(store, fallback_side), refine, WeakSummary())
    parts = []
    for pred in predictions:
        image = images[pred.image_id]
        route = WEAK_ROUTES.get(str(image.get("label_type")))
        if route is None:
            raise ValueError(f"image {pred.image_id} is labeled with {image.get('label_type', 'mask')}, not a weak label")
        parts.append(route(pred, image, ctx))
    parts = [p for p in parts if len(p)]
    table = pd.concat(parts, ignore_index=True) if parts else WEAK.empty()
    return table, ctx.summary
