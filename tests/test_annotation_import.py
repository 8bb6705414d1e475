"""Importing human labels: CVAT and Label Studio COCO exports round-trip, and every bad import
is refused with the labels on disk unchanged."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from salis.annotation.export import write_request_batch
from salis.annotation.importer import import_labels, read_label_export
from salis.data.prepare import prepare_dataset
from salis.data.prepared import PreparedData
from salis.errors import InputError
from salis.params import parse_params

SIZE = 64
REQUESTED = [4, 2, 5]
CVAT_IDS = {"lobed_cell": 1, "rod": 2, "nucleus": 3}  # CVAT numbers its own labels from 1


# --- a hand-built batch --------------------------------------------------------------------


def _disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


# image -> [(category id, mask)]: a disc, an L-shape, a block at the image border, ...
BATCH = {
    4: [(3, _box(50, 64, 52, 64)), (1, _disc(12, 12, 5))],
    2: [(1, _disc(20, 30, 8)), (2, np.maximum(_box(5, 30, 5, 12), _box(23, 30, 5, 35)))],
    5: [(2, _disc(40, 40, 6))],
}


def _instances() -> pd.DataFrame:
    rows = []
    for image_id, dets in BATCH.items():
        for det, (category_id, mask) in enumerate(dets):
            rle = mask_utils.encode(np.asfortranarray(mask))
            x, y, w, h = mask_utils.toBbox(rle)
            rows.append({"image_id": image_id, "det": det, "category_id": category_id, "score": 0.9,
                         "entropy": 0.1, "x": x, "y": y, "w": w, "h": h, "area": int(mask.sum()),
                         "height": SIZE, "width": SIZE, "rle": rle["counts"].decode("ascii")})
    return pd.DataFrame(rows)


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    """The request folder of cycle 2 for images 4, 2, 5 of a tiny synthetic pool."""
    params = parse_params(
        {"data": {"synthetic": {"pool_images": 6, "test_images": 2, "image_size": SIZE, "max_instances": 3}}}
    )
    prepare_dataset(params.data, tmp_path / "prepared")
    out = tmp_path / "requests" / "cycle_2"
    write_request_batch(out, PreparedData(tmp_path / "prepared"), REQUESTED, _instances(), cycle=2)
    return out


def _request(batch: Path) -> dict:
    return json.loads((batch / "request.json").read_text())


# --- what the tools export -------------------------------------------------------------------


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """CVAT's brush masks: column-major run lengths starting with a background run."""
    flat = mask.flatten(order="F").astype(np.int8)
    bounds = np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + counts}


def cvat_export(request: dict) -> dict:
    """COCO 1.0 as CVAT writes it: own image and category ids, attributes, a brush mask as iscrowd RLE."""
    names = {c["id"]: c["name"] for c in request["categories"]}
    images = [{"id": k + 1, "file_name": img["file_name"], "width": img["width"], "height": img["height"],
               "license": 0, "flickr_url": "", "coco_url": "", "date_captured": 0}
              for k, img in enumerate(request["images"])]
    new_id = {img["id"]: k + 1 for k, img in enumerate(request["images"])}
    anns = []
    for ann in request["annotations"]:
        out = {"id": len(anns) + 1, "image_id": new_id[ann["image_id"]],
               "category_id": CVAT_IDS[names[ann["category_id"]]], "segmentation": copy.deepcopy(ann["segmentation"]),
               "area": ann["area"], "bbox": ann["bbox"], "iscrowd": 0,
               "attributes": {"occluded": False, "score": ann["attributes"]["score"]}}
        anns.append(out)
    # The annotator repainted the last instance with the brush: CVAT exports that as crowd RLE.
    last = anns[-1]
    mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(last["segmentation"], SIZE, SIZE)))
    last["segmentation"], last["iscrowd"] = _uncompressed_rle(mask), 1
    return {"licenses": [{"name": "", "id": 0, "url": ""}], "info": {"contributor": "", "version": ""},
            "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in CVAT_IDS.items()],
            "images": images, "annotations": anns}


def label_studio_export(tasks: list[dict]) -> dict:
    """COCO as Label Studio writes it from the tasks: 0-based ids, upload-prefixed paths, pixels from percent."""
    results = [r for t in tasks for p in t.get("predictions", []) for r in p["result"]]
    names = sorted({r["value"]["polygonlabels"][0] for r in results})
    cat_id = {n: k for k, n in enumerate(names)}
    images, anns = [], []
    for k, task in enumerate(tasks):
        results = [r for p in task.get("predictions", []) for r in p["result"]]
        if not results:
            continue  # Label Studio leaves images without annotations out of its COCO export
        w, h = results[0]["original_width"], results[0]["original_height"]
        name = task["data"]["image"].split("?d=")[-1].rsplit("/", 1)[-1]
        images.append({"width": w, "height": h, "id": len(images), "file_name": f"images/{k:04d}abcd-{name}"})
        for r in results:
            pts = [(x / 100 * w, y / 100 * h) for x, y in r["value"]["points"]]
            xs, ys = zip(*pts)
            anns.append({"id": len(anns), "image_id": images[-1]["id"],
                         "category_id": cat_id[r["value"]["polygonlabels"][0]],
                         "segmentation": [[v for p in pts for v in p]],
                         "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                         "ignore": 0, "iscrowd": 0, "area": 1.0})
    return {"images": images, "categories": [{"id": i, "name": n} for n, i in cat_id.items()],
            "annotations": anns, "info": {"contributor": "Label Studio", "version": "1.0"}}


def _write(path: Path, obj: dict) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _masks(labels: dict) -> dict[int, list[tuple[int, np.ndarray]]]:
    out: dict[int, list[tuple[int, np.ndarray]]] = {}
    for ann in labels["annotations"]:
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        out.setdefault(ann["image_id"], []).append((ann["category_id"], mask_utils.decode(rle)))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / (a | b).sum())


def _assert_reproduces_batch(labels: dict, skip: set[int] = frozenset()) -> None:
    masks = _masks(labels)
    expected = {i: dets for i, dets in BATCH.items() if i not in skip}
    assert sorted(masks) == sorted(expected)
    for image_id, dets in expected.items():
        got = masks[image_id]
        assert [c for c, _ in got] == [c for c, _ in dets]
        for (_, mask), (_, want) in zip(got, dets):
            assert _iou(mask, want) > 0.99


# --- round trips ---------------------------------------------------------------------------


def test_cvat_export_round_trip(batch: Path, tmp_path: Path):
    export = _write(tmp_path / "instances_default.json", cvat_export(_request(batch)))
    labels_path = tmp_path / "labels" / "cycle_2.json"
    summary = import_labels(export, batch / "request.json", labels_path)
    labels = json.loads(labels_path.read_text())
    _assert_reproduces_batch(labels)
    assert [img["id"] for img in labels["images"]] == [2, 4, 5]  # pool ids, not CVAT's
    assert [(c["id"], c["name"]) for c in labels["categories"]] == [(1, "nucleus"), (2, "rod"), (3, "lobed_cell")]
    assert labels["cycle"] == 2 and labels["partial_unlabeled"] == [] and labels["source_file"] == str(export)
    assert all(a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str) for a in labels["annotations"])
    assert [a["id"] for a in labels["annotations"]] == list(range(1, 6))
    assert summary["images_labeled"] == 3 and summary["instances"] == 5 and summary["backup"] is None


def test_label_studio_export_round_trip(batch: Path, tmp_path: Path):
    tasks = json.loads((batch / "label_studio_tasks.json").read_text())
    export = label_studio_export(tasks)
    assert export["images"][0]["file_name"] == "images/0000abcd-syn_000004.png"
    assert {c["id"] for c in export["categories"]} == {0, 1, 2}
    labels_path = tmp_path / "labels.json"
    import_labels(_write(tmp_path / "result.json", export), batch / "request.json", labels_path)
    _assert_reproduces_batch(json.loads(labels_path.read_text()))


@pytest.mark.parametrize(
    "file_name", ["/data/upload/7/1a2b3c4d-syn_000004.png", "/data/local-files/?d=syn_000004.png",
                  "C:\\exports\\images\\syn_000004.png"]
)
def test_label_studio_and_windows_file_names_match(batch: Path, tmp_path: Path, file_name: str):
    export = cvat_export(_request(batch))
    export["images"][0]["file_name"] = file_name
    coco, unlabeled = read_label_export(_write(tmp_path / "e.json", export), _request(batch))
    assert unlabeled == [] and [img["id"] for img in coco["images"]] == [2, 4, 5]


def test_polygon_vertices_just_outside_are_clipped_with_a_warning(batch: Path, tmp_path: Path):
    export = cvat_export(_request(batch))
    ann = export["annotations"][0]  # the block at the border of pool image 4
    poly = ann["segmentation"][0]
    ann["segmentation"] = [[min(v + 0.8, SIZE + 0.8) if v == SIZE else v for v in poly]]
    with pytest.warns(UserWarning, match="clipped"):
        coco, _ = read_label_export(_write(tmp_path / "e.json", export), _request(batch))
    assert coco["clipped_vertices"] > 0
    _assert_reproduces_batch(coco)


def test_partial_sends_unlabeled_images_back(batch: Path, tmp_path: Path):
    export = cvat_export(_request(batch))
    export["annotations"] = [a for a in export["annotations"] if a["image_id"] != 2]  # image 2 is pool id 2
    labels_path = tmp_path / "labels.json"
    summary = import_labels(_write(tmp_path / "e.json", export), batch / "request.json", labels_path, partial=True)
    labels = json.loads(labels_path.read_text())
    assert summary["partial_unlabeled"] == labels["partial_unlabeled"] == [2]
    assert [img["id"] for img in labels["images"]] == [4, 5]
    _assert_reproduces_batch(labels, skip={2})


def test_empty_images_count_only_when_allowed(batch: Path, tmp_path: Path):
    export = cvat_export(_request(batch))
    export["annotations"] = [a for a in export["annotations"] if a["image_id"] != 3]  # pool id 5: no object
    path = _write(tmp_path / "e.json", export)
    assert read_label_export(path, _request(batch))[1] == [5]
    coco, unlabeled = read_label_export(path, _request(batch), allow_empty_images=True)
    assert unlabeled == [] and [img["id"] for img in coco["images"]] == [2, 4, 5]


def test_replace_keeps_every_old_file_as_a_backup(batch: Path, tmp_path: Path):
    labels_path = tmp_path / "labels.json"
    export = _write(tmp_path / "e.json", cvat_export(_request(batch)))
    import_labels(export, batch / "request.json", labels_path)
    first = labels_path.read_bytes()
    summary = import_labels(export, batch / "request.json", labels_path, replace=True)
    assert summary["backup"] == str(tmp_path / "labels.json.bak-1")
    assert (tmp_path / "labels.json.bak-1").read_bytes() == first
    second = labels_path.read_bytes()
    import_labels(export, batch / "request.json", labels_path, replace=True)
    assert (tmp_path / "labels.json.bak-1").read_bytes() == first
    assert (tmp_path / "labels.json.bak-2").read_bytes() == second


# --- refusals: each leaves the labels on disk byte for byte ----------------------------------


def _unrequested(export: dict) -> None:
    export["images"].append({"id": 99, "file_name": "syn_000001.png", "width": SIZE, "height": SIZE})


def _unknown_category(export: dict) -> None:
    export["categories"].append({"id": 9, "name": "bacterium"})
    export["annotations"][1]["category_id"] = 9


def _empty_polygon(export: dict) -> None:
    export["annotations"][1]["segmentation"] = [[5, 5, 5, 5, 5, 5]]


def _box_only(export: dict) -> None:
    export["annotations"][1]["segmentation"] = []


def _empty_rle(export: dict) -> None:
    export["annotations"][-1]["segmentation"]["counts"] = [SIZE * SIZE]


def _polygon_out_of_bounds(export: dict) -> None:
    export["annotations"][1]["segmentation"][0][0] = SIZE + 5


def _rle_wrong_size(export: dict) -> None:
    export["annotations"][-1]["segmentation"] = _uncompressed_rle(np.ones((SIZE + 2, SIZE), dtype=np.uint8))


def _unlabeled(export: dict) -> None:
    export["images"] = [img for img in export["images"] if img["id"] != 3]
    export["annotations"] = [a for a in export["annotations"] if a["image_id"] != 3]


def _wrong_image_size(export: dict) -> None:
    export["images"][0]["width"] = SIZE * 2


REFUSALS = {
    "unrequested image": (_unrequested, "not requested"),
    "unknown category": (_unknown_category, "unknown category name.*bacterium"),
    "empty polygon": (_empty_polygon, "empty mask"),
    "box without mask": (_box_only, "empty mask"),
    "empty rle": (_empty_rle, "empty mask"),
    "polygon out of bounds": (_polygon_out_of_bounds, "outside the 64x64 image"),
    "rle of another size": (_rle_wrong_size, "does not match"),
    "unlabeled image": (_unlabeled, "not labeled.*--partial"),
    "image of another size": (_wrong_image_size, "is 128x64"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_bad_imports_are_refused_and_change_nothing(batch: Path, tmp_path: Path, name: str):
    spoil, message = REFUSALS[name]
    labels_path = tmp_path / "labels.json"
    good = _write(tmp_path / "good.json", cvat_export(_request(batch)))
    import_labels(good, batch / "request.json", labels_path)
    before = labels_path.read_bytes()
    export = cvat_export(_request(batch))
    spoil(export)
    bad = _write(tmp_path / "bad.json", export)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # replace=True: even an allowed overwrite must not happen when the export is bad.
        with pytest.raises(InputError, match=message) as err:
            import_labels(bad, batch / "request.json", labels_path, replace=True)
        assert err.value.path == str(bad) and str(bad) in str(err.value)
        with pytest.raises(InputError, match=message):
            import_labels(bad, batch / "request.json", tmp_path / "fresh.json")
    assert labels_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["bad.json", "good.json", "labels.json"]


def test_second_import_is_refused_without_replace(batch: Path, tmp_path: Path):
    labels_path = tmp_path / "labels.json"
    export = _write(tmp_path / "e.json", cvat_export(_request(batch)))
    import_labels(export, batch / "request.json", labels_path)
    before = labels_path.read_bytes()
    with pytest.raises(InputError, match="already imported.*--replace") as err:
        import_labels(export, batch / "request.json", labels_path)
    assert err.value.path == str(labels_path)
    assert labels_path.read_bytes() == before
    assert not list(tmp_path.glob("*.bak-*"))


def test_ambiguous_base_names_are_refused(batch: Path, tmp_path: Path):
    request = _request(batch)
    request["images"][1]["file_name"] = "a/syn_000004.png"  # two requested images share a base name
    request["images"][0]["file_name"] = "b/syn_000004.png"
    export = cvat_export(request)
    export["images"][0]["file_name"] = "syn_000004.png"
    with pytest.raises(InputError, match="several requested images"):
        read_label_export(_write(tmp_path / "e.json", export), copy.deepcopy(request))
