"""Masks corrected from the model's predictions (issue 23, the `correct` label kind): the simulated
annotator's accept / fix / draw / delete decisions, their price, the request round trip, params."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from salis.annotation.cost import CostModel
from salis.annotation.export import write_request_batch
from salis.annotation.kinds import label_kind
from salis.annotation.kinds.correct import correction_outcome, outcome_metrics
from salis.data.prepare import prepare_dataset
from salis.data.prepared import PreparedData, SimulatedOracle
from salis.errors import ParamsError
from salis.geometry import encode_mask, mask_ious, rle
from salis.loop.budget import CycleBudget, assign_label_types
from salis.loop.labels import read_pre_annotations, simulated_batch
from salis.params import CostParams, parse_params

H = W = 20


def box_mask(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


def inst(mask: np.ndarray, category: int = 1) -> dict:
    return {"category_id": category, "segmentation": encode_mask(mask)}


def test_each_instance_is_accepted_fixed_or_drawn_and_each_stray_prediction_deleted():
    a, b, c, d = box_mask(0, 4, 0, 4), box_mask(0, 4, 10, 14), box_mask(10, 14, 0, 4), box_mask(10, 14, 10, 14)
    truth = [inst(a), inst(b), inst(c), inst(d)]
    half = box_mask(0, 4, 10, 12)  # IoU 8/16 = 0.5 with b: fixed at fix_iou 0.5
    predictions = [
        inst(a),  # IoU 1, right class: accepted
        inst(half),  # IoU 0.5: fixed
        inst(c, category=2),  # IoU 1 but the wrong class: fixed (relabelled)
        inst(box_mask(16, 20, 16, 20)),  # on nothing: deleted
    ]  # d has no prediction: drawn
    assert correction_outcome(truth, predictions, H, W, accept_iou=0.85, fix_iou=0.5) == {
        "accepted": 1, "fixed": 2, "drawn": 1, "deleted": 1}
    # a threshold just above the half-mask's IoU turns its fix into a draw and its prediction into a deletion
    assert correction_outcome(truth, predictions, H, W, accept_iou=0.85, fix_iou=0.51) == {
        "accepted": 1, "fixed": 1, "drawn": 2, "deleted": 2}


def test_matching_is_one_to_one_best_first():
    a = box_mask(0, 10, 0, 10)
    near = box_mask(0, 10, 0, 9)  # IoU 0.9
    far = box_mask(0, 10, 0, 7)  # IoU 0.7
    out = correction_outcome([inst(a)], [inst(far), inst(near)], H, W, accept_iou=0.85, fix_iou=0.5)
    assert out == {"accepted": 1, "fixed": 0, "drawn": 0, "deleted": 1}  # the better one is kept, the other deleted
    assert correction_outcome([inst(a)], [], H, W, 0.85, 0.5) == {"accepted": 0, "fixed": 0, "drawn": 1, "deleted": 0}
    assert correction_outcome([], [inst(a)], H, W, 0.85, 0.5) == {"accepted": 0, "fixed": 0, "drawn": 0, "deleted": 1}


def test_a_corrected_image_is_priced_by_its_outcomes():
    cost = CostModel(CostParams())
    fields = {"label_type": "correct", "accepted": 3, "fixed": 2, "drawn": 1, "deleted": 4}
    # 3 x 1.6 + 2 x 14 + 1 x 79 + 4 x 1.6 + 2 categories x 1 s
    assert cost.image_seconds(6, 2, "correct", fields) == pytest.approx(4.8 + 28 + 79 + 6.4 + 2)
    assert cost.image_seconds(6, 2, "mask") == pytest.approx(6 * 79 + 2)
    # without outcomes (a human import that compared nothing) it is priced as drawn, never as free
    assert cost.image_seconds(6, 2, "correct", {"label_type": "correct"}) == cost.image_seconds(6, 2, "mask")
    assert label_kind("correct").training == "full" and label_kind("correct").suffix == ".correct"


def test_thresholds_out_of_order_or_at_zero_are_refused():
    with pytest.raises(ParamsError, match="0 < fix <= accept <= 1.*fix 0.9, accept 0.5"):
        parse_params({"annotation": {"correct_accept_iou": 0.5, "correct_fix_iou": 0.9}})
    with pytest.raises(ParamsError, match="correct_fix_iou"):
        parse_params({"annotation": {"correct_fix_iou": 0.0}})
    with pytest.raises(ParamsError, match="cost.fix_seconds must be >= 0"):
        parse_params({"cost": {"fix_seconds": -1.0}})
    assert parse_params({"annotation": {"policy": "correct"}}).annotation.policy == "correct"


@pytest.fixture
def prepared(tmp_path) -> PreparedData:
    params = parse_params({"data": {"synthetic": {"pool_images": 6, "test_images": 2, "image_size": 48,
                                                  "max_instances": 4}}})
    prepare_dataset(params.data, tmp_path / "prepared")
    return PreparedData(tmp_path / "prepared")


def _detections(oracle: SimulatedOracle, image_ids: list[int]) -> pd.DataFrame:
    """The ground truth of each image as confident detections: a model that is always right."""
    rows = []
    for image_id in image_ids:
        for det, a in enumerate(oracle.annotations(image_id)):
            r = rle(a["segmentation"])
            x, y, w, h = mask_utils.toBbox(r)
            rows.append({"image_id": image_id, "det": det, "category_id": a["category_id"], "score": 0.9,
                         "height": r["size"][0], "width": r["size"][1], "rle": r["counts"].decode("ascii"),
                         "x": x, "y": y, "w": w, "h": h})
    return pd.DataFrame(rows)


def test_the_simulated_annotator_corrects_what_the_request_offered(prepared: PreparedData, tmp_path):
    oracle = SimulatedOracle(prepared)
    ids = [i for i in prepared.pool_ids() if oracle.annotations(i)][:3]
    detections = _detections(oracle, ids[:2])  # the third image comes without pre-annotations
    write_request_batch(tmp_path / "req", prepared, ids, detections, cycle=1, label_types=["correct"] * 3)
    pre = read_pre_annotations(tmp_path / "req" / "request.correct.json")
    assert sorted(pre) == sorted(ids) and len(pre[ids[0]]) == len(oracle.annotations(ids[0])) and pre[ids[2]] == []
    # polygons traced from the masks give the masks back (synthetic instances have no holes)
    truth = [rle(a["segmentation"]) for a in oracle.annotations(ids[0])]
    assert np.allclose(np.diag(mask_ious([p["segmentation"] for p in pre[ids[0]]], truth)), 1.0)
    batch = simulated_batch(prepared, ids, ["correct"] * 3, pre_annotations=pre)
    drawn = simulated_batch(prepared, ids, ["mask"] * 3)
    assert batch.annotations == drawn.annotations  # the stored label is the ground truth either way
    n = [len(oracle.annotations(i)) for i in ids]
    assert [batch.fields[i] for i in ids] == [
        {"label_type": "correct", "accepted": n[0], "fixed": 0, "drawn": 0, "deleted": 0},
        {"label_type": "correct", "accepted": n[1], "fixed": 0, "drawn": 0, "deleted": 0},
        {"label_type": "correct", "accepted": 0, "fixed": 0, "drawn": n[2], "deleted": 0},
    ]
    store = {"images": [{"id": i, **batch.fields[i]} for i in ids]}
    metrics = outcome_metrics(store, {ids[2]})
    assert metrics["correct_accepted"] == n[0] + n[1] and metrics["correct_drawn"] == n[2]
    assert metrics["correct_batch_drawn_share"] == 1.0 and metrics["correct_batch_accepted_share"] == 0.0
    assert outcome_metrics(store, set())["correct_batch_accepted_share"] is None


def test_mixed_buys_its_mask_share_as_corrected_masks():
    policy = parse_params({"annotation": {"policy": "mixed", "mixed_masks": "correct", "cheap": "point"},
                           "select": {"budget_hours": 1.0}}).annotation
    budget = CycleBudget(images=0, hours=1.0, mean_instances=5.0, num_categories=1, cost=CostModel())
    # half an hour: 1800 / (5 x 14 + 1) = 25 corrected images planned; 1800 / (5 x 2.4 + 1) = 138 points
    kinds = [t for _, t in assign_label_types(list(range(200)), policy, budget, {})]
    assert kinds.count("correct") == 25 and kinds.count("point") == 138 and kinds[:25] == ["correct"] * 25


# --- human mode: a Label Studio export of a corrected batch ---------------------------------------


def _ls_export(tasks: list[dict], results: dict[int, list[dict]], lead_times: dict[int, object]) -> list[dict]:
    """Label Studio's JSON export of the pushed tasks: each task's submitted result and lead_time."""
    out = []
    for n, task in enumerate(tasks, start=1):
        image_id = task["data"]["salis_image_id"]
        annotation = {"id": n, "result": results[image_id], "was_cancelled": False}
        if image_id in lead_times:
            annotation["lead_time"] = lead_times[image_id]
        out.append({"id": n, "data": task["data"], "annotations": [annotation], "predictions": task.get("predictions", [])})
    return out


def _shifted(region: dict, dx_percent: float) -> dict:
    value = dict(region["value"], points=[[x + dx_percent, y] for x, y in region["value"]["points"]])
    return dict(region, id=region["id"] + "e", value=value)


@pytest.fixture
def corrected_batch(prepared: PreparedData, tmp_path):
    """A correct batch of two images whose pre-annotations are their ground truth (>= 2 instances each)."""
    import json

    oracle = SimulatedOracle(prepared)
    ids = [i for i in prepared.pool_ids() if len(oracle.annotations(i)) >= 2][:2]
    assert len(ids) == 2, "the synthetic pool needs two images with two instances"
    write_request_batch(tmp_path / "req", prepared, ids, _detections(oracle, ids), cycle=1, label_types=["correct"] * 2)
    tasks = json.loads((tmp_path / "req" / "label_studio_tasks.correct.json").read_text())
    return ids, tasks, tmp_path / "req" / "request.correct.json"


def test_a_human_correction_records_what_happened_and_how_long_it_took(corrected_batch, tmp_path):
    import json

    from salis.annotation.importer import import_labels

    (a, b), tasks, request = corrected_batch
    regions = {t["data"]["salis_image_id"]: t["predictions"][0]["result"] for t in tasks}
    # image a: first region accepted as it was, second edited (moved by a quarter of the image: IoU < 0.5, so
    # it counts as drawn, and the untouched pre-annotation it replaced as deleted); the rest deleted
    # image b: every region accepted, and one moved a little (edited: fixed)
    small = 100.0 / 48  # one pixel of the 48 px image, in percent
    results = {a: [regions[a][0], _shifted(regions[a][1], 25.0)],
               b: [regions[b][0], _shifted(regions[b][1], small)] + regions[b][2:]}
    export = tmp_path / "export.json"
    export.write_text(json.dumps(_ls_export(tasks, results, {a: 42.5, b: 30})))
    done = import_labels(export, request, tmp_path / "labels.json")
    images = {im["id"]: im for im in json.loads((tmp_path / "labels.json").read_text())["images"]}
    n_a, n_b = len(regions[a]), len(regions[b])
    assert {k: images[a][k] for k in ("accepted", "fixed", "drawn", "deleted", "annotation_seconds")} == {
        "accepted": 1, "fixed": 0, "drawn": 1, "deleted": n_a - 1, "annotation_seconds": 42.5}
    assert {k: images[b][k] for k in ("accepted", "fixed", "drawn", "deleted", "annotation_seconds")} == {
        "accepted": n_b - 1, "fixed": 1, "drawn": 0, "deleted": 0, "annotation_seconds": 30.0}
    assert done["annotation_seconds"] == 72.5 and done["outcomes"]["accepted"] == n_b
    # the next cycle prices each image by what happened on it
    from salis.loop.labels import human_batch

    batch = human_batch({"correct": tmp_path / "labels.json"}, [a, b], ["correct", "correct"], {1, 2, 3})
    cost = CostModel()
    assert cost.image_seconds(2, 3, "correct", batch.fields[a]) == pytest.approx(1.6 + 79 + (n_a - 1) * 1.6 + 3)
    assert batch.fields[b]["annotation_seconds"] == 30.0
    # cost.source measured: each timed image is priced by the annotator's own time
    measured = CostModel(CostParams(source="measured"))
    assert [measured.image_seconds(2, 3, "correct", batch.fields[i]) for i in (a, b)] == [42.5, 30.0]


@pytest.mark.parametrize("lead_times, message", [
    ({"a": -3, "b": 30}, "lead_time -3 s is not positive"),
    ({"a": 90000, "b": 30}, "lead_time 90000 s is more than a day"),
    ({"a": "soon", "b": 30}, "lead_time must be a number of seconds"),
    ({"b": 30}, "lead_time missing on 1 of the 2 labeled images"),
    ({"a": None, "b": 30}, "lead_time missing on 1 of the 2 labeled images"),
])
def test_a_bad_annotation_time_is_refused_and_writes_nothing(corrected_batch, tmp_path, lead_times, message):
    import json

    from salis.annotation.importer import import_labels
    from salis.errors import InputError

    (a, b), tasks, request = corrected_batch
    results = {t["data"]["salis_image_id"]: t["predictions"][0]["result"] for t in tasks}
    times = {{"a": a, "b": b}[k]: v for k, v in lead_times.items()}
    export = tmp_path / "bad.json"
    export.write_text(json.dumps(_ls_export(tasks, results, times)))
    with pytest.raises(InputError, match=message):
        import_labels(export, request, tmp_path / "labels.json")
    assert not (tmp_path / "labels.json").exists()


def test_an_export_timing_nothing_is_imported_without_times(corrected_batch, tmp_path):
    """Label Studio writes lead_time null for annotations posted through its API: no time, no refusal."""
    import json

    from salis.annotation.importer import import_labels

    (a, b), tasks, request = corrected_batch
    results = {t["data"]["salis_image_id"]: t["predictions"][0]["result"] for t in tasks}
    export = tmp_path / "untimed.json"
    export.write_text(json.dumps(_ls_export(tasks, results, {a: None, b: None})))
    assert import_labels(export, request, tmp_path / "labels.json")["annotation_seconds"] is None
    assert not any("annotation_seconds" in im for im in json.loads((tmp_path / "labels.json").read_text())["images"])
