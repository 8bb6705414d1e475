import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from salis.analysis.calibration import iou_head_metrics, iou_pairs, pseudo_label_quality
from salis.engine.inference import Prediction


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": r["counts"].decode()}


def square(x0, y0, x1, y1, shape=(32, 32)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_pairs_cover_every_detection_with_hand_values():
    gt = [{"bbox": [0, 0, 10, 10], "segmentation": rle(square(0, 0, 10, 10)), "category_id": 1},
          {"bbox": [20, 0, 10, 10], "segmentation": rle(square(20, 0, 30, 10)), "category_id": 2}]
    masks = np.stack([square(0, 0, 5, 10), square(20, 20, 30, 30), square(0, 0, 10, 10), square(20, 0, 30, 10)])
    pred = Prediction(
        image_id=7, boxes=np.array([[0, 0, 10, 10], [20, 20, 30, 30], [2, 0, 12, 10], [20, 0, 30, 10]], np.float32),
        scores=np.array([0.9, 0.8, 0.7, 0.6], np.float32), category_ids=np.array([1, 1, 1, 1]), masks=masks,
        posteriors=np.zeros((4, 2), np.float32),
        box_ious=np.array([0.8, 0.1, 0.6, 0.5], np.float32), mask_ious=np.array([0.4, 0.1, 0.7, 0.3], np.float32),
    )
    pairs = iou_pairs(pred, gt)
    assert len(pairs) == 4 and (pairs.image_id == 7).all()
    # 0: the left half of instance 0's mask at its box; 1: far from both; 2: a box shifted by 2 px
    # (IoU 80/120) with instance 0's mask; 3: exactly instance 1, but of the other category
    assert pairs.true_box_iou.tolist() == pytest.approx([1.0, 0.0, 80 / 120, 0.0])
    assert pairs.true_mask_iou.tolist() == pytest.approx([0.5, 0.0, 1.0, 0.0])
    assert pairs.matched.tolist() == [True, False, True, False]
    assert pairs.pred_mask_iou.tolist() == pytest.approx([0.4, 0.1, 0.7, 0.3])
    no_truth = iou_pairs(pred, [])
    assert no_truth.true_box_iou.tolist() == [0.0] * 4 and not no_truth.matched.any()


def test_iou_head_metrics_mae_and_pearson():
    pairs = pd.DataFrame({"matched": [True, True, True, False],
                          "pred_box_iou": [0.5, 0.7, 0.9, 0.9], "true_box_iou": [0.6, 0.8, 1.0, 0.1],
                          "pred_mask_iou": [0.5, 0.5, 0.5, 0.9], "true_mask_iou": [0.4, 0.6, 0.5, 0.0]})
    m = iou_head_metrics(pairs)
    assert m["box_iou_mae"] == pytest.approx(0.1) and m["box_iou_pearson"] == pytest.approx(1.0)
    assert m["mask_iou_mae"] == pytest.approx(0.2 / 3)
    assert m["mask_iou_pearson"] is None  # constant predictions: correlation undefined
    assert m["iou_matched_detections"] == 3 and m["iou_detections"] == 4
    # over all four: the unmatched detection rated 0.9 with a true IoU of 0.1 (or 0)
    assert m["box_iou_mae_all"] == pytest.approx((0.3 + 0.8) / 4)
    assert m["box_iou_pearson_all"] == pytest.approx(np.corrcoef([0.5, 0.7, 0.9, 0.9], [0.6, 0.8, 1.0, 0.1])[0, 1])
    assert m["mask_iou_pearson_all"] < 0  # the false positive rated highest


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
