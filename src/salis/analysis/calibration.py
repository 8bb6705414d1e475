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

MATCH_IOU = 0.5  # a detection is matched to the GT box it overlaps most, when box IoU > 0.5


def matched_iou_pairs(pred: Prediction, gt_annotations: list[dict]) -> pd.DataFrame:
    """Predicted vs true box and mask IoU for every detection matched to a ground-truth instance."""
    columns = IOU_PAIRS.schema.names
    if len(pred) == 0 or not gt_annotations:
        return IOU_PAIRS.empty()
    gt_boxes = np.array([a["bbox"] for a in gt_annotations], dtype=np.float64)
    box_ious = np.asarray(mask_utils.iou(xyxy_to_xywh(pred.boxes).tolist(), gt_boxes.tolist(), [0] * len(gt_boxes)))
    best = box_ious.argmax(axis=1)
    true_box = box_ious[np.arange(len(pred)), best]
    matched = np.where(true_box > MATCH_IOU)[0]
    if len(matched) == 0:
        return IOU_PAIRS.empty()
    height, width = pred.masks.shape[1:]
    det_rles = rles_from_counts(encode_masks(pred.masks[matched]), height, width)
    gt_rles = [rle(gt_annotations[g]["segmentation"]) for g in best[matched]]
    true_mask = np.array([mask_utils.iou([d], [g], [0])[0][0] for d, g in zip(det_rles, gt_rles)])
    return pd.DataFrame(
        {
            "image_id": pred.image_id,
            "score": pred.scores[matched].astype(np.float64),
            "pred_box_iou": pred.box_ious[matched].astype(np.float64),
            "true_box_iou": true_box[matched],
            "pred_mask_iou": pred.mask_ious[matched].astype(np.float64),
            "true_mask_iou": true_mask,
        },
        columns=columns,
    )


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def iou_head_metrics(pairs: pd.DataFrame) -> dict[str, float | int | None]:
    """MAE and Pearson correlation of predicted against true IoU; None where undefined."""
    out: dict[str, float | int | None] = {"iou_matched_detections": len(pairs)}
    for kind in ("box", "mask"):
        pred = pairs[f"pred_{kind}_iou"].to_numpy(dtype=np.float64)
        true = pairs[f"true_{kind}_iou"].to_numpy(dtype=np.float64)
        valid = ~np.isnan(pred)
        pred, true = pred[valid], true[valid]
        out[f"{kind}_iou_mae"] = float(np.abs(pred - true).mean()) if len(pred) else None
        out[f"{kind}_iou_pearson"] = _pearson(pred, true)
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
