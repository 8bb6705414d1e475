"""COCO instance-segmentation metrics (mask and box AP/AR) with pycocotools.

Why pycocotools and not faster-coco-eval: on a test split of ~100 images the whole
evaluation takes well under a second, so speed buys nothing and the reference
implementation wins on trust. In our notes faster-coco-eval matched pycocotools' AP
to 6 decimals but was slower in ``loadRes``.

pycocotools traps handled here:

* ``COCO.loadRes([])`` raises IndexError: no detections at all gives every metric 0.0.
* a detection on an image id missing from the ground truth trips an AssertionError in
  ``loadRes``: raised here as a ValueError naming the ids instead.
* ``COCOeval`` marks a match with the ground-truth annotation's id, so an annotation id
  of 0 would silently count as "unmatched": ground-truth ids are renumbered 1..N on a copy.
* with both ``bbox`` and ``segmentation`` in a result, ``loadRes`` takes the box area as
  the instance area; the mask evaluation drops ``bbox`` so mask area is used (as detectron2 does).
* everything pycocotools prints is swallowed so stage logs stay readable.

* ``COCOeval`` counts at most ``maxDets`` detections per image (100 by default), and
  ``summarize`` reads AP at ``maxDets=100`` through a default argument: raising
  ``params.maxDets`` alone makes it return -1. Here the cap is a parameter (at least the
  largest ground-truth count of the test split, so crowded images are not understated) and
  AP/AR are read from ``eval['precision']`` / ``eval['recall']`` at that cap.

-1 from pycocotools means "no category had ground truth to average over" (an empty
test set). Such a value is reported as 0.0: nothing can be computed, and downstream
curves and summaries expect numbers in [0, 1].
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from salis.geometry import encode_masks, xyxy_to_xywh

_SUFFIXES = ("AP", "AP50", "AP75", "AR")
_IOU_TYPES = {"mask": "segm", "box": "bbox"}
COCO_MAX_DETS = 100  # COCOeval's default cap, kept when the test split never needs more


def coco_metrics(gt: dict, detections: list[dict], detections_per_image: int = COCO_MAX_DETS) -> dict[str, float]:
    """Mask and box AP, AP50, AP75 and AR of ``detections`` against COCO dict ``gt``.

    Detections count up to a cap per image: the larger of ``detections_per_image`` (what the
    model may output) and the largest ground-truth count of an image, so that a perfect model
    scores 1.0 on crowded images too. ``test_instances_over_cap`` counts the test instances on
    images holding more than ``detections_per_image`` objects: the model cannot find them all.
    """
    _check_ids(gt, detections)
    counts = _instances_per_image(gt)
    cap = max([detections_per_image, COCO_MAX_DETS, *counts.values()])
    metrics: dict[str, float] = {}
    for prefix, iou_type in _IOU_TYPES.items():
        stats = _evaluate(gt, detections, iou_type, cap)
        metrics.update({f"{prefix}_{suffix}": stats[suffix] for suffix in _SUFFIXES})
    # Counts stay ints (an int is a float as far as the type hint goes) so JSON shows 3, not 3.0.
    metrics["num_detections"] = len(detections)
    metrics["num_test_images"] = len(gt.get("images", []))
    metrics["num_test_instances"] = sum(counts.values())
    metrics["eval_max_detections"] = cap
    metrics["test_instances_over_cap"] = sum(n for n in counts.values() if n > detections_per_image)
    return metrics


def detections_from_prediction(
    image_id: int,
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    labels_category_ids: np.ndarray,
    masks_binary: np.ndarray,
) -> list[dict]:
    """One image's predictions as COCO result dicts (bbox xywh, compressed RLE with str counts)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores).reshape(-1)
    labels = np.asarray(labels_category_ids).reshape(-1)
    masks = _binary_masks(masks_binary)
    n = len(boxes)
    if not (len(scores) == len(labels) == len(masks) == n):
        raise ValueError(
            f"image {image_id}: {n} boxes, {len(scores)} scores, {len(labels)} labels, "
            f"{len(masks)} masks; they must match"
        )
    xywh = xyxy_to_xywh(boxes)
    size = [int(s) for s in masks.shape[1:]]
    return [
        {
            "image_id": int(image_id),
            "category_id": int(labels[i]),
            "score": float(scores[i]),
            "bbox": xywh[i].tolist(),
            "segmentation": {"size": size, "counts": counts},
        }
        for i, counts in enumerate(encode_masks(masks))
    ]


def _binary_masks(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim == 2 and masks.size == 0:
        masks = masks.reshape(0, *masks.shape)  # e.g. an empty (0, 0) placeholder
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    if masks.dtype.kind == "f":
        # A soft mask thresholded at >0 would be wrong silently: the caller must binarise.
        raise ValueError(f"masks must be binary (bool or uint8), got {masks.dtype}")
    return masks != 0


def _check_ids(gt: dict, detections: list[dict]) -> None:
    """ValueError naming detection image/category ids the ground truth lacks."""
    image_ids = {img["id"] for img in gt.get("images", [])}
    bad_images = sorted({d["image_id"] for d in detections} - image_ids)
    if bad_images:
        raise ValueError(f"detections on image ids not in the ground truth: {bad_images}")
    # COCOeval would ignore these silently, hiding a label-mapping bug.
    category_ids = {c["id"] for c in gt.get("categories", [])}
    bad_categories = sorted({d["category_id"] for d in detections} - category_ids)
    if bad_categories:
        raise ValueError(f"detections with category ids not in the ground truth: {bad_categories}")


def _instances_per_image(gt: dict) -> dict[int, int]:
    # Crowd regions are ignored by COCOeval, so they are not instances to find.
    counts = {int(im["id"]): 0 for im in gt.get("images", [])}
    for a in gt.get("annotations", []):
        if not a.get("iscrowd", 0):
            counts[int(a["image_id"])] = counts.get(int(a["image_id"]), 0) + 1
    return counts


def _evaluate(gt: dict, detections: list[dict], iou_type: str, max_dets: int) -> dict[str, float]:
    """AP, AP50, AP75 and AR (area "all", at `max_dets` per image) for one iou type, with -1
    ("nothing to average") mapped to 0.0."""
    if not detections:
        return dict.fromkeys(_SUFFIXES, 0.0)  # loadRes([]) raises IndexError; nothing found
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _coco_from_dict(_normalized_gt(gt))
        coco_dt = coco_gt.loadRes(_results_for(detections, iou_type))
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.maxDets = [1, 10, max_dets]
        # only area "all" is reported: the small/medium/large ranges would triple evaluateImg's work
        evaluator.params.areaRng, evaluator.params.areaRngLbl = evaluator.params.areaRng[:1], ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    return _summary(evaluator, max_dets)


def _summary(evaluator: COCOeval, max_dets: int) -> dict[str, float]:
    """The numbers COCOeval.summarize would print at maxDets = max_dets (its own averaging: the
    mean over the cells that are not -1), read straight from the accumulated arrays."""
    p = evaluator.params
    area = p.areaRngLbl.index("all")
    cap = p.maxDets.index(max_dets)
    precision = evaluator.eval["precision"][:, :, :, area, cap]  # T x R x K
    recall = evaluator.eval["recall"][:, :, area, cap]  # T x K

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return max(float(np.mean(valid)), 0.0) if valid.size else 0.0

    at = lambda thr: np.where(np.isclose(p.iouThrs, thr))[0]  # noqa: E731
    return {"AP": mean(precision), "AP50": mean(precision[at(0.5)]), "AP75": mean(precision[at(0.75)]),
            "AR": mean(recall)}


def _coco_from_dict(dataset: dict) -> COCO:
    """A COCO object from an in-memory dict, without a temp file."""
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _normalized_gt(gt: dict) -> dict:
    """A copy of gt that COCOeval can use as is: ids 1..N, iscrowd and area present."""
    dataset = copy.deepcopy(gt)
    dataset.setdefault("images", [])
    dataset.setdefault("categories", [])
    annotations = dataset.setdefault("annotations", [])
    for new_id, ann in enumerate(annotations, start=1):
        ann["id"] = new_id  # 0 is COCOeval's "unmatched" marker
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(mask_util.area(ann["segmentation"]))
    return dataset


def _results_for(detections: list[dict], iou_type: str) -> list[dict]:
    """Copies of detections for loadRes (which mutates them), shaped for one iou type."""
    drop = "bbox" if iou_type == "segm" else "segmentation"
    return [{k: v for k, v in d.items() if k != drop} for d in detections]


def per_image_ap50(ground_truth: list[dict], detections: list[dict]) -> float:
    """One image's mask AP at IoU 0.5, COCO's way on a single image: detections by score, each
    matched to the best unmatched ground truth of its category at mask IoU >= 0.5, precision
    made monotone and read at 101 recall points. An image without ground truth scores 1.0 when
    nothing is detected and 0.0 otherwise; NaN never appears."""
    if not ground_truth:
        return 1.0 if not detections else 0.0
    order = sorted(range(len(detections)), key=lambda i: -float(detections[i]["score"]))
    dets = [detections[i] for i in order]
    hits = np.zeros(len(dets), dtype=bool)
    if dets:
        ious = np.asarray(mask_util.iou([d["segmentation"] | {"counts": _bytes(d["segmentation"]["counts"])} for d in dets],
                                        [g["segmentation"] | {"counts": _bytes(g["segmentation"]["counts"])} for g in ground_truth],
                                        [0] * len(ground_truth)))
        taken = np.zeros(len(ground_truth), dtype=bool)
        gt_cats = np.array([int(g["category_id"]) for g in ground_truth])
        for k, det in enumerate(dets):
            candidates = np.where(~taken & (gt_cats == int(det["category_id"])) & (ious[k] >= 0.5))[0]
            if len(candidates):
                best = candidates[np.argmax(ious[k, candidates])]
                taken[best], hits[k] = True, True
    tp = np.cumsum(hits)
    recall = tp / len(ground_truth)
    precision = tp / np.arange(1, len(dets) + 1) if len(dets) else np.zeros(0)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(dets) else precision
    points = np.linspace(0.0, 1.0, 101)
    index = np.searchsorted(recall, points, side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in index]))


def _bytes(counts: Any) -> bytes:
    return counts.encode("ascii") if isinstance(counts, str) else counts
