"""The pseudo-label gate (salis.loop.gate) and the pseudo_label stage that applies it."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from salis.artifacts.layout import Layout
from salis.artifacts.tables import INSTANCES, LABELED, PSEUDO, SELECTED, read_table, write_table
from salis.errors import ParamsError
from salis.loop.gate import Gate, GateReport, calibrate, correct_detections, design_effect, search, wilson_lower
from salis.params import parse_params

Z2 = 1.6448536269514722 ** 2
CALIBRATED = parse_params({"pseudo": {"gate": "calibrated"}})


def test_wilson_lower_bound_hand_values():
    # 9 of 10: (p + z²/2n - z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), by hand
    p, n = 0.9, 10
    expected = (p + Z2 / (2 * n) - math.sqrt(Z2) * math.sqrt(p * (1 - p) / n + Z2 / (4 * n * n))) / (1 + Z2 / n)
    assert expected == pytest.approx(0.6523, abs=1e-4)
    assert wilson_lower(np.array([9]), np.array([10]))[0] == pytest.approx(expected)
    assert wilson_lower(np.array([30]), np.array([30]))[0] == pytest.approx(30 / (30 + Z2))  # all right
    assert wilson_lower(np.array([0]), np.array([0]))[0] == 0.0


def _detections():
    """30 right (c .95, b .8, m .8), 10 wrong that only b tells apart (b .3), and 20 at c .5
    of which half are right: the most that pass at precision >= 0.8 are the 30."""
    c = np.r_[np.full(30, 0.95), np.full(10, 0.95), np.full(20, 0.5)]
    b = np.r_[np.full(30, 0.8), np.full(10, 0.3), np.full(20, 0.9)]
    m = np.r_[np.full(30, 0.8), np.full(10, 0.8), np.full(20, 0.9)]
    correct = np.r_[np.ones(30, bool), np.zeros(10, bool), np.arange(20) % 2 == 0]
    return c, b, m, correct


def test_calibration_finds_the_largest_region_of_the_target_precision():
    c, b, m, correct = _detections()
    gate, passing, precision, lower = calibrate(c, b, m, correct, 0.8, score_floor=0.3)
    # 30 pass with c > t for t in [0.5, 0.95), b > t in [0.3, 0.8), m > t in [0, 0.8): the
    # highest of those on the 0.05 grid
    assert gate == Gate(0.9, 0.75, 0.75)
    assert (passing, precision) == (30, 1.0) and lower == pytest.approx(30 / (30 + Z2))
    assert gate.passes(c, b, m).sum() == 30
    # adding the 20 at c 0.5 gives 40 of 50 right: 0.8, but its lower bound is below 0.8
    assert wilson_lower(np.array([40]), np.array([50]))[0] < 0.8


def test_design_effect_hand_values():
    # two images of 10 detections, one all right and one all wrong: p .5, n 20; clustered variance
    # 2/1 * ((10 - 5)^2 + (0 - 5)^2) / 20^2 = 0.25 against binomial .25/20: 20
    images = np.repeat([7, 9], 10)
    assert design_effect(images, np.repeat([True, False], 10)) == pytest.approx(20.0)
    # each image half right: no spread between images, no widening
    assert design_effect(images, np.tile([True, False], 10)) == 1.0
    # 3 images (2, 2, 4 detections) with 2, 0, 2 right: p .5, n 8; 3/2 * (1 + 1 + 0) / 64 over 1/32
    assert design_effect(np.r_[1, 1, 2, 2, 3, 3, 3, 3], np.array([1, 1, 0, 0, 1, 0, 1, 0], bool)) \
        == pytest.approx(1.5)
    assert design_effect(np.zeros(5), np.array([1, 0, 1, 1, 0], bool)) == 5.0  # one image: one draw
    assert design_effect(images, np.ones(20, bool)) == 1.0  # no variance to compare
    assert design_effect(np.array([]), np.array([], bool)) == 1.0


def test_by_image_each_region_counts_as_its_design_effect_makes_it():
    # 30 detections alike (c .95, b .8, m .8) on 3 images: 10 right, 7 of 10, 10 right: p .9;
    # clustered variance 3/2 * (1 + 4 + 1) / 30^2 = 0.01 against binomial .09 / 30: design 10/3,
    # so the 27 of 30 count as 8.1 of 9
    c, b, m = np.full(30, 0.95), np.full(30, 0.8), np.full(30, 0.8)
    correct = np.ones(30, bool)
    correct[[10, 11, 12]] = False
    images = np.repeat([4, 5, 6], 10)
    assert design_effect(images, correct) == pytest.approx(10 / 3)
    gate, passing, precision, lower, _, design = search(c, b, m, correct, 0.5, 0.3, images)
    assert (passing, precision, design) == (30, 0.9, pytest.approx(10 / 3))
    assert lower == pytest.approx(wilson_lower(np.array([8.1]), np.array([9.0]))[0])
    assert lower < search(c, b, m, correct, 0.5, 0.3)[3] == pytest.approx(wilson_lower(np.array([27]), np.array([30]))[0])
    # the detections' bound (0.77) passes 0.75, the images' (0.64) does not
    assert calibrate(c, b, m, correct, 0.75, 0.3)[0] is not None
    assert calibrate(c, b, m, correct, 0.75, 0.3, images) == (None, 0, None, None)


def test_calibration_closes_the_gate_when_no_region_is_precise_enough():
    c, b, m, correct = _detections()
    assert calibrate(c, b, m, np.zeros_like(correct), 0.5, 0.3) == (None, 0, None, None)
    assert calibrate(c, b, m, correct, 1.0, 0.3)[0] is None  # a lower bound never reaches 1
    # how close it came: the 30 right ones are the most precise region (lower bound 30 / (30 + z²))
    nearest = search(c, b, m, correct, 1.0, 0.3)[4]
    assert nearest[1:3] == (30, 1.0) and nearest[3] == pytest.approx(30 / (30 + Z2))


def test_calibration_without_iou_heads_gates_the_class_score_only():
    c, _, _, correct = _detections()
    nan = np.full(len(c), np.nan)
    gate, passing, _, _ = calibrate(c, nan, nan, correct, 0.6, 0.3)
    # c > 0.5 passes 40 (30 right: 0.75, lower bound ~0.63); c > 0.3 passes 60 (40 right)
    assert gate == Gate(0.9, 0.0, 0.0) and passing == 40


def _rle(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def _square(x0, y0, x1, y1, size=16) -> np.ndarray:
    out = np.zeros((size, size), bool)
    out[y0:y1, x0:x1] = True
    return out


def test_a_detection_is_correct_at_mask_iou_half_with_its_class():
    truth = {7: [{"category_id": 1, "segmentation": {"size": [16, 16], "counts": _rle(_square(0, 0, 8, 8))}}]}
    rows = pd.DataFrame({
        "image_id": [7, 7, 7, 7], "category_id": [1, 2, 1, 1], "height": 16, "width": 16,
        "rle": [_rle(_square(0, 0, 8, 8)), _rle(_square(0, 0, 8, 8)),  # exact; exact but class 2
                _rle(_square(0, 0, 8, 4)), _rle(_square(0, 0, 8, 3))],  # IoU 0.5; IoU 0.375
    })
    assert correct_detections(rows, truth.__getitem__).tolist() == [True, False, True, False]


def _instances(image_ids: list[int], rle: str, score=0.98, box_iou=0.95, mask_iou=0.9) -> pd.DataFrame:
    n = len(image_ids)
    rows = {name: [0.0] * n for name in INSTANCES.schema.names}
    rows.update(image_id=image_ids, det=list(range(n)), category_id=[1] * n, score=[score] * n,
                box_iou=[box_iou] * n, mask_iou=[mask_iou] * n, area=[1] * n, height=[16] * n, width=[16] * n,
                rle=[rle] * n)
    return INSTANCES.to_arrow(pd.DataFrame(rows)).to_pandas()


def _project(tmp_path, calibration_mask: np.ndarray) -> Layout:
    """Cycle 2: images 1, 2 labeled at cycle 1, image 3 selected by model 1 and now labeled with
    a square mask; model 1 made 30 detections on image 3 (with calibration_mask) and a few on 4, 5."""
    layout = Layout(tmp_path)
    labeled = pd.DataFrame({"image_id": [1, 2, 3], "cycle": [0, 0, 1], "source": "simulated_oracle",
                            "sampler": ["initial_random", "initial_random", "random"], "rank": [0, 1, 0],
                            "label_type": "mask", "forecast_seconds": [float("nan"), float("nan"), 1.0],
                            "seconds": 1.0})
    write_table(layout.labeled(2), labeled, LABELED)
    write_table(layout.selected(1), pd.DataFrame({"image_id": [3], "cycle": 1, "sampler": "random", "rank": [0],
                                                  "label_type": "mask", "forecast_seconds": [1.0]}), SELECTED)
    square = _rle(_square(2, 2, 10, 10))
    store = {"images": [{"id": i, "label_type": "mask"} for i in (1, 2, 3)], "categories": [{"id": 1, "name": "a"}],
             "annotations": [{"id": 1, "image_id": 3, "category_id": 1,
                              "segmentation": {"size": [16, 16], "counts": square}}]}
    layout.annotations(2).parent.mkdir(parents=True, exist_ok=True)
    layout.annotations(2).write_text(json.dumps(store))
    scored = pd.concat([_instances([3] * 30, _rle(calibration_mask)), _instances([1, 2, 4, 5, 5], square)])
    write_table(layout.instances(1), scored, INSTANCES)
    return layout


def test_the_stage_gates_with_the_new_batch_and_never_labels_labeled_images(tmp_path):
    from salis.pipeline.pseudo_label import stage_pseudo_label

    layout = _project(tmp_path, _square(2, 2, 10, 10))  # model 1 got image 3 right 30 times
    stage_pseudo_label(CALIBRATED, layout, 2)
    pseudo = read_table(layout.pseudo(2), PSEUDO)
    assert pseudo["image_id"].tolist() == [4, 5, 5]  # 1, 2, 3 labeled
    report = GateReport.from_json(json.loads(layout.pseudo_gate(2).read_text()))
    # c .98, b .95, m .9 everywhere: the highest grid thresholds below them
    assert report.gate == Gate(0.95, 0.9, 0.85) and report.calibration_passing == 30
    assert report.calibration_images == 1 and report.metrics()["pseudo_gate_open"] == 1


def test_the_gate_stays_closed_when_the_model_was_wrong_on_its_batch(tmp_path):
    from salis.pipeline.pseudo_label import stage_pseudo_label

    layout = _project(tmp_path, _square(11, 11, 16, 16))  # every calibration mask misses
    stage_pseudo_label(CALIBRATED, layout, 2)
    assert read_table(layout.pseudo(2), PSEUDO).empty
    report = json.loads(layout.pseudo_gate(2).read_text())
    assert report["gate"] is None and report["reason"].startswith("closed: no (c, b, m) region")
    assert "0% of them correct); the most precise region" in report["reason"]
    # the fixed gate ignores the batch: TSP's thresholds pass c .98, b .95, m .9
    stage_pseudo_label(parse_params({"pseudo": {"gate": "fixed"}}), layout, 2)
    assert read_table(layout.pseudo(2), PSEUDO)["image_id"].tolist() == [4, 5, 5]


def test_by_image_one_calibration_image_is_one_draw_and_closes_the_gate(tmp_path):
    from salis.pipeline.pseudo_label import stage_pseudo_label

    layout = _project(tmp_path, _square(2, 2, 10, 10))  # 30 right detections, all on image 3
    stage_pseudo_label(parse_params({"pseudo": {"gate": "calibrated", "calibration_unit": "image"}}), layout, 2)
    assert read_table(layout.pseudo(2), PSEUDO).empty
    report = GateReport.from_json(json.loads(layout.pseudo_gate(2).read_text()))
    assert report.gate is None and report.calibration_design_effect == 30.0
    assert "bound widened by the region's design effect 30.00 over images" in report.reason
    assert report.metrics()["pseudo_gate_calibration_design_effect"] == 30.0


def test_a_params_file_without_the_gate_keeps_the_fixed_thresholds():
    # what it always did; the repo's params.yaml chooses calibrated
    assert parse_params({}).pseudo.gate == "fixed"


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, float("nan")])
def test_a_target_precision_outside_0_1_is_refused(value):
    with pytest.raises(ParamsError, match="pseudo.target_precision"):
        parse_params({"pseudo": {"target_precision": value}})


def test_cycle_one_has_no_pseudo_labels_and_says_why(tmp_path):
    from salis.pipeline.pseudo_label import stage_pseudo_label

    layout = _project(tmp_path, _square(2, 2, 10, 10))
    # cycle 1 as init leaves it: instances@0 empty, batch 0 labeled into labeled@1
    write_table(layout.instances(0), INSTANCES.empty(), INSTANCES)
    write_table(layout.selected(0), read_table(layout.selected(1), SELECTED), SELECTED)
    write_table(layout.labeled(1), read_table(layout.labeled(2), LABELED), LABELED)
    layout.annotations(1).write_text(layout.annotations(2).read_text())
    stage_pseudo_label(CALIBRATED, layout, 1)
    assert read_table(layout.pseudo(1), PSEUDO).empty
    assert json.loads(layout.pseudo_gate(1).read_text())["reason"] == "closed: cycle 1, no model has scored the pool yet"
