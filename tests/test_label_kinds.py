"""The label-kind registry (issue 21): every registered kind implements every part, and a new kind
is one class plus its params entry: a throwaway `circle` kind defined here goes through the
simulated annotator, the cost model, the request batch, the import and params validation without
any other file changing."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import salis.params
from salis.annotation.cost import CostModel
from salis.annotation.export import label_config, write_request_batch
from salis.annotation.importer import import_labels
from salis.annotation.kinds import DEFAULT_KIND, AnnotatorView, LabelKind, Parser, label_kind, label_kinds, registered
from salis.annotation.kinds.base import finite_number, percent, region_labels
from salis.data.prepare import prepare_dataset
from salis.data.prepared import PreparedData, SimulatedOracle
from salis.errors import InputError, ParamsError
from salis.geometry import encode_mask
from salis.loop.labels import simulated_batch
from salis.loop.weak import WEAK_ROUTES
from salis.params import AnnotationParams, CostParams, parse_params

CATEGORIES = [{"id": 1, "name": "cell"}, {"id": 2, "name": "debris"}]


def _truth() -> list[dict]:
    mask = np.zeros((12, 12), dtype=np.uint8)
    mask[2:6, 3:9] = 1
    return [{"category_id": 1, "segmentation": encode_mask(mask), "bbox": [3.0, 2.0, 6.0, 4.0], "area": 24.0}]


PREDICTION = {"category_id": 1, "score": 0.9, "polygons": [[3.0, 2.0, 9.0, 2.0, 9.0, 6.0, 3.0, 6.0]],
              "outline": [3.0, 2.0, 9.0, 2.0, 9.0, 6.0, 3.0, 6.0], "point": [5.5, 3.5],
              "bbox": [3.0, 2.0, 6.0, 4.0], "area": 24.0}


def test_the_registry_holds_exactly_the_kinds_params_names_in_its_order():
    assert [k.name for k in label_kinds()] == list(salis.params.LABEL_TYPES)
    assert set(salis.params.CHEAP_LABEL_TYPES) < set(salis.params.LABEL_TYPES)
    assert label_kind(DEFAULT_KIND).suffix == "" and label_kind(DEFAULT_KIND).type_flag == ""
    assert len({k.suffix for k in label_kinds()}) == len(label_kinds())
    with pytest.raises(ValueError, match="unknown label type 'scribble'; label types are mask, box, point, image"):
        label_kind("scribble")


@pytest.mark.parametrize("kind", label_kinds(), ids=lambda k: k.name)
def test_every_kind_implements_every_part(kind: LabelKind):
    # name, texts and training route
    assert kind.name and kind.geometry and kind.task
    assert kind.suffix == ("" if kind.name == DEFAULT_KIND else f".{kind.name}")
    assert kind.training in ("full", "boxes", "weak")
    if kind.training == "weak":
        assert kind.name in WEAK_ROUTES, f"weak kind {kind.name} has no route in salis.loop.weak.WEAK_ROUTES"
    assert (kind.training == "weak") == (kind.name in salis.params.WEAK_LABEL_TYPES), "params.WEAK_LABEL_TYPES disagrees"
    # cost terms: finite, non-negative, from the params
    cost = CostParams()
    assert math.isfinite(kind.seconds_per_instance(cost)) and kind.seconds_per_instance(cost) > 0
    assert kind.seconds_per_category(cost) >= 0
    # the forecast of an unlabeled image (value per hour): positive, growing with its instances
    forecast = [kind.predicted_image_seconds(cost, n, 1, np.array([0.9, 0.3]), AnnotationParams()) for n in (2.0, 5.0)]
    assert 0 < forecast[0] < forecast[1] and all(math.isfinite(f) for f in forecast)
    # the simulated annotator: annotations (none for image-level kinds) and image fields
    view = AnnotatorView(_truth(), 12, 12, [1, 2], "center", np.random.default_rng(0))
    derived = kind.derive(view)
    fields = kind.image_fields(view)
    assert (derived == []) == kind.image_level and isinstance(fields, dict)
    # what an import derives from a human's labels: exactly the declared outcome counts
    assert set(kind.human_fields([], {"height": 12, "width": 12}, [])) == set(kind.outcome_fields)
    # request files: a valid Label Studio config, regions or choices, COCO fields
    config = ET.fromstring(label_config(CATEGORIES, kind.name))
    assert config.tag == "View" and len(config) >= 2
    results = kind.label_studio_results([PREDICTION], {"width": 12, "height": 12}, {1: "cell", 2: "debris"}, CATEGORIES)
    assert results and all(r["to_name"] == "image" for r in results)
    if not kind.image_level:
        assert isinstance(kind.request_annotation(PREDICTION), dict)
        assert kind.region_type and all(r["type"] == kind.region_type for r in results)
        assert isinstance(kind.parser({7: {"width": 12, "height": 12, "file_name": "a.png"}}, Path("x.json")), Parser)
        assert kind.recognises({"image_id": 1, "category_id": 1, **derived[0]}) or kind.name == DEFAULT_KIND
    else:
        parsed = kind.parse_image({"id": 1, "counts": {"cell": 2}}, "images[0]", Path("x.json"), {"cell": 1}, set())
        assert parsed is not None


# --- a throwaway kind: one class, and its params entry -----------------------------------------


class CircleParser(Parser):
    def add(self, where: str, pool_id: int, category_id: int, entry: dict) -> None:
        x, y, r = (finite_number(v, f"{where} circle", self.path) for v in entry["circle"])
        if r <= 0:
            raise InputError(self.path, f"{where} circle radius must be positive, got {r:g}")
        self.keep(where, pool_id, {"category_id": category_id, "circle": [x, y, r]})


class CircleKind(LabelKind):
    """A circle around each instance: centre and radius (an ellipse tool's simplest case)."""

    name = "circle"
    geometry = "circles (circle)"
    task = "a circle around each object"
    training = "boxes"
    region_type = "ellipselabels"

    def seconds_per_instance(self, cost: CostParams) -> float:
        return cost.box_seconds / 2  # one drag instead of two corners

    def derive(self, view):
        out = []
        for a in view.truth:
            x, y, w, h = a["bbox"]
            out.append({"category_id": int(a["category_id"]), "circle": [x + w / 2, y + h / 2, math.hypot(w, h) / 2]})
        return out

    def request_annotation(self, prediction):
        x, y, w, h = prediction["bbox"]
        return {"segmentation": [], "circle": [x + w / 2, y + h / 2, math.hypot(w, h) / 2]}

    def label_studio_value(self, prediction, width, height, label):
        x, y, w, h = prediction["bbox"]
        return {"x": percent(x + w / 2, width), "y": percent(y + h / 2, height), "radiusX": percent(w / 2, width),
                "radiusY": percent(h / 2, height), "ellipselabels": label}

    def label_studio_control(self, categories):
        return region_labels("EllipseLabels", "", categories)

    def recognises(self, entry):
        return "circle" in entry

    def parser(self, requested, path):
        return CircleParser(requested, path)


@pytest.fixture
def circle(monkeypatch: pytest.MonkeyPatch):
    """The circle kind registered, and its params entry (the name in salis.params)."""
    monkeypatch.setattr(salis.params, "LABEL_TYPES", (*salis.params.LABEL_TYPES, "circle"))
    monkeypatch.setattr(salis.params, "LABEL_POLICIES", (*salis.params.LABEL_POLICIES, "circle"))
    with registered(CircleKind()) as kind:
        yield kind


@pytest.fixture
def prepared(tmp_path: Path) -> PreparedData:
    params = parse_params({"data": {"synthetic": {"pool_images": 4, "test_images": 1, "image_size": 48,
                                                  "max_instances": 3}}})
    prepare_dataset(params.data, tmp_path / "prepared")
    return PreparedData(tmp_path / "prepared")


def test_a_new_kind_is_one_class_plus_its_params_entry(circle: LabelKind, prepared: PreparedData, tmp_path: Path):
    # params: the policy validates against the params entry
    assert parse_params({"annotation": {"policy": "circle"}}).annotation.policy == "circle"
    # the simulated annotator derives it from the hidden masks and stores its kind on the image
    ids = prepared.pool_ids()[:2]
    oracle = SimulatedOracle(prepared)
    batch = simulated_batch(prepared, ids, ["circle", "mask"], seed=0, cycle=1)
    truth = oracle.annotations(ids[0])
    assert [a["category_id"] for a in batch.annotations[ids[0]]] == [a["category_id"] for a in truth]
    assert all(set(a) == {"category_id", "circle"} for a in batch.annotations[ids[0]])
    assert batch.label_type(ids[0]) == "circle" and batch.label_type(ids[1]) == "mask"
    # the cost model prices it by its own terms: 3.5 s per instance + 1 s per category checked
    assert CostModel().image_seconds(4, 2, "circle") == pytest.approx(4 * 3.5 + 2 * 1.0)
    # the request batch writes its files under its suffix
    instances = pd.DataFrame(columns=["image_id", "category_id", "score", "height", "width", "rle"])
    summary = write_request_batch(tmp_path / "req", prepared, ids, instances, cycle=1, label_types=["circle", "mask"])
    assert summary["by_type"] == {"mask": {"images": 1, "pre_annotations": 0}, "circle": {"images": 1, "pre_annotations": 0}}
    names = sorted(p.name for p in (tmp_path / "req").iterdir())
    assert {"request.circle.json", "label_studio_tasks.circle.json", "label_config.circle.xml", "images.circle.txt"} <= set(names)
    assert "EllipseLabels" in (tmp_path / "req" / "label_config.circle.xml").read_text()
    assert "--type circle" in (tmp_path / "req" / "README.txt").read_text()
    # an export comes back through its parser; a box export for a circle batch is refused by item
    request = json.loads((tmp_path / "req" / "request.circle.json").read_text())
    image = request["images"][0]
    export = {"images": [{"id": 1, "file_name": image["file_name"], "width": image["width"], "height": image["height"]}],
              "categories": [{"id": 1, "name": request["categories"][0]["name"]}],
              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "circle": [10.0, 12.0, 4.0]}]}
    (tmp_path / "export.json").write_text(json.dumps(export))
    done = import_labels(tmp_path / "export.json", tmp_path / "req" / "request.circle.json", tmp_path / "labels.json")
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert done["instances"] == 1 and labels["label_type"] == "circle"
    assert labels["annotations"] == [{"id": 1, "image_id": image["id"], "category_id": 1, "circle": [10.0, 12.0, 4.0]}]
    assert labels["images"][0]["label_type"] == "circle"
    export["annotations"][0] = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1.0, 1.0, 5.0, 5.0]}
    (tmp_path / "boxes.json").write_text(json.dumps(export))
    with pytest.raises(InputError, match=r"annotations\[0\].*holds boxes \(bbox\), but this batch asked for circles"):
        import_labels(tmp_path / "boxes.json", tmp_path / "req" / "request.circle.json", tmp_path / "l2.json")


def test_without_its_params_entry_a_kind_is_refused_as_a_policy():
    with registered(CircleKind()), pytest.raises(ParamsError, match="annotation.policy must be one of"):
        parse_params({"annotation": {"policy": "circle"}})
