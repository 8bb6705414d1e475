import json

import pytest

from salis.artifacts.atomic import write_json
from salis.errors import InputError, SalisError
from salis.loop.labels import annotations_by_image, empty_store, extend_store, human_batch, read_store

CATS = [{"id": 1, "name": "nucleus"}]


def ann(image_id: int) -> dict:
    return {"id": 99, "image_id": image_id, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1.0,
            "iscrowd": 0, "segmentation": {"size": [4, 4], "counts": "04"}}


def test_store_grows_and_never_loses_labels():
    first = extend_store(empty_store(CATS), [{"id": 1}, {"id": 2}], {1: [ann(1), ann(1)], 2: []})
    second = extend_store(first, [{"id": 3}, {"id": 1}], {3: [ann(3)], 1: [ann(1)]})  # 1 is not re-added
    assert [im["id"] for im in second["images"]] == [1, 2, 3]
    assert [a["id"] for a in second["annotations"]] == [1, 2, 3]
    by_image = annotations_by_image(second)
    assert {k: len(v) for k, v in by_image.items()} == {1: 2, 2: 0, 3: 1}


def write_labels(path, image_ids, returned=(), category=1):
    store = extend_store(empty_store(CATS), [{"id": i} for i in image_ids], {i: [dict(ann(i), category_id=category)] for i in image_ids})
    write_json(path, store | {"partial_unlabeled": list(returned), "cycle": 0})


def test_human_batch_reads_labels_and_returned_images(tmp_path):
    path = tmp_path / "cycle_0.json"
    write_labels(path, [5, 6], returned=[7])
    batch = human_batch({"mask": path}, [5, 6, 7], ["mask"] * 3, {1})
    assert sorted(batch.annotations) == [5, 6] and batch.returned == [7]
    assert batch.label_type(5) == "mask" and batch.instances(5) == 1


def test_human_batch_reads_one_file_per_label_type(tmp_path):
    masks, counts = tmp_path / "cycle_0.json", tmp_path / "cycle_0.image.json"
    write_labels(masks, [5])
    store = extend_store(empty_store(CATS), [{"id": 6, "label_type": "image", "counts": [{"category_id": 1, "count": 4}]}], {6: []})
    write_json(counts, store | {"partial_unlabeled": [], "label_type": "image"})
    batch = human_batch({"mask": masks, "image": counts}, [5, 6], ["mask", "image"], {1})
    assert sorted(batch.annotations) == [5, 6]
    assert (batch.label_type(5), batch.label_type(6)) == ("mask", "image")
    assert batch.instances(6) == 4  # the count, not the (absent) annotations
    with pytest.raises(InputError, match="holds mask labels but the batch asked for image labels"):
        human_batch({"mask": masks, "image": masks}, [5, 6], ["mask", "image"], {1})


def test_human_batch_refuses_unrequested_images_unknown_categories_and_gaps(tmp_path):
    path = tmp_path / "cycle_0.json"
    write_labels(path, [5, 8])
    with pytest.raises(InputError, match="not requested: \\[8\\]"):
        human_batch({"mask": path}, [5, 6], ["mask"] * 2, {1})
    write_labels(path, [5], category=4)
    with pytest.raises(InputError, match="unknown category ids \\[4\\]"):
        human_batch({"mask": path}, [5], ["mask"], {1})
    write_labels(path, [5])
    with pytest.raises(SalisError, match="neither labeled nor returned: \\[6\\]"):
        human_batch({"mask": path}, [5, 6], ["mask"] * 2, {1})


def test_read_store_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing label store"):
        read_store(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(InputError, match="bad.json: not valid JSON"):
        read_store(bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="lacks a list under 'annotations'"):
        read_store(bad)
