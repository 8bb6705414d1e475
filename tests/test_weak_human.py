"""Human annotators with weak label types: the loop stops for a batch's point, box or image
labels with the import command, and an export of that type (COCO or Label Studio JSON) lets it
go on; exports of another type, or with bad items, are refused with nothing written."""

from __future__ import annotations

import json

import pytest

from salis.annotation.importer import import_labels
from salis.annotation.kinds import label_kind
from salis.artifacts.layout import Layout
from salis.artifacts.tables import SELECTED, read_table
from salis.data.prepared import PreparedData, SimulatedOracle
from salis.errors import InputError, SalisError
from salis.params import parse_params
from support import coco_export, run_stage, tiny


@pytest.fixture(scope="module", params=["point", "box", "image"])
def waiting(request, tmp_path_factory):
    """A human-mode project whose cycle-1 batch asks for one weak label type and waits for it."""
    label_type = request.param
    root = tmp_path_factory.mktemp(label_type)
    raw = tiny(oracle="human", annotation={"policy": label_type})
    params = parse_params(raw)
    layout = Layout(root)
    run_stage("prepare", params, layout)
    run_stage("init", params, layout)
    run_stage("init_model", params, layout)
    prepared = PreparedData(layout.prepared)
    oracle = SimulatedOracle(prepared)
    request0 = json.loads((layout.requests(0) / "request.json").read_text())
    (root / "export0.json").write_text(json.dumps(coco_export(request0, oracle, "mask")))
    import_labels(root / "export0.json", layout.requests(0) / "request.json", layout.imported_labels(0))
    for stage in ("annotate", "pseudo_label", "weak_label", "train", "infer_score", "select", "evaluate", "request"):
        run_stage(stage, params, layout, 1)
    return label_type, params, layout, oracle


def test_the_loop_stops_for_the_weak_labels_with_the_import_command(waiting):
    label_type, params, layout, _ = waiting
    selected = read_table(layout.selected(1), SELECTED)
    assert set(selected["label_type"]) == {label_type}
    assert (layout.requests(1) / f"request.{label_type}.json").is_file()
    with pytest.raises(SalisError, match=f"waiting for the {label_type} labels of request batch 1.*"
                                         f"salis labels import --cycle 1 --type {label_type}"):
        run_stage("annotate", params, layout, 2)


def test_a_wrong_type_or_bad_item_is_refused_and_a_right_export_goes_on(waiting, tmp_path):
    label_type, params, layout, oracle = waiting
    request_path = layout.requests(1) / f"request.{label_type}.json"
    request = json.loads(request_path.read_text())
    labels = layout.imported_labels(1, suffix=label_kind(label_type).suffix)
    masks = tmp_path / "masks.json"
    masks.write_text(json.dumps(coco_export(request, oracle, "mask")))
    with pytest.raises(InputError, match=f"masks.json: annotations\\[0\\].*holds masks.*asked for"):
        import_labels(masks, request_path, labels)
    bad = coco_export(request, oracle, label_type)
    if label_type == "point":
        bad["annotations"][0]["keypoints"] = [-5.0, 3.0, 2]
        message = "lies outside"
    elif label_type == "box":
        bad["annotations"][0]["bbox"] = [3.0, 3.0, 0.0, 4.0]
        message = "non-positive width or height"
        edge = coco_export(request, oracle, label_type)
        width = request["images"][0]["width"]
        edge["annotations"][0]["bbox"] = [width + 0.5, 10.0, 0.4, 5.0]  # within the slack, but nothing inside
        (tmp_path / "edge.json").write_text(json.dumps(edge))
        with pytest.raises(InputError, match="lies outside"):
            import_labels(tmp_path / "edge.json", request_path, labels)
    else:
        bad["images"][0]["counts"] = {request["categories"][0]["name"]: 1.5}
        message = "not a non-negative whole number"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match=message):
        import_labels(tmp_path / "bad.json", request_path, labels)
    assert not labels.exists()  # nothing written
    good = tmp_path / "good.json"
    good.write_text(json.dumps(coco_export(request, oracle, label_type)))
    summary = import_labels(good, request_path, labels)
    assert summary["label_type"] == label_type and summary["images_labeled"] == len(request["images"])
    merged = run_stage("annotate", params, layout, 2)
    new = merged[merged["cycle"] == 2]
    assert set(new["label_type"]) == {label_type} and len(new) == len(request["images"])
    truth = sum(len(oracle.annotations(i)) for i in new["image_id"])
    store = json.loads(layout.annotations(2).read_text())
    stored = [im for im in store["images"] if im["id"] in set(new["image_id"])]
    assert all(im["label_type"] == label_type for im in stored)
    if label_type == "image":
        assert sum(c["count"] for im in stored for c in im["counts"]) == truth
    else:
        assert sum(a["image_id"] in set(new["image_id"]) for a in store["annotations"]) == truth
    # the cost follows the label type: e.g. points at 2.4 s per instance plus 1 s per category
    per_instance = {"point": 2.4, "box": 7.0, "image": 0.8}[label_type]
    expected = per_instance * truth + (1.0 if label_type != "image" else 1.0) * 3 * len(new)
    assert new["seconds"].sum() == pytest.approx(expected)
    run_stage("pseudo_label", params, layout, 2)
    run_stage("weak_label", params, layout, 2)
    run_stage("train", params, layout, 2)
