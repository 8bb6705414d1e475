"""How well the IoU heads predict IoU, and how good the pseudo-labels are (analysis metrics).

Both compare predictions with ground truth: the test split's for the IoU heads, the hidden
pool ground truth (simulated oracle only) for pseudo-labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from salis.artifacts.tables import IOU_PAIRS
from salis.engine.inference import Prediction
from salis.geometry import encode_masks, mask_ious, rle, rles_from_counts, xyxy_to_xywh

MATCH_IOU = 0.5  # a detection is matched when its best box IoU with a ground-truth instance is > 0.5


def iou_pairs(pred: Prediction, gt_annotations: list[dict], det_rles: list[dict] | None = None) -> pd.DataFrame:
    """Predicted vs true box and mask IoU for every detection of an image.

    A detection's true IoU is its best IoU with any ground-truth instance of its category, 0 if
    there is none: what the IoU heads should predict for a false positive too, since tsp, beta_iou
    and the pseudo-label gate read every detection. `matched`: best box IoU > MATCH_IOU (the
    figures before 2026-12 were over these only). det_rles: the detections' masks as RLEs when
    the caller has them (evaluate encodes them for COCOeval), else encoded here.
    """
    columns = IOU_PAIRS.schema.names
    if len(pred) == 0:
        return IOU_PAIRS.empty()
    n = len(pred)
    true_box, true_mask = np.zeros(n), np.zeros(n)
    if gt_annotations:
        gt_boxes = np.array([a["bbox"] for a in gt_annotations], dtype=np.float64)
        gt_cats = np.array([a["category_id"] for a in gt_annotations])
        same = np.asarray(pred.category_ids).reshape(-1, 1) == gt_cats[None, :]
        box_ious = np.asarray(mask_utils.iou(xyxy_to_xywh(pred.boxes).tolist(), gt_boxes.tolist(), [0] * len(gt_boxes)))
        if det_rles is None:
            height, width = pred.masks.shape[1:]
            det_rles = rles_from_counts(encode_masks(pred.masks), height, width)
        ious = mask_ious(det_rles, [rle(a["segmentation"]) for a in gt_annotations])
        true_box = np.where(same, box_ious, 0.0).max(axis=1)
        true_mask = np.where(same, ious, 0.0).max(axis=1)
    return pd.DataFrame(
        {
            "image_id": pred.image_id,
            "score": pred.scores.astype(np.float64),
            "matched": true_box > MATCH_IOU,
            "pred_box_iou": pred.box_ious.astype(np.float64),
            "true_box_iou": true_box,
            "pred_mask_iou": pred.mask_ious.astype(np.float64),
            "true_mask_iou": true_mask,
        },
        columns=columns,
    )


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def iou_head_metrics(pairs: pd.DataFrame) -> dict[str, float | int | None]:
    """MAE and Pearson correlation of predicted against true IoU, None where undefined: over the
    matched detections (box_iou_pearson, ...) and over all of them (box_iou_pearson_all, ...)."""
    matched = pairs["matched"].to_numpy(dtype=bool) if "matched" in pairs else np.ones(len(pairs), bool)
    out: dict[str, float | int | None] = {"iou_matched_detections": int(matched.sum()), "iou_detections": len(pairs)}
    for suffix, rows in (("", pairs[matched]), ("_all", pairs)):
        for kind in ("box", "mask"):
            pred = rows[f"pred_{kind}_iou"].to_numpy(dtype=np.float64)
            true = rows[f"true_{kind}_iou"].to_numpy(dtype=np.float64)
            valid = ~np.isnan(pred)
            pred, true = pred[valid], true[valid]
            out[f"{kind}_iou_mae{suffix}"] = float(np.abs(pred - true).mean()) if len(pred) else None
            out[f"{kind}_iou_pearson{suffix}"] = _pearson(pred, true)
    return out


def pseudo_label_quality(pseudo: pd.DataFrame, gt_of: callable, prefix: str = "pseudo") -> dict[str, float | None]:
    """Pseudo-labels (or targets made from weak labels) against the hidden ground truth of their
    images: precision (share whose best mask IoU with a ground-truth instance of the same category
    is >= 0.5), recall (share of those images' ground-truth instances that some pseudo-label of
    their category overlaps at mask IoU >= 0.5) and the mean best mask IoU."""
    keys = (f"{prefix}_precision", f"{prefix}_recall", f"{prefix}_mask_iou")
    if pseudo.empty:
        return dict.fromkeys(keys)
    best_ious, correct, found, instances = [], [], 0, 0
    for image_id, rows in pseudo.groupby("image_id", sort=True):
        gt = gt_of(int(image_id))
        h, w = int(rows["height"].iloc[0]), int(rows["width"].iloc[0])
        dets = rles_from_counts(rows["rle"], h, w)
        instances += len(gt)
        if not gt:
            best_ious += [0.0] * len(dets)
            correct += [False] * len(dets)
            continue
        ious = mask_ious(dets, [rle(a["segmentation"]) for a in gt])
        gt_cats = np.array([a["category_id"] for a in gt])
        same = gt_cats[None, :] == rows["category_id"].to_numpy()[:, None]
        best = ious.argmax(axis=1)
        best_iou = ious[np.arange(len(dets)), best]
        best_ious += best_iou.tolist()
        correct += ((best_iou >= 0.5) & (gt_cats[best] == rows["category_id"].to_numpy())).tolist()
        found += int(((ious >= 0.5) & same).any(axis=0).sum())
    recall = found / instances if instances else None
    return dict(zip(keys, (float(np.mean(correct)), recall, float(np.mean(best_ious)))))
