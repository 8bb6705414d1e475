"""Label Studio's JSON export read as COCO of each label type: regions by type, brush RLE decoded,
and hostile exports refused by item."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from salis.annotation.label_studio_json import coco_from_label_studio, decode_brush
from salis.errors import InputError

REQUEST = {"images": [{"id": 7, "file_name": "a.png", "width": 10, "height": 8}],
           "categories": [{"id": 1, "name": "nucleus"}, {"id": 4, "name": "rod"}]}


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a mask (RGBA, every channel the mask value), as runs."""
    values = np.repeat(mask.astype(np.uint8).ravel() * 255, 4)
    bits = format(len(values), "032b") + format(7, "05b") + "".join(format(15, "04b") for _ in range(4))
    i = 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i] and j - i < 65536:
            j += 1
        bits += "1" + "00" + format(j - i - 1, "016b") + format(int(values[i]), "08b")
        i = j
    bits += "0" * (-len(bits) % 8)
    return [int(bits[k : k + 8], 2) for k in range(0, len(bits), 8)]


def task(*results, cancelled=False, salis_id=7):
    return {"id": 3, "data": {"image": "/data/local-files/?d=images/a.png", "salis_image_id": salis_id},
            "annotations": [{"was_cancelled": cancelled, "result": list(results)}]}


def region(kind, value, label="nucleus"):
    return {"type": kind, "from_name": "label", "to_name": "image", "original_width": 10, "original_height": 8,
            "value": dict(value, **{kind: [label]})}


def test_brush_rle_round_trips_through_the_decoder():
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:5, 3:9] = True
    values = decode_brush(brush_rle(mask))
    assert values.reshape(8, 10, 4)[:, :, 3].astype(bool).tolist() == mask.tolist()


def test_each_region_type_becomes_its_coco_geometry():
    mask = np.zeros((8, 10), dtype=bool)
    mask[1:3, 1:4] = True
    coco = coco_from_label_studio([task(
        region("polygonlabels", {"points": [[10, 25], [50, 25], [50, 75], [10, 75]]}),
        region("brushlabels", {"format": "rle", "rle": brush_rle(mask)}, label="rod"),
        region("rectanglelabels", {"x": 10, "y": 25, "width": 40, "height": 50, "rotation": 0}),
        region("keypointlabels", {"x": 55, "y": 50, "width": 0.5}),
    )], _path(), REQUEST)
    assert coco["images"] == [{"id": 1, "file_name": "/data/local-files/?d=images/a.png", "width": 10, "height": 8}]
    polygon, brush, box, point = coco["annotations"]
    assert polygon["segmentation"] == [[1.0, 2.0, 5.0, 2.0, 5.0, 6.0, 1.0, 6.0]] and polygon["category_id"] == 1
    assert brush["category_id"] == 4
    assert mask_utils.decode({"size": [8, 10], "counts": brush["segmentation"]["counts"].encode()}).astype(bool).tolist() \
        == mask.tolist()
    assert box["bbox"] == pytest.approx([1.0, 2.0, 4.0, 4.0])
    assert point["point"] == pytest.approx([5.5, 4.0])


def test_choices_and_numbers_become_counts_and_cancelled_work_is_unlabeled():
    counts = {"type": "number", "from_name": "count_4", "to_name": "image", "value": {"number": 3}}
    present = {"type": "choices", "from_name": "present", "to_name": "image", "value": {"choices": ["rod"]}}
    coco = coco_from_label_studio([task(present, counts)], _path(), REQUEST)
    assert coco["images"][0]["counts"] == {"rod": 3} and coco["annotations"] == []
    coco = coco_from_label_studio([task(present, counts, cancelled=True)], _path(), REQUEST)
    assert coco["images"] == []  # nothing submitted: left out, i.e. unlabeled
    image_request = dict(REQUEST, info={"salis": {"label_type": "image"}})
    coco = coco_from_label_studio([task()], _path(), image_request)
    assert coco["images"][0]["counts"] == {}  # submitted with nothing present: every count 0
    with pytest.raises(InputError, match="marks 'rod' present but gives no count"):
        coco_from_label_studio([task(present)], _path(), REQUEST)


def test_hostile_regions_are_refused_by_item():
    wrong_size = np.zeros((4, 4), dtype=bool)
    with pytest.raises(InputError, match="task 3 result 0 \\(brushlabels\\) brush mask holds 16 pixels but its image is 10x8"):
        coco_from_label_studio([task(region("brushlabels", {"format": "rle", "rle": brush_rle(wrong_size)}))],
                               _path(), REQUEST)
    with pytest.raises(InputError, match="corrupt brush mask: the brush RLE ends early"):  # declares 320 values
        coco_from_label_studio([task(region("brushlabels", {"format": "rle", "rle": [0, 0, 1, 64, 7]}))], _path(), REQUEST)
    with pytest.raises(InputError, match="is rotated"):
        coco_from_label_studio([task(region("rectanglelabels", {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 30}))],
                               _path(), REQUEST)
    with pytest.raises(InputError, match=r"result 0 \(keypointlabels\): keypointlabels: List should have at most 1 item"):
        two = region("keypointlabels", {"x": 1, "y": 1})
        two["value"]["keypointlabels"] = ["nucleus", "rod"]
        coco_from_label_studio([task(two)], _path(), REQUEST)
    # an unknown label survives as a category of its own, for the import to refuse by name
    coco = coco_from_label_studio([task(region("keypointlabels", {"x": 1, "y": 1}, label="ghost"))], _path(), REQUEST)
    assert {c["name"] for c in coco["categories"]} == {"nucleus", "rod", "ghost"}


def _path():
    from pathlib import Path

    return Path("export.json")
