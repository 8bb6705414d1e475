"""COCO import: normalisation to compressed RLE, every bad input as a clear InputError, counted drops."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from salis.data.coco_checks import rle_totals
from salis.data.coco_import import check_same_categories, load_coco, split_test
from salis.errors import InputError

# 10x12 mask, rows 1..3 and columns 4..6 set, as column-major runs: 4 empty columns + 1 px,
# then 3 on / 7 off twice, 3 on, then the rest (6 px + 5 empty columns).
UNCOMPRESSED = [41, 3, 7, 3, 7, 3, 56]


def _compressed(height: int, width: int, rows: slice, cols: slice) -> dict:
    mask = np.zeros((height, width, 1), dtype=np.uint8, order="F")
    mask[rows, cols] = 1
    rle = mask_utils.encode(mask)[0]
    return {"size": [height, width], "counts": rle["counts"].decode()}


def _base() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 20, "height": 16},
            {"id": 2, "file_name": "sub/b.png", "width": 12, "height": 10},
            {"id": 3, "file_name": "c.png", "width": 8, "height": 8},  # no annotations: still a pool image
        ],
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "debris"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]],
             "bbox": [2, 2, 10, 8], "area": 80, "iscrowd": 0},
            {"id": 11, "image_id": 2, "category_id": 2, "segmentation": {"size": [10, 12], "counts": UNCOMPRESSED},
             "bbox": [4, 1, 3, 3], "area": 9, "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 2,
             "segmentation": _compressed(16, 20, slice(12, 15), slice(14, 18)),
             "bbox": [14, 12, 4, 3], "area": 12, "iscrowd": 0},
        ],
    }


def _write(tmp_path: Path, coco: dict, images: bool = True) -> tuple[Path, Path]:
    image_dir = tmp_path / "images"
    if images:
        for img in coco["images"]:
            path = image_dir / img["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (img["width"], img["height"]), 30).save(path)
    json_path = tmp_path / "instances.json"
    json_path.write_text(json.dumps(coco))
    return json_path, image_dir


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    return _write(tmp_path, _base())


def _rewrite(json_path: Path, edit) -> None:
    coco = json.loads(json_path.read_text())
    edit(coco)
    json_path.write_text(json.dumps(coco))


def _names(path: Path, problem: str) -> str:
    """Regex: the message names the file, then states the problem."""
    return f"{re.escape(str(path))}.*{problem}"


def _decode(seg: dict) -> np.ndarray:
    return mask_utils.decode([{"size": seg["size"], "counts": seg["counts"].encode()}])[:, :, 0]


# --- the happy path -----------------------------------------------------------------------


def test_loads_and_normalises(dataset):
    json_path, image_dir = dataset
    coco, dropped = load_coco(json_path, image_dir)
    assert dropped == {"crowd": 0, "zero_area": 0, "bad_bbox": 0}
    assert [img["id"] for img in coco["images"]] == [1, 2, 3]
    assert coco["images"][1] == {"id": 2, "file_name": "sub/b.png", "width": 12, "height": 10}
    assert coco["categories"] == [{"id": 1, "name": "cell"}, {"id": 2, "name": "debris"}]
    by_id = {a["id"]: a for a in coco["annotations"]}
    assert sorted(by_id) == [10, 11, 12]
    for ann in by_id.values():
        assert set(ann) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
        assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
    json.dumps(coco)


def test_square_polygon_becomes_rle_with_expected_area(dataset):
    coco, _ = load_coco(*dataset)
    ann = next(a for a in coco["annotations"] if a["id"] == 10)
    # The square (2,2)-(12,10) covers pixels x 2..11, y 2..9: 10 x 8 = 80.
    assert ann["area"] == 80.0
    assert ann["bbox"] == [2.0, 2.0, 10.0, 8.0]
    mask = _decode(ann["segmentation"])
    assert mask.shape == (16, 20) and mask[2:10, 2:12].all() and mask.sum() == 80


def test_two_polygons_merge_into_one_mask(tmp_path):
    coco = _base()
    coco["annotations"][0]["segmentation"].append([14, 12, 18, 12, 18, 15, 14, 15])  # 4 x 3 more
    loaded, _ = load_coco(*_write(tmp_path, coco))
    assert next(a for a in loaded["annotations"] if a["id"] == 10)["area"] == 92.0


def test_uncompressed_and_compressed_rle(dataset):
    coco, _ = load_coco(*dataset)
    by_id = {a["id"]: a for a in coco["annotations"]}
    expected = np.zeros((10, 12), dtype=np.uint8)
    expected[1:4, 4:7] = 1
    assert (_decode(by_id[11]["segmentation"]) == expected).all()
    assert by_id[11]["area"] == 9.0 and by_id[11]["bbox"] == [4.0, 1.0, 3.0, 3.0]
    assert by_id[12]["segmentation"] == _compressed(16, 20, slice(12, 15), slice(14, 18))
    assert by_id[12]["area"] == 12.0 and by_id[12]["bbox"] == [14.0, 12.0, 4.0, 3.0]


def test_inner_dotdot_that_stays_inside_is_normalised(tmp_path):
    coco = _base()
    coco["images"][1]["file_name"] = "sub/../sub/b.png"
    json_path, image_dir = _write(tmp_path, coco)
    loaded, _ = load_coco(json_path, image_dir)
    assert loaded["images"][1]["file_name"] == "sub/b.png"


def test_check_images_false_skips_the_files_but_not_the_path_check(tmp_path):
    json_path, image_dir = _write(tmp_path, _base(), images=False)
    coco, _ = load_coco(json_path, image_dir, check_images=False)
    assert len(coco["images"]) == 3
    _rewrite(json_path, lambda c: c["images"][0].update(file_name="../evil.png"))
    with pytest.raises(InputError, match=_names(json_path, "points outside the image folder")):
        load_coco(json_path, image_dir, check_images=False)


# --- drops -------------------------------------------------------------------------------


def test_dropped_annotations_are_counted_in_one_warning(tmp_path):
    coco = _base()
    coco["annotations"] += [
        {"id": 20, "image_id": 1, "category_id": 1, "segmentation": _compressed(16, 20, slice(0, 2), slice(0, 2)),
         "bbox": [0, 0, 2, 2], "iscrowd": 1},
        {"id": 21, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 5]], "bbox": [1, 1, 4, 4]},
        {"id": 22, "image_id": 2, "category_id": 1, "segmentation": _compressed(10, 12, slice(0, 0), slice(0, 0))},
        {"id": 23, "image_id": 1, "category_id": 2, "segmentation": [], "bbox": [math.nan, 0, 0, 0]},
        # A broken bbox with a fine mask is repaired from the mask, not dropped.
        {"id": 24, "image_id": 1, "category_id": 2, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]], "bbox": [1, 1, 0, -3]},
        {"id": 25, "image_id": 1, "category_id": 2, "segmentation": [[0, 12, 3, 12, 3, 16, 0, 16]],
         "bbox": [math.inf, 1, 2, 2]},
    ]
    json_path, image_dir = _write(tmp_path, coco)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded, dropped = load_coco(json_path, image_dir)
    assert dropped == {"crowd": 1, "zero_area": 2, "bad_bbox": 1}
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1
    assert str(json_path) in messages[0]
    assert "dropped 4 annotation(s)" in messages[0]
    assert "1 crowd" in messages[0] and "2 with an empty mask" in messages[0]
    assert "1 with a degenerate or non-finite bbox" in messages[0]
    by_id = {a["id"]: a for a in loaded["annotations"]}
    assert sorted(by_id) == [10, 11, 12, 24, 25]
    assert by_id[24]["bbox"] == [0.0, 0.0, 4.0, 4.0] and by_id[24]["area"] == 16.0
    assert by_id[25]["bbox"] == [0.0, 12.0, 3.0, 4.0]


def test_no_warning_when_nothing_is_dropped(dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_coco(*dataset)


# --- bad input: each one names the file and the problem ---------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(InputError, match=_names(path, "no such file")):
        load_coco(path, tmp_path)


def test_not_json_says_line_and_column(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text('{"images": [],\n  "annotations": [,]}')
    with pytest.raises(InputError, match=_names(path, "not valid JSON: .* at line 2, column 19")):
        load_coco(path, tmp_path)


def test_top_level_key_missing(dataset):
    json_path, image_dir = dataset
    _rewrite(json_path, lambda c: c.pop("categories"))
    with pytest.raises(InputError, match=_names(json_path, "missing top-level key\\(s\\) 'categories'")):
        load_coco(json_path, image_dir)


def test_top_level_not_an_object(dataset):
    json_path, image_dir = dataset
    json_path.write_text("[1, 2]")
    with pytest.raises(InputError, match=_names(json_path, "top level must be a JSON object")):
        load_coco(json_path, image_dir)


@pytest.mark.parametrize(
    ("kind", "index", "key", "where"),
    [
        ("images", 1, "width", r"images\[1\] \(id 2\)"),
        ("annotations", 2, "segmentation", r"annotations\[2\] \(id 12\)"),
        ("categories", 0, "name", r"categories\[0\] \(id 1\)"),
        ("images", 0, "id", r"images\[0\]"),
    ],
)
def test_entry_missing_a_key(dataset, kind, index, key, where):
    json_path, image_dir = dataset
    _rewrite(json_path, lambda c: c[kind][index].pop(key))
    with pytest.raises(InputError, match=_names(json_path, f"{where} is missing the required key '{key}'")):
        load_coco(json_path, image_dir)


@pytest.mark.parametrize("name", ["/etc/passwd", "C:\\data\\a.png"])
def test_absolute_file_name(dataset, name):
    json_path, image_dir = dataset
    _rewrite(json_path, lambda c: c["images"][0].update(file_name=name))
    with pytest.raises(InputError, match=_names(json_path, r"images\[0\] \(id 1\) file_name .* is an absolute path")):
        load_coco(json_path, image_dir)


@pytest.mark.parametrize("name", ["../evil.png", "sub/../../evil.png", "..\\evil.png"])
def test_file_name_escaping_the_image_folder(dataset, name):
    json_path, image_dir = dataset
    (image_dir.parent / "evil.png").write_bytes((image_dir / "a.png").read_bytes())
    _rewrite(json_path, lambda c: c["images"][0].update(file_name=name))
    with pytest.raises(InputError, match=_names(json_path, "file_name .* points outside the image folder")):
        load_coco(json_path, image_dir)


def test_symlink_pointing_outside(dataset):
    json_path, image_dir = dataset
    outside = image_dir.parent / "outside.png"
    outside.write_bytes((image_dir / "a.png").read_bytes())
    os.symlink(outside, image_dir / "link.png")
    _rewrite(json_path, lambda c: c["images"][0].update(file_name="link.png"))
    with pytest.raises(InputError, match=_names(json_path, "'link.png' points outside the image folder")):
        load_coco(json_path, image_dir)


def test_missing_image(dataset):
    json_path, image_dir = dataset
    (image_dir / "sub" / "b.png").unlink()
    with pytest.raises(InputError, match=_names(image_dir / "sub" / "b.png", "missing image \\(image id 2 of")):
        load_coco(json_path, image_dir)


@pytest.mark.parametrize("cut", [None, 40])
def test_unreadable_image(dataset, cut):
    json_path, image_dir = dataset
    path = image_dir / "a.png"
    data = path.read_bytes()
    path.write_bytes(b"this is not a png" if cut is None else data[:cut])
    with pytest.raises(InputError, match=_names(path, "unreadable image \\(image id 1 of")):
        load_coco(json_path, image_dir)


def test_image_size_mismatch(dataset):
    json_path, image_dir = dataset
    _rewrite(json_path, lambda c: c["images"][0].update(width=21))
    with pytest.raises(InputError, match=_names(image_dir / "a.png", "is 20x16 .* says 21x16")):
        load_coco(json_path, image_dir)


def test_missing_image_folder(dataset):
    json_path, image_dir = dataset
    with pytest.raises(InputError, match=_names(image_dir / "nope", "image folder of .* does not exist")):
        load_coco(json_path, image_dir / "nope")


def test_unknown_image_id(dataset):
    json_path, image_dir = dataset
    _rewrite(json_path, lambda c: c["annotations"][1].update(image_id=99))
    with pytest.raises(InputError, match=_names(json_path, r"annotations\[1\] \(id 11\) points at image id 99")):
        load_coco(json_path, image_dir)


def test_unknown_category_id(dataset):
    json_path, image_dir = dataset
    _rewrite(json_path, lambda c: c["annotations"][0].update(category_id=7))
    with pytest.raises(InputError, match=_names(json_path, r"annotations\[0\] \(id 10\) has category id 7")):
        load_coco(json_path, image_dir)


def test_duplicate_image_ids(dataset):
    json_path, image_dir = dataset
    _rewrite(json_path, lambda c: c["images"][2].update(id=1))
    with pytest.raises(InputError, match=_names(json_path, r"duplicate image id 1: images\[0\] .* and images\[2\]")):
        load_coco(json_path, image_dir)


def test_duplicate_annotation_ids(dataset):
    json_path, image_dir = dataset
    _rewrite(json_path, lambda c: c["annotations"][2].update(id=10))
    with pytest.raises(InputError, match=_names(json_path, "duplicate annotation id 10")):
        load_coco(json_path, image_dir)


def test_rle_size_not_matching_the_image(dataset):
    json_path, image_dir = dataset
    _rewrite(json_path, lambda c: c["annotations"][1]["segmentation"].update(size=[12, 10]))
    with pytest.raises(InputError, match=_names(json_path, r"annotations\[1\] .* mask size \[12, 10\] does not match")):
        load_coco(json_path, image_dir)


def test_uncompressed_counts_not_covering_the_image(dataset):
    json_path, image_dir = dataset
    _rewrite(json_path, lambda c: c["annotations"][1]["segmentation"].update(counts=[41, 3, 7]))
    with pytest.raises(InputError, match=_names(json_path, "counts sum to 51, expected height\\*width = 120")):
        load_coco(json_path, image_dir)


@pytest.mark.parametrize("corrupt", [lambda s: s[:-1], lambda s: s + "5", lambda s: "~" + s, lambda s: ""])
def test_corrupt_compressed_rle(dataset, corrupt):
    json_path, image_dir = dataset
    def edit(coco: dict) -> None:
        seg = coco["annotations"][2]["segmentation"]
        seg["counts"] = corrupt(seg["counts"])

    _rewrite(json_path, edit)
    with pytest.raises(InputError, match=_names(json_path, r"annotations\[2\] \(id 12\) has a corrupt compressed RLE")):
        load_coco(json_path, image_dir)


def test_malformed_polygon(dataset):
    json_path, image_dir = dataset
    _rewrite(json_path, lambda c: c["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5]]))
    with pytest.raises(InputError, match=_names(json_path, r"segmentation\[0\] is not a polygon")):
        load_coco(json_path, image_dir)


def test_rle_parser_matches_pycocotools():
    rng = np.random.default_rng(0)
    strings, expected = [], []
    for k in range(60):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = (rng.uniform(size=(h, w, 1)) < rng.uniform()).astype(np.uint8)
        mask[:] = 0 if k % 7 == 0 else mask  # all-empty and random masks
        strings.append(mask_utils.encode(np.asfortranarray(mask))[0]["counts"])
        expected.append(h * w)
    totals, valid = rle_totals(strings)
    assert valid.all() and totals.tolist() == expected


# --- categories and the test split ---------------------------------------------------------


def test_check_same_categories():
    pool = {"categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "debris"}]}
    check_same_categories(pool, copy.deepcopy(pool), "pool.json", "test.json")
    test = {"categories": [{"id": 1, "name": "cell"}, {"id": 3, "name": "debris"}]}
    expected = r"test.json: categories differ .* only in pool.json: 2 'debris'; only in test.json: 3 'debris'"
    with pytest.raises(InputError, match=expected):
        check_same_categories(pool, test, "pool.json", "test.json")


def _many(n: int) -> dict:
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 4, "height": 4} for i in range(1, n + 1)],
        "annotations": [{"id": 100 + i, "image_id": i} for i in range(1, n + 1)],
        "categories": [{"id": 1, "name": "cell"}],
    }


def test_split_test_is_seeded_disjoint_and_complete():
    coco = _many(20)
    pool, test = split_test(coco, 0.25, seed=3)
    assert (pool, test) == split_test(coco, 0.25, seed=3)
    assert split_test(coco, 0.25, seed=4)[1] != test
    pool_ids = {img["id"] for img in pool["images"]}
    test_ids = {img["id"] for img in test["images"]}
    assert len(test_ids) == 5 and not pool_ids & test_ids and pool_ids | test_ids == set(range(1, 21))
    assert {a["image_id"] for a in test["annotations"]} == test_ids  # annotations follow their images
    assert {a["id"] for a in pool["annotations"]} == {100 + i for i in pool_ids}
    assert pool["categories"] == test["categories"] == coco["categories"]


@pytest.mark.parametrize(("fraction", "n_test"), [(0.0, 1), (1.0, 4), (0.5, 2)])
def test_split_test_keeps_an_image_on_each_side(fraction, n_test):
    pool, test = split_test(_many(5), fraction, seed=0)
    assert len(test["images"]) == n_test and len(pool["images"]) == 5 - n_test


def test_split_test_needs_two_images():
    with pytest.raises(ValueError, match="at least 2 images"):
        split_test(_many(1), 0.5, seed=0)


# --- silent hazards, refused by name ----------------------------------------------------------


def test_two_image_ids_naming_one_file_are_refused(tmp_path):
    json_path, image_dir = _write(tmp_path, _base())
    _rewrite(json_path, lambda c: c["images"].append({"id": 9, "file_name": "./sub//b.png", "width": 12, "height": 10}))
    with pytest.raises(InputError, match=_names(json_path, "image ids 2 and 9 both name the file 'sub/b.png'")):
        load_coco(json_path, image_dir)


def test_two_categories_with_one_name_are_refused(tmp_path):
    json_path, image_dir = _write(tmp_path, _base())
    _rewrite(json_path, lambda c: c["categories"].append({"id": 5, "name": "cell"}))
    with pytest.raises(InputError, match=_names(json_path, "categories 1 and 5 are both named 'cell'")):
        load_coco(json_path, image_dir)
