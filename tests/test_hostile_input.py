"""A hostile-input corpus for `salis labels import`: for every label type and export format (Label
Studio JSON; COCO, which CVAT exports too), files as a careless or hostile user makes them, each
one image with one planted defect (imported with --partial, so that only the defect can refuse it).
Each must end with exit code 2 and one stderr line without a traceback, and leave data/, labels/ and
.salis/ byte for byte as they were. Two more classes: params that would fail a later stage
(`salis check`) and a file that is not JSON at all."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from salis.artifacts.layout import Layout
from salis.cli import app
from salis.params import parse_params
from support import run_stage, tiny

LABEL_TYPES = ("mask", "box", "point", "image")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A human-mode project whose batch 0 waits for its labels, with a request of every label type."""
    root = tmp_path_factory.mktemp("hostile")
    params = parse_params(tiny(oracle="human"))
    layout = Layout(root)
    run_stage("prepare", params, layout)
    run_stage("init", params, layout)
    request = json.loads((layout.requests(0) / "request.json").read_text())
    for label_type in LABEL_TYPES[1:]:
        typed = copy.deepcopy(request)
        typed["info"]["salis"]["label_type"] = label_type
        (layout.requests(0) / f"request.{label_type}.json").write_text(json.dumps(typed))
    (root / "labels").mkdir(exist_ok=True)
    return root


def checksums(root: Path) -> dict[str, str]:
    out = {}
    for folder in ("data", "labels", ".salis"):
        for path in sorted((root / folder).rglob("*")) if (root / folder).is_dir() else []:
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def image(project: Path) -> dict:
    return json.loads((project / "data/requests/cycle_0/request.json").read_text())["images"][0]


# --- Label Studio JSON: one task whose annotation holds `results` ---------------------------------

def ls_task(project: Path, results: list, data: dict | None = None) -> list:
    first = image(project)
    return [{"id": 11, "data": data if data is not None else {"salis_image_id": first["id"],
                                                               "file_name": first["file_name"]},
             "annotations": [{"id": 1, "result": results}]}]


def region(kind: str, value: dict, label: str = "nucleus", **extra) -> dict:
    return {"type": kind, "from_name": "label", "to_name": "image", "value": {**value, kind: [label]}, **extra}


def brush_declaring(values: int) -> list[int]:
    """A brush RLE whose header declares `values` values (then ends)."""
    return list(values.to_bytes(4, "big")) + [0, 0, 0, 0]


LS_CASES = {
    "mask": {
        "polygon coordinate is a string": [region("polygonlabels", {"points": [[1, 1], ["10", 1], [10, 10]]})],
        "polygon coordinate is null": [region("polygonlabels", {"points": [[1, 1], [None, 1], [10, 10]]})],
        "polygon points are flat": [region("polygonlabels", {"points": [1, 1, 10, 1, 10, 10]})],
        "polygon points are a string": [region("polygonlabels", {"points": "1,1 10,1 10,10"})],
        "polygon of two points": [region("polygonlabels", {"points": [[1, 1], [10, 10]]})],
        "polygon coordinate is infinite": [region("polygonlabels", {"points": [[1, 1], [1e400, 1], [10, 10]]})],
        "brush RLE declares 2^32-1 values": [region("brushlabels", {"format": "rle", "rle": brush_declaring(2**32 - 1)})],
        "brush RLE byte out of range": [region("brushlabels", {"format": "rle", "rle": [0, 0, 1, 64, 999]})],
        "two labels on one region": [{"type": "polygonlabels", "value": {
            "points": [[1, 1], [10, 1], [10, 10]], "polygonlabels": ["nucleus", "rod"]}}],
        "value is a list": [{"type": "polygonlabels", "value": [1, 2, 3]}],
        "region type is a number": [{"type": 7, "value": {}}],
    },
    "box": {
        "rectangle without x": [{"type": "rectanglelabels", "value": {"y": 1, "width": 5, "height": 5,
                                                                      "rectanglelabels": ["nucleus"]}}],
        "rotation is a string": [region("rectanglelabels", {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": "abc"})],
        "negative width": [region("rectanglelabels", {"x": 1, "y": 1, "width": -5, "height": 5})],
        "coordinate past the image": [region("rectanglelabels", {"x": 1e6, "y": 1, "width": 5, "height": 5})],
    },
    "point": {
        "point without y": [{"type": "keypointlabels", "value": {"x": 5, "keypointlabels": ["nucleus"]}}],
        "point coordinate is a bool": [region("keypointlabels", {"x": True, "y": 5})],
    },
    "image": {
        "count of 1e30": [{"type": "choices", "from_name": "present", "value": {"choices": ["nucleus"]}},
                          {"type": "number", "from_name": "count_1", "value": {"number": 1e30}}],
        "count is a string": [{"type": "choices", "from_name": "present", "value": {"choices": ["nucleus"]}},
                              {"type": "number", "from_name": "count_1", "value": {"number": "many"}}],
        "negative count": [{"type": "number", "from_name": "count_1", "value": {"number": -3}}],
    },
}


def ls_case_files(project: Path) -> list[tuple[str, str, object]]:
    cases = [(label_type, name, ls_task(project, results))
             for label_type, named in LS_CASES.items() for name, results in named.items()]
    cases.append(("mask", "list-valued original_width without an image id", ls_task(
        project, [region("polygonlabels", {"points": [[1, 1], [10, 1], [10, 10]]},
                         original_width=[64], original_height=64)], data={"file_name": "x.png"})))
    return cases


# --- COCO (CVAT's export format too) --------------------------------------------------------------

def coco(project: Path, annotations: list, image_extra: dict | None = None) -> dict:
    first = image(project)
    return {"images": [{"id": 1, "file_name": first["file_name"], "width": first["width"],
                        "height": first["height"], **(image_extra or {})}],
            "annotations": annotations, "categories": [{"id": 1, "name": "nucleus"}]}


def ann(**fields) -> dict:
    return {"id": 1, "image_id": 1, "category_id": 1, **fields}


COCO_CASES = {
    "mask": {
        "polygon coordinate is a string": [ann(segmentation=[[1, 1, "10", 1, 10, 10]])],
        "polygon coordinate is null": [ann(segmentation=[[1, 1, None, 1, 10, 10]])],
        "RLE counts of the wrong type": [ann(segmentation={"size": [64, 64], "counts": 12})],
        "RLE of another size": [ann(segmentation={"size": [8, 8], "counts": [64]})],
        "image id is a list": [{"id": 1, "image_id": [1], "category_id": 1, "segmentation": [[1, 1, 10, 1, 10, 10]]}],
    },
    "box": {
        "bbox of three numbers": [ann(bbox=[1, 1, 5], segmentation=[])],
        "bbox is NaN": [ann(bbox=[float("nan"), 1, 5, 5], segmentation=[])],
        "bbox outside the image": [ann(bbox=[1000, 1000, 5, 5], segmentation=[])],
    },
    "point": {
        "keypoints of two numbers": [ann(keypoints=[1, 1])],
        "keypoint is a string": [ann(keypoints=["1", 1, 2])],
    },
}
COCO_IMAGE_CASES = {
    "count of 1e30": {"counts": {"nucleus": 1e30}},
    "count is a string": {"counts": {"nucleus": "many"}},
    "counts are a list": {"counts": [3]},
}


def coco_case_files(project: Path) -> list[tuple[str, str, object]]:
    cases = [(t, name, coco(project, anns)) for t, named in COCO_CASES.items() for name, anns in named.items()]
    cases += [("image", name, coco(project, [], extra)) for name, extra in COCO_IMAGE_CASES.items()]
    return cases


RAW_CASES = {  # every format: files that are not a usable JSON document at all
    "empty file": b"",
    "not JSON": b"<html>export failed</html>",
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "top level is a string": b'"tasks"',
    "not UTF-8": b"\xff\xfe{}",
}


def all_cases(project: Path) -> list[tuple[str, str, str, bytes]]:
    out = [("label_studio", t, name, json.dumps(body).encode()) for t, name, body in ls_case_files(project)]
    out += [("coco", t, name, json.dumps(body).encode()) for t, name, body in coco_case_files(project)]
    out += [("raw", t, name, body) for name, body in RAW_CASES.items() for t in LABEL_TYPES]
    return out


def test_every_hostile_export_is_one_line_and_changes_nothing(project, monkeypatch):
    monkeypatch.chdir(project)
    before = checksums(project)
    cases = all_cases(project)
    failures = []
    for fmt, label_type, name, body in cases:
        export = project / "export.json"
        export.write_bytes(body)
        # --partial: the one image the case labels would import; only the planted defect can refuse it
        result = CliRunner().invoke(app, ["labels", "import", str(export), "--cycle", "0", "--type", label_type,
                                          "--partial", "--no-dvc-add"])
        lines = result.stderr.strip().splitlines()
        ok = (result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("salis: error: ")
              and "Traceback" not in result.stderr and len(lines[0]) < 600)
        if not ok:
            failures.append(f"{fmt}/{label_type}/{name}: exit {result.exit_code}, stderr {result.stderr[-300:]!r}, "
                            f"exception {result.exception!r}")
        export.unlink()
        assert checksums(project) == before, f"{fmt}/{label_type}/{name} changed a file"
    assert not failures, "\n".join(failures)
    # the corpus covers every label type in both formats
    covered = {(fmt, t) for fmt, t, _, _ in cases}
    assert {(f, t) for f in ("label_studio", "coco", "raw") for t in LABEL_TYPES} <= covered
    assert len(cases) >= 50


def test_an_exact_duplicate_annotation_is_kept_once_with_a_warning(project, monkeypatch, tmp_path):
    """A double submit: the same mask twice on one image is one instance, said in a warning."""
    from pycocotools import mask as mask_utils

    from salis.annotation.importer import read_label_export

    request = json.loads((project / "data/requests/cycle_0/request.json").read_text())
    first = request["images"][0]
    polygon = [[4, 4, 30, 4, 30, 30, 4, 30]]
    other = [[40, 40, 60, 40, 60, 60]]
    export = {"images": [{"id": 1, "file_name": first["file_name"], "width": first["width"], "height": first["height"]}],
              "annotations": [ann(segmentation=polygon), dict(ann(segmentation=polygon), id=2),
                              dict(ann(segmentation=other), id=3)],
              "categories": [{"id": 1, "name": "nucleus"}]}
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    with pytest.warns(UserWarning, match=r"1 annotation\(s\) repeat an earlier one exactly .* kept once"):
        labels, _ = read_label_export(path, request, allow_empty_images=True)
    assert len(labels["annotations"]) == 2
    areas = sorted(float(mask_utils.area(a["segmentation"] | {"counts": a["segmentation"]["counts"].encode()}))
                   for a in labels["annotations"])
    assert areas == pytest.approx(sorted([26 * 26, 200]), abs=60)


@pytest.mark.parametrize(("params", "message"), [
    ("train: {lr: .nan}", "train.lr must be a finite number, got nan"),
    ("train: {epochs: .nan}", "train.epochs must be a finite number"),
    ("select: {budget_hours: .inf}", "select.budget_hours must be a finite number"),
    ("train: {lr: -0.02}", "train.lr must be positive, got -0.02"),
    ("seed: 100000000000000000000", "seed must lie in 0..4294967295"),
    ("model: {min_size: 100000, max_size: 100000}", "model.min_size (100000) is above the image side limit of 4096 px"),
    ("train: {momentum: 1.5}", "train.momentum must lie in [0, 1)"),
    ("model: {detections_per_image: 10000000}", "model.detections_per_image (10000000) is above the sane limit"),
    ("seed: " + "x" * 1_000_000, "seed must be an integer, got 'xxxx"),
])
def test_salis_check_refuses_params_that_would_fail_a_later_stage(tmp_path, monkeypatch, params, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(params + "\n")
    result = CliRunner().invoke(app, ["check"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.stderr[:300]
    assert len(lines[0]) < 300 and "Traceback" not in result.stderr
