import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from salis.analysis.calibration import iou_head_metrics, matched_iou_pairs, pseudo_label_quality
from salis.engine.inference import Prediction


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": r["counts"].decode()}


def square(x0, y0, x1, y1, shape=(32, 32)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_matched_pairs_hand_values():
    gt = [{"bbox": [0, 0, 10, 10], "segmentation": rle(square(0, 0, 10, 10)), "category_id": 1}]
    masks = np.stack([square(0, 0, 5, 10), square(20, 20, 30, 30)])  # left half; far away
    pred = Prediction(
        image_id=7, boxes=np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32),
        scores=np.array([0.9, 0.8], np.float32), category_ids=np.array([1, 1]), masks=masks,
        posteriors=np.zeros((2, 2), np.float32),
        box_ious=np.array([0.8, 0.1], np.float32), mask_ious=np.array([0.4, 0.1], np.float32),
    )
    pairs = matched_iou_pairs(pred, gt)
    assert len(pairs) == 1  # the far detection matches nothing
    row = pairs.iloc[0]
    assert row.true_box_iou == pytest.approx(1.0) and row.true_mask_iou == pytest.approx(0.5)
    assert row.pred_mask_iou == pytest.approx(0.4) and row.image_id == 7


def test_iou_head_metrics_mae_and_pearson():
    pairs = pd.DataFrame({"pred_box_iou": [0.5, 0.7, 0.9], "true_box_iou": [0.6, 0.8, 1.0],
                          "pred_mask_iou": [0.5, 0.5, 0.5], "true_mask_iou": [0.4, 0.6, 0.5]})
    m = iou_head_metrics(pairs)
    assert m["box_iou_mae"] == pytest.approx(0.1) and m["box_iou_pearson"] == pytest.approx(1.0)
    assert m["mask_iou_mae"] == pytest.approx(0.2 / 3)
    assert m["mask_iou_pearson"] is None  # constant predictions: correlation undefined
    assert m["iou_matched_detections"] == 3


def test_pseudo_label_quality_counts_category_and_overlap():
    gt = {1: [{"segmentation": rle(square(0, 0, 10, 10)), "category_id": 1}]}
    pseudo = pd.DataFrame({
        "image_id": [1, 1], "category_id": [1, 2], "height": [32, 32], "width": [32, 32],
        "rle": [rle(square(0, 0, 10, 10))["counts"], rle(square(0, 0, 10, 5))["counts"]],
    })
    q = pseudo_label_quality(pseudo, gt.__getitem__)
    assert q["pseudo_precision"] == pytest.approx(0.5)  # the second has the wrong class
    assert q["pseudo_mask_iou"] == pytest.approx((1.0 + 0.5) / 2)
    assert pseudo_label_quality(pseudo.iloc[:0], gt.__getitem__)["pseudo_precision"] is None
