"""coco_metrics and detections_from_prediction on hand-built 32x32 masks."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from salis.analysis.evaluation import coco_metrics, detections_from_prediction
from salis.geometry import encode_mask

SIZE = 32
# (image_id, row0, col0, side): three solid squares; image 1 holds two, image 2 one.
SQUARES = [(1, 2, 2, 8), (1, 16, 16, 10), (2, 4, 4, 10)]
METRIC_KEYS = [
    f"{p}_{s}" for p in ("mask", "box") for s in ("AP", "AP50", "AP75", "AR")
]


def square_mask(row0: int, col0: int, height: int, width: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), dtype=np.uint8)
    m[row0 : row0 + height, col0 : col0 + width] = 1
    return m


def make_gt(
    squares: list[tuple[int, int, int, int]] = SQUARES, images: tuple[int, ...] = (1, 2)
) -> dict:
    annotations = [
        {
            "id": i,  # starts at 0 on purpose: coco_metrics must not mistake it for "unmatched"
            "image_id": image_id,
            "category_id": 1,
            "segmentation": encode_mask(square_mask(r, c, side, side)),
            "bbox": [float(c), float(r), float(side), float(side)],
            "area": float(side * side),
            "iscrowd": 0,
        }
        for i, (image_id, r, c, side) in enumerate(squares)
    ]
    return {
        "images": [
            {"id": i, "height": SIZE, "width": SIZE, "file_name": f"{i}.png"} for i in images
        ],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": annotations,
    }


def perfect_detection(image_id: int, r: int, c: int, side: int, score: float = 0.9) -> dict:
    [det] = detections_from_prediction(
        image_id,
        np.array([[c, r, c + side, r + side]]),
        np.array([score]),
        np.array([1]),
        square_mask(r, c, side, side)[None],
    )
    return det


def test_detections_identical_to_gt_score_one() -> None:
    dets = [perfect_detection(*sq) for sq in SQUARES]
    metrics = coco_metrics(make_gt(), dets)
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["num_detections"] == 3
    assert metrics["num_test_images"] == 2
    assert metrics["num_test_instances"] == 3


def test_no_detections_give_zero_without_error() -> None:
    metrics = coco_metrics(make_gt(), [])
    for key in METRIC_KEYS:
        assert metrics[key] == 0.0, key
    assert metrics["num_detections"] == 0
    assert metrics["num_test_instances"] == 3


def test_two_of_three_found_is_recall_limited() -> None:
    # Two perfect detections, no false positives: precision is 1 up to recall 2/3 and
    # there is nothing beyond. 101-point interpolation samples recall 0, 0.01, ..., 1.00
    # and scores precision 1 at the 67 points 0.00..0.66 (all <= 2/3) and 0 at the 34
    # points 0.67..1.00, so AP = 67/101 = 0.66337 at every IoU threshold.
    dets = [perfect_detection(*SQUARES[0]), perfect_detection(*SQUARES[2])]
    metrics = coco_metrics(make_gt(), dets)
    for prefix in ("mask", "box"):
        for suffix in ("AP", "AP50", "AP75"):
            assert metrics[f"{prefix}_{suffix}"] == pytest.approx(67 / 101, abs=1e-3)
        # AR is plain recall (2 of 3 found) averaged over IoU thresholds.
        assert metrics[f"{prefix}_AR"] == pytest.approx(2 / 3, abs=1e-3)


def test_iou_point_six_counts_at_ap50_not_ap75() -> None:
    # GT: a 10x10 square (100 px). Detection: its left 6 columns (60 px), wholly inside,
    # so IoU = 60 / 100 = 0.6 exactly, for the masks and for the boxes alike.
    gt = make_gt(squares=[(1, 10, 10, 10)], images=(1,))
    mask = square_mask(10, 10, 10, 6)
    box = np.array([[10, 10, 16, 20]])  # x1, y1, x2, y2 of the 6-wide, 10-high strip
    dets = detections_from_prediction(1, box, np.array([0.8]), np.array([1]), mask[None])
    metrics = coco_metrics(gt, dets)
    for prefix in ("mask", "box"):
        assert metrics[f"{prefix}_AP50"] == pytest.approx(1.0)
        assert metrics[f"{prefix}_AP75"] == 0.0
        # COCOeval matches when IoU >= threshold: of 0.50, 0.55, ..., 0.95 only 0.50,
        # 0.55 and 0.60 match, each with AP 1, so the mean over the 10 is 0.3.
        assert metrics[f"{prefix}_AP"] == pytest.approx(0.3, abs=1e-3)
        assert metrics[f"{prefix}_AR"] == pytest.approx(0.3, abs=1e-3)


def test_unknown_image_id_raises_value_error_naming_it() -> None:
    dets = [perfect_detection(*SQUARES[0]), perfect_detection(99, 2, 2, 8)]
    with pytest.raises(ValueError, match="99"):
        coco_metrics(make_gt(), dets)


def test_unknown_category_id_raises_value_error() -> None:
    det = perfect_detection(*SQUARES[0])
    det["category_id"] = 7
    with pytest.raises(ValueError, match="7"):
        coco_metrics(make_gt(), [det])


def test_empty_ground_truth_reports_zero_not_minus_one() -> None:
    # No GT instance anywhere: pycocotools reports -1 ("nothing to average").
    gt = make_gt(squares=[], images=(1,))
    metrics = coco_metrics(gt, [perfect_detection(1, 2, 2, 8)])
    for key in METRIC_KEYS:
        assert metrics[key] == 0.0, key
    assert metrics["num_test_instances"] == 0


def test_inputs_are_not_mutated() -> None:
    # loadRes adds id/area/iscrowd to result dicts and the GT ids are renumbered: on copies only.
    gt, dets = make_gt(), [perfect_detection(*sq) for sq in SQUARES]
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    coco_metrics(gt, dets)
    assert gt == gt_before
    assert dets == dets_before


def test_pycocotools_output_is_silenced(capsys: pytest.CaptureFixture[str]) -> None:
    coco_metrics(make_gt(), [perfect_detection(*SQUARES[0])])
    assert capsys.readouterr().out == ""


# pycocotools' decode trips numpy 2's __array__ copy-keyword deprecation; not ours to fix.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_detections_from_prediction_round_trips_masks_and_boxes() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((2, 7, 5)) > 0.5  # non-square, so a transposed encode would show
    boxes = np.array([[1.0, 2.0, 4.5, 6.0], [0.0, 0.0, 5.0, 7.0]], dtype=np.float32)
    dets = detections_from_prediction(3, boxes, np.array([0.75, 0.5]), np.array([2, 5]), masks)

    assert [d["bbox"] for d in dets] == [[1.0, 2.0, 3.5, 4.0], [0.0, 0.0, 5.0, 7.0]]
    assert [d["category_id"] for d in dets] == [2, 5]
    assert [d["score"] for d in dets] == [0.75, 0.5]
    assert all(d["image_id"] == 3 for d in dets)
    for det, mask in zip(dets, masks):
        assert isinstance(det["segmentation"]["counts"], str)
        assert det["segmentation"]["size"] == [7, 5]
        rle = {**det["segmentation"], "counts": det["segmentation"]["counts"].encode()}
        decoded = mask_util.decode([rle])[:, :, 0]
        np.testing.assert_array_equal(decoded, mask.astype(np.uint8))
    json.dumps(dets)  # plain Python types only


def test_detections_from_prediction_empty_and_bad_shapes() -> None:
    labels0, masks0 = np.zeros(0, dtype=int), np.zeros((0, SIZE, SIZE), dtype=np.uint8)
    assert detections_from_prediction(1, np.zeros((0, 4)), np.zeros(0), labels0, masks0) == []

    labels1, masks1 = np.ones(1, dtype=int), np.zeros((1, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="must match"):
        detections_from_prediction(1, np.zeros((2, 4)), np.zeros(1), labels1, masks1)
    with pytest.raises(ValueError, match="binary"):
        soft = masks1.astype(np.float32)  # probabilities must be thresholded by the caller
        detections_from_prediction(1, np.zeros((1, 4)), np.zeros(1), labels1, soft)


def crowded_gt(rows: int = 11, side: int = 3, stride: int = 5) -> tuple[dict, list[dict]]:
    """One 64x64 image with rows x rows separate squares (121 > COCOeval's default 100), and
    the ground truth itself as detections (score 1.0)."""
    size = 64
    annotations, detections = [], []
    for k in range(rows * rows):
        r, c = (k // rows) * stride, (k % rows) * stride
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[r : r + side, c : c + side] = 1
        annotations.append({"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": encode_mask(mask),
                            "bbox": [float(c), float(r), float(side), float(side)], "area": float(side * side),
                            "iscrowd": 0})
        detections += detections_from_prediction(1, np.array([[c, r, c + side, r + side]]), np.array([1.0]),
                                                  np.array([1]), mask[None])
    gt = {"images": [{"id": 1, "height": size, "width": size, "file_name": "1.png"}],
          "categories": [{"id": 1, "name": "thing"}], "annotations": annotations}
    return gt, detections


def test_perfect_predictions_on_an_image_over_100_instances_score_one() -> None:
    gt, detections = crowded_gt()
    assert len(detections) == 121
    metrics = coco_metrics(gt, detections, detections_per_image=300)
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["eval_max_detections"] == 300
    assert metrics["test_instances_over_cap"] == 0


def test_the_cap_follows_the_largest_ground_truth_count_and_reports_what_the_model_cannot_find() -> None:
    gt, detections = crowded_gt()
    # a model capped at 100 detections per image outputs at most 100 of the 121 instances;
    # evaluation still counts up to 121, so finding all of them would score 1.0
    metrics = coco_metrics(gt, detections, detections_per_image=100)
    assert metrics["eval_max_detections"] == 121
    assert metrics["test_instances_over_cap"] == 121
    assert metrics["mask_AP"] == pytest.approx(1.0)
    found = coco_metrics(gt, detections[:100], detections_per_image=100)
    assert found["mask_AR"] == pytest.approx(100 / 121, abs=1e-3)
