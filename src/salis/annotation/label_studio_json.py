"""Label Studio's JSON export (a list of tasks) as the COCO file of one label type, so it goes
through the same validation as any COCO export.

Each task's last annotation that was not cancelled counts; a task without one is left out (an
image left unlabeled, not one "with no object"). Regions are read by type, with coordinates in percent of the image:
polygonlabels -> polygon segmentation, brushlabels -> compressed RLE (Label Studio's own brush
RLE decoded, see decode_brush), rectanglelabels -> bbox, keypointlabels -> a point,
choices + number (the image-level config: Choices "present", Numbers "count_<category id>") ->
the image's `counts`. A region of another type than the batch asked for is kept as what it is,
so the validation can refuse it by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from salis.annotation.kinds import DEFAULT_KIND, label_kinds
from salis.annotation.kinds.base import COUNT_PREFIX
from salis.annotation.label_studio_schema import (
    BrushValue,
    ChoicesValue,
    NumberValue,
    PolygonValue,
    RectangleValue,
    parse_result,
)
from salis.errors import InputError

MASK_TYPES = {"polygonlabels", "brushlabels"}


class BrushSizeError(ValueError):
    """A brush RLE declaring another length than its image's."""

    def __init__(self, declared: int) -> None:
        super().__init__(f"declares {declared} values")
        self.declared = declared


class _Bits:
    """Big-endian bit reader over bytes (Label Studio's brush RLE, after thi.ng/rle-pack)."""

    def __init__(self, data: bytes) -> None:
        self.bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        self.i = 0

    def read(self, n: int) -> int:
        if self.i + n > len(self.bits):
            raise ValueError("the brush RLE ends early")
        chunk = self.bits[self.i : self.i + n]
        self.i += n
        return int("".join(map(str, chunk)), 2) if n else 0


def decode_brush(rle: list[int], expected: int | None = None) -> np.ndarray:
    """Label Studio's brush RLE (a list of byte values) -> the flat RGBA values it encodes; a
    declared length other than `expected` is refused before anything is allocated."""
    bits = _Bits(bytes(int(v) & 0xFF for v in rle))
    num = bits.read(32)
    if expected is not None and num != expected:
        raise BrushSizeError(num)
    word = bits.read(5) + 1
    sizes = [bits.read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8)
    i = 0
    while i < num:
        repeat = bits.read(1)
        j = i + 1 + bits.read(sizes[bits.read(2)])
        if j > num:
            raise ValueError("the brush RLE runs past its declared length")
        if repeat:
            out[i:j] = bits.read(word)
        else:
            for k in range(i, j):
                out[k] = bits.read(word)
        i = j
    return out


def brush_mask(rle: Any, height: int, width: int, where: str, path: Path) -> np.ndarray:
    """A brush region's mask (its alpha channel), refused by name when it is not H x W."""
    try:
        values = decode_brush(rle, height * width * 4)
    except BrushSizeError as err:
        raise InputError(
            path, f"{where} brush mask holds {err.declared // 4} pixels but its image is {width}x{height} "
            f"({height * width} pixels)"
        ) from None
    except (ValueError, TypeError) as err:
        raise InputError(path, f"{where} has a corrupt brush mask: {err}") from None
    return values.reshape(height, width, 4)[:, :, 3] > 0


def _image_name(task: dict) -> str:
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    return str(data.get("file_name") or data.get("image") or "")


def _final_annotation(task: dict) -> dict | None:
    kept = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    return kept[-1] if kept else None


def coco_from_label_studio(tasks: list, path: Path, request: dict) -> dict:
    """The COCO file (images, annotations, categories by the request's names) of a task list."""
    by_name = {str(c["name"]): int(c["id"]) for c in request["categories"]}
    requested = {int(img["id"]): img for img in request["images"]}
    info = request.get("info") if isinstance(request.get("info"), dict) else {}
    asked = info.get("salis", {}).get("label_type", DEFAULT_KIND) if isinstance(info.get("salis"), dict) else DEFAULT_KIND
    image_level = any(k.image_level and k.name == asked for k in label_kinds())
    images, annotations = [], []
    for t, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise InputError(path, f"task {t} must be an object, got {type(task).__name__}")
        where = f"task {task.get('id', t)!r}"
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        salis_id = data.get("salis_image_id")
        size = requested.get(int(salis_id)) if isinstance(salis_id, int) else None
        image = {"id": t + 1, "file_name": _image_name(task)}
        final = _final_annotation(task)
        results = final.get("result", []) if final else []
        if not isinstance(results, list):
            raise InputError(path, f"{where}: its annotation's result must be a list")
        parsed = [parse_result(r, f"{where} result {n} ({r.get('type') if isinstance(r, dict) else '?'})", path)
                  for n, r in enumerate(results)]
        widths = {r.original_width for r, _ in parsed if r.original_width}
        heights = {r.original_height for r, _ in parsed if r.original_height}
        width = size["width"] if size else (widths.pop() if len(widths) == 1 else None)
        height = size["height"] if size else (heights.pop() if len(heights) == 1 else None)
        if width is None or height is None:
            raise InputError(path, f"{where}: cannot tell the image's size (no salis_image_id, no original_width)")
        image.update(width=width, height=height)
        if final is None:  # nobody submitted it: not an image "with no object", an unlabeled one
            continue
        counts: dict[str, Any] = {}
        present: set[str] = set()
        for r, (result, value) in enumerate(parsed):
            kind = result.type
            item = f"{where} result {r} ({kind})"
            if isinstance(value, ChoicesValue):
                present.update(value.choices)
                continue
            if isinstance(value, NumberValue):
                name = result.from_name
                category = name[len(COUNT_PREFIX):] if name.startswith(COUNT_PREFIX) else ""
                names = {str(i): n for n, i in by_name.items()}
                if category not in names:
                    raise InputError(path, f"{item}: {name!r} is no category count (count_<category id>)")
                counts[names[category]] = value.number
                continue
            if value is None:
                raise InputError(path, f"{item}: salis reads polygons, brushes, rectangles, keypoints, choices and numbers")
            label = getattr(value, str(kind))[0]
            ann: dict[str, Any] = {"id": len(annotations) + 1, "image_id": image["id"], "category_name": label}
            if isinstance(value, PolygonValue):
                ann["segmentation"] = [[v * (width if k % 2 == 0 else height) / 100.0
                                        for xy in value.points for k, v in enumerate(xy)]]
            elif isinstance(value, BrushValue):
                mask = brush_mask(value.rle, height, width, item, path)
                encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                ann["segmentation"] = {"size": [height, width], "counts": encoded["counts"].decode("ascii")}
            elif isinstance(value, RectangleValue):
                if value.rotation != 0:
                    raise InputError(path, f"{item} is rotated; boxes must be axis-aligned")
                ann["bbox"] = [value.x * width / 100, value.y * height / 100,
                               value.width * width / 100, value.height * height / 100]
            else:
                ann["point"] = [value.x * width / 100, value.y * height / 100]
            annotations.append(ann)
        uncounted = sorted(present - set(counts))
        if uncounted:
            raise InputError(path, f"{where} marks {', '.join(map(repr, uncounted))} present but gives no count")
        if counts or present or any(r.type in ("choices", "number") for r, _ in parsed) or \
                (not results and image_level):
            image["counts"] = counts  # an image-level label submitted with nothing present: all counts 0
        # seconds the annotator spent on the task (validated by the import); null when Label Studio
        # timed nothing (annotations posted through its API)
        if final.get("lead_time") is not None:
            image["lead_time"] = final["lead_time"]
        images.append(image)
    names = sorted(by_name, key=by_name.get)
    categories = [{"id": by_name[n], "name": n} for n in names]
    unknown = sorted({a["category_name"] for a in annotations} - set(by_name))
    for n in unknown:
        categories.append({"id": max(by_name.values(), default=0) + 1 + unknown.index(n), "name": n})
    ids = {c["name"]: c["id"] for c in categories}
    for ann in annotations:
        ann["category_id"] = ids[ann.pop("category_name")]
    return {"images": images, "annotations": annotations, "categories": categories}
