"""Request batches: masks to polygons, the COCO request, Label Studio tasks and config."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from salis.annotation.export import mask_to_polygons, write_request_batch
from salis.data.prepare import prepare_dataset
from salis.data.prepared import PreparedData
from salis.errors import SalisError
from salis.params import parse_params

SIZE = 64


def _rasterise(polygons: list[list[float]], h: int, w: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w)))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / (a | b).sum())


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _l_shape(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    m[5:30, 5:12] = 1
    m[23:30, 5:35] = 1
    return m


def _border_block(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    m[h - 9 :, w - 7 :] = 1  # touches the bottom and right borders
    m[:4, :5] = 1  # and the top-left corner
    return m


# --- polygons ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [lambda: _disc(40, 50, 20, 25, 10), lambda: _disc(40, 50, 20, 25, 3.2), lambda: _l_shape(40, 50),
             lambda: _border_block(40, 50)],
    ids=["disc", "small_disc", "l_shape", "border"],
)
def test_polygons_reproduce_the_mask(make):
    mask = make()
    polygons = mask_to_polygons(mask)
    assert polygons and all(len(p) >= 8 and len(p) % 2 == 0 for p in polygons)
    assert _iou(_rasterise(polygons, 40, 50), mask) > 0.99
    assert np.array_equal(_rasterise(polygons, 40, 50), mask)  # pixel-edge outlines are exact


def test_polygons_of_an_l_shape_have_its_six_corners():
    assert mask_to_polygons(_l_shape(40, 50)) == [[5.0, 5.0, 12.0, 5.0, 12.0, 23.0, 35.0, 23.0, 35.0, 30.0, 5.0, 30.0]]


def test_corner_touching_pixels_get_separate_polygons():
    mask = np.zeros((6, 6), dtype=np.uint8)
    mask[1, 1] = mask[2, 2] = 1
    polygons = mask_to_polygons(mask)
    assert sorted(polygons) == [[1.0, 1.0, 2.0, 1.0, 2.0, 2.0, 1.0, 2.0], [2.0, 2.0, 3.0, 2.0, 3.0, 3.0, 2.0, 3.0]]


def test_holes_are_filled_and_empty_masks_give_no_polygon():
    ring = _disc(30, 30, 15, 15, 9) & ~_disc(30, 30, 15, 15, 3).astype(bool)
    filled = _rasterise(mask_to_polygons(ring), 30, 30)
    assert np.array_equal(filled, _disc(30, 30, 15, 15, 9))  # the hole is documented as dropped
    assert mask_to_polygons(np.zeros((5, 5), dtype=np.uint8)) == []


# --- request batch -------------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path: Path) -> PreparedData:
    params = parse_params(
        {"data": {"synthetic": {"pool_images": 6, "test_images": 2, "image_size": SIZE, "max_instances": 3}}}
    )
    prepare_dataset(params.data, tmp_path / "prepared")
    return PreparedData(tmp_path / "prepared")


def _rows(image_id: int, dets: list[tuple[int, float, np.ndarray]]) -> list[dict]:
    rows = []
    for det, (category_id, score, mask) in enumerate(dets):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        x, y, w, h = mask_utils.toBbox(rle)
        rows.append({
            "image_id": image_id, "det": det, "category_id": category_id, "score": score, "entropy": 0.1,
            "x": x, "y": y, "w": w, "h": h, "area": int(mask.sum()), "height": SIZE, "width": SIZE,
            "rle": rle["counts"].decode("ascii"),
        })
    return rows


def _instances() -> tuple[pd.DataFrame, dict[int, list[np.ndarray]]]:
    """A hand-built batch: images 2, 4 and 5 requested; image 1 scored but not requested."""
    disc, l_shape, border = _disc(SIZE, SIZE, 20, 30, 8), _l_shape(SIZE, SIZE), _border_block(SIZE, SIZE)
    rows = (
        _rows(2, [(1, 0.9, disc), (2, 0.8, l_shape)])
        + _rows(4, [(3, 0.95, border), (1, 0.3, disc)])  # the second is below min_score
        + _rows(1, [(1, 0.99, disc)])
    )
    kept = {2: [disc, l_shape], 4: [border], 5: []}
    return pd.DataFrame(rows), kept


def test_request_batch_files_and_summary(prepared: PreparedData, tmp_path: Path):
    instances, _ = _instances()
    out = tmp_path / "requests" / "cycle_3"
    summary = write_request_batch(out, prepared, [4, 2, 5], instances, cycle=3)
    assert summary == {"cycle": 3, "images": 3, "pre_annotations": 3, "below_min_score": 1, "empty_masks": 0,
                       "out_dir": str(out), "by_type": {"mask": {"images": 3, "pre_annotations": 3}}}
    assert sorted(p.name for p in out.iterdir()) == [
        "README.txt", "images.txt", "label_config.xml", "label_studio_tasks.json", "request.json"]
    assert "salis labels import --cycle 3" in (out / "README.txt").read_text()
    assert (out / "images.txt").read_text().splitlines() == [str(prepared.image_path(i)) for i in (4, 2, 5)]
    assert not list(out.parent.glob(".*"))  # no temp folder left behind


def test_request_coco_carries_the_predictions_as_polygons(prepared: PreparedData, tmp_path: Path):
    instances, kept = _instances()
    write_request_batch(tmp_path / "req", prepared, [4, 2, 5], instances, cycle=3)
    request = json.loads((tmp_path / "req" / "request.json").read_text())
    assert [img["id"] for img in request["images"]] == [4, 2, 5]  # selection order
    assert request["images"][0] == {"id": 4, "file_name": "syn_000004.png", "width": SIZE, "height": SIZE}
    assert [(c["id"], c["name"]) for c in request["categories"]] == [(1, "nucleus"), (2, "rod"), (3, "lobed_cell")]
    assert request["info"]["salis"]["cycle"] == 3 and request["info"]["salis"]["image_ids"] == [4, 2, 5]
    # CVAT's COCO reader refuses unknown top-level keys and needs licenses and info.
    assert set(request) == {"licenses", "info", "categories", "images", "annotations"}
    anns = request["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3]
    assert [(a["image_id"], a["category_id"]) for a in anns] == [(4, 3), (2, 1), (2, 2)]
    assert [a["attributes"]["score"] for a in anns] == pytest.approx([0.95, 0.9, 0.8])
    masks = [kept[4][0], kept[2][0], kept[2][1]]
    for ann, mask in zip(anns, masks):
        assert isinstance(ann["segmentation"], list) and ann["iscrowd"] == 0
        assert _iou(_rasterise(ann["segmentation"], SIZE, SIZE), mask) > 0.99
        assert ann["area"] == mask.sum()
        assert ann["bbox"] == [float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask)))]


def test_label_studio_tasks_and_config(prepared: PreparedData, tmp_path: Path):
    instances, kept = _instances()
    write_request_batch(tmp_path / "req", prepared, [4, 2, 5], instances, cycle=3,
                        image_url="/data/local-files/?d=pool/{file_name}")
    tasks = json.loads((tmp_path / "req" / "label_studio_tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [f"/data/local-files/?d=pool/syn_00000{i}.png" for i in (4, 2, 5)]
    assert "predictions" not in tasks[2]  # image 5 has no confident detection
    prediction = tasks[1]["predictions"][0]
    assert prediction["model_version"] == "salis-cycle-3"
    assert prediction["score"] == pytest.approx(0.85)
    results = prediction["result"]
    assert [r["value"]["polygonlabels"] for r in results] == [["nucleus"], ["rod"]]
    for result, mask in zip(results, kept[2]):
        assert (result["from_name"], result["to_name"], result["type"]) == ("label", "image", "polygonlabels")
        assert (result["original_width"], result["original_height"]) == (SIZE, SIZE)
        points = result["value"]["points"]
        assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in points)
        polygon = [v for x, y in points for v in (x / 100 * SIZE, y / 100 * SIZE)]
        assert _iou(_rasterise([polygon], SIZE, SIZE), mask) > 0.99
    config = ET.fromstring((tmp_path / "req" / "label_config.xml").read_text())
    image = config.find("Image")
    assert (image.get("name"), image.get("value")) == ("image", "$image")
    labels = config.find("PolygonLabels")
    assert (labels.get("name"), labels.get("toName")) == ("label", "image")
    assert [(lab.get("value"), lab.get("category")) for lab in labels.findall("Label")] == [
        ("nucleus", "1"), ("rod", "2"), ("lobed_cell", "3")]


def test_request_batch_is_byte_stable(prepared: PreparedData, tmp_path: Path):
    instances, _ = _instances()
    write_request_batch(tmp_path / "a", prepared, [4, 2, 5], instances, cycle=3)
    write_request_batch(tmp_path / "b", prepared, [4, 2, 5], instances, cycle=3)
    for name in ("request.json", "label_studio_tasks.json", "label_config.xml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_request_batch_refuses_non_pool_images_and_writes_nothing(prepared: PreparedData, tmp_path: Path):
    instances, _ = _instances()
    test_id = prepared.test_ids()[0]
    with pytest.raises(SalisError, match="not pool images"):
        write_request_batch(tmp_path / "req", prepared, [2, test_id], instances, cycle=1)
    with pytest.raises(ValueError, match="image_url"):
        write_request_batch(tmp_path / "req", prepared, [2], instances, cycle=1, image_url="{url}")
    assert not (tmp_path / "req").exists()


def test_one_label_studio_region_per_prediction_without_specks(prepared: PreparedData, tmp_path: Path):
    """A fragmented prediction is one polygon region (its largest part), not one per fragment."""
    mask = _disc(SIZE, SIZE, 30, 30, 9)
    mask[2, 2] = mask[5, 60] = mask[60, 5] = 1  # specks
    instances = pd.DataFrame(_rows(2, [(1, 0.9, mask)]))
    write_request_batch(tmp_path / "req", prepared, [2], instances, cycle=1)
    results = json.loads((tmp_path / "req" / "label_studio_tasks.json").read_text())[0]["predictions"][0]["result"]
    assert len(results) == 1
    polygon = [v for x, y in results[0]["value"]["points"] for v in (x / 100 * SIZE, y / 100 * SIZE)]
    assert np.array_equal(_rasterise([polygon], SIZE, SIZE), _disc(SIZE, SIZE, 30, 30, 9))
    # the CVAT file keeps every part: one annotation with four polygons
    (ann,) = json.loads((tmp_path / "req" / "request.json").read_text())["annotations"]
    assert len(ann["segmentation"]) == 4


def test_default_task_urls_name_the_image_folder_under_the_document_root(prepared: PreparedData, tmp_path: Path):
    instances, _ = _instances()
    write_request_batch(tmp_path / "req", prepared, [4], instances, cycle=1)
    (task,) = json.loads((tmp_path / "req" / "label_studio_tasks.json").read_text())
    folder = prepared.image_root(4).name
    assert task["data"]["image"] == f"/data/local-files/?d={folder}/syn_000004.png"
    readme = (tmp_path / "req" / "README.txt").read_text()
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={prepared.image_root(4).parent}" in readme


def test_a_mixed_batch_writes_one_set_of_files_per_label_type(prepared: PreparedData, tmp_path: Path):
    instances, kept = _instances()
    out = tmp_path / "req"
    summary = write_request_batch(out, prepared, [4, 2, 5], instances, cycle=3, label_types=["box", "point", "image"])
    assert summary["by_type"] == {"box": {"images": 1, "pre_annotations": 1}, "point": {"images": 1, "pre_annotations": 2},
                                  "image": {"images": 1, "pre_annotations": 0}}
    names = sorted(p.name for p in out.iterdir())
    for t in ("box", "point", "image"):
        assert {f"request.{t}.json", f"label_studio_tasks.{t}.json", f"label_config.{t}.xml", f"images.{t}.txt"} <= set(names)
    assert "request.json" not in names  # nobody was asked for masks
    boxes = json.loads((out / "request.box.json").read_text())
    assert boxes["info"]["salis"]["label_type"] == "box" and [i["id"] for i in boxes["images"]] == [4]
    (box,) = boxes["annotations"]
    assert box["segmentation"] == [] and box["bbox"] == [float(v) for v in mask_utils.toBbox(
        mask_utils.encode(np.asfortranarray(kept[4][0])))]
    points = json.loads((out / "request.point.json").read_text())
    assert all(c["keypoints"] == ["point"] for c in points["categories"])
    for ann, mask in zip(points["annotations"], kept[2]):
        x, y, v = ann["keypoints"]
        assert v == 2 and mask[int(y), int(x)]  # the predicted instance's deepest pixel
    counts_task = json.loads((out / "label_studio_tasks.image.json").read_text())[0]
    assert "predictions" not in counts_task  # image 5: nothing detected
    point_task = json.loads((out / "label_studio_tasks.point.json").read_text())[0]
    assert [r["type"] for r in point_task["predictions"][0]["result"]] == ["keypointlabels"] * 2
    config = ET.fromstring((out / "label_config.image.xml").read_text())
    assert config.find("Choices").get("choice") == "multiple"
    assert [n.get("name") for n in config.findall("Number")] == ["count_1", "count_2", "count_3"]
    assert ET.fromstring((out / "label_config.box.xml").read_text()).find("RectangleLabels") is not None
    readme = (out / "README.txt").read_text()
    assert "salis labels import --cycle 3 --type point" in readme and "1 image(s) need image labels" in readme


def test_image_level_pre_annotations_count_the_confident_detections(prepared: PreparedData, tmp_path: Path):
    instances, _ = _instances()
    write_request_batch(tmp_path / "req", prepared, [2], instances, cycle=3, label_types=["image"])
    (task,) = json.loads((tmp_path / "req" / "label_studio_tasks.image.json").read_text())
    results = task["predictions"][0]["result"]
    assert results[0]["value"] == {"choices": ["nucleus", "rod"]}
    assert [(r["from_name"], r["value"]["number"]) for r in results[1:]] == [("count_1", 1), ("count_2", 1)]
