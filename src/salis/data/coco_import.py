"""Load and validate a user's COCO instances file into the normalised form the rest of salis reads.

Structural problems (missing keys, unknown ids, paths escaping the image folder, unreadable
images) are InputErrors naming the file: they mean the dataset is wrong and guessing would
hide it. Individually unusable annotations (crowd regions, empty masks) are dropped with one
counted warning, because real datasets contain a few of them and they carry no signal.
"""

from __future__ import annotations

import math
import posixpath
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from salis.data.coco_checks import (
    as_int, check_compressed, check_top_level, counts_str, entries, read_json, rle_areas, to_rle,
)
from salis.errors import InputError

IMAGE_KEYS = ("id", "file_name", "width", "height")
ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation")
CATEGORY_KEYS = ("id", "name")
DROP_REASONS = {
    "crowd": "crowd region(s) (iscrowd=1)",
    "zero_area": "with an empty mask",
    "bad_bbox": "with a degenerate or non-finite bbox and an empty mask to recompute it from",
}


def load_coco(json_path: Path, image_dir: Path, check_images: bool = True) -> tuple[dict, dict]:
    """Return (normalised COCO dict, counts of dropped annotations by reason)."""
    json_path, image_dir = Path(json_path), Path(image_dir)
    raw = read_json(json_path)
    check_top_level(raw, json_path)
    categories = _parse_categories(raw["categories"], json_path)
    images = _parse_images(raw["images"], json_path, image_dir)
    if check_images:
        if not image_dir.is_dir():
            raise InputError(image_dir, f"image folder of {json_path} does not exist")
        for image in images:
            _check_image(image_dir / image["file_name"], image, json_path)
    annotations, dropped = _parse_annotations(
        raw["annotations"], json_path, {img["id"]: img for img in images}, {c["id"] for c in categories}
    )
    _warn_dropped(json_path, dropped)
    return {"images": images, "annotations": annotations, "categories": categories}, dropped


def check_same_categories(pool: dict, test: dict, pool_path: str | Path, test_path: str | Path) -> None:
    """Pool and test must share one label space, or the test metric means nothing."""
    pool_cats = {(c["id"], c["name"]) for c in pool["categories"]}
    test_cats = {(c["id"], c["name"]) for c in test["categories"]}
    if pool_cats == test_cats:
        return
    only_pool = ", ".join(f"{i} {n!r}" for i, n in sorted(pool_cats - test_cats)) or "none"
    only_test = ", ".join(f"{i} {n!r}" for i, n in sorted(test_cats - pool_cats)) or "none"
    raise InputError(
        test_path,
        f"categories differ from those of {pool_path}: only in {pool_path}: {only_pool}; "
        f"only in {test_path}: {only_test}",
    )


def split_test(coco: dict, fraction: float, seed: int) -> tuple[dict, dict]:
    """Seeded split by image into (pool, test); each side gets at least one image, ids kept."""
    ids = sorted(img["id"] for img in coco["images"])
    if len(ids) < 2:
        raise ValueError(f"need at least 2 images to split off a test set, got {len(ids)}")
    n_test = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    rng = np.random.default_rng(seed % 2**64)
    test_ids = {int(i) for i in rng.choice(np.array(ids, dtype=np.int64), size=n_test, replace=False)}
    pool = _subset(coco, set(ids) - test_ids)
    test = _subset(coco, test_ids)
    return pool, test


def _subset(coco: dict, image_ids: set[int]) -> dict:
    return {
        "images": [img for img in coco["images"] if img["id"] in image_ids],
        "annotations": [ann for ann in coco["annotations"] if ann["image_id"] in image_ids],
        "categories": [dict(c) for c in coco["categories"]],
    }


# --- reading and structure -------------------------------------------------------------


def _parse_categories(items: list, path: Path) -> list[dict]:
    categories: dict[int, dict] = {}
    for where, entry in entries(items, "categories", CATEGORY_KEYS, path):
        cat_id = as_int(entry["id"], f"{where} id", path)
        if not isinstance(entry["name"], str):
            raise InputError(path, f"{where} name must be a string, got {entry['name']!r}")
        if cat_id in categories:
            raise InputError(path, f"duplicate category id {cat_id} ({where})")
        twin = next((c["id"] for c in categories.values() if c["name"] == entry["name"]), None)
        if twin is not None:
            raise InputError(
                path, f"categories {twin} and {cat_id} are both named {entry['name']!r}: label imports match "
                "categories by name, so each name must be unique (merge them or rename one)"
            )
        categories[cat_id] = {"id": cat_id, "name": entry["name"]}
    if not categories:
        raise InputError(path, "'categories' is empty: at least one category is needed")
    return [categories[k] for k in sorted(categories)]


def _parse_images(items: list, path: Path, image_dir: Path) -> list[dict]:
    root = image_dir.resolve()
    images: dict[int, dict] = {}
    first_seen: dict[int, str] = {}
    by_file: dict[str, int] = {}
    for where, entry in entries(items, "images", IMAGE_KEYS, path):
        image_id = as_int(entry["id"], f"{where} id", path)
        if image_id in images:
            raise InputError(path, f"duplicate image id {image_id}: {first_seen[image_id]} and {where}")
        first_seen[image_id] = where
        file_name = _safe_file_name(entry["file_name"], where, path, image_dir, root)
        if file_name in by_file:
            raise InputError(
                path, f"image ids {by_file[file_name]} and {image_id} both name the file {file_name!r}: one image "
                "listed twice could land in both the pool and the test split; keep one entry"
            )
        by_file[file_name] = image_id
        images[image_id] = {
            "id": image_id,
            "file_name": file_name,
            "width": as_int(entry["width"], f"{where} width", path, positive=True),
            "height": as_int(entry["height"], f"{where} height", path, positive=True),
        }
    return [images[k] for k in sorted(images)]


def check_no_shared_files(pool: dict, pool_root: Path, test: dict, test_root: Path, test_path: str | Path) -> None:
    """The same image file in the pool and the test split would leak the test set into training."""
    pool_files = {(Path(pool_root) / img["file_name"]).resolve(): img["id"] for img in pool["images"]}
    shared = [(img["file_name"], pool_files[f], img["id"]) for img in test["images"]
              if (f := (Path(test_root) / img["file_name"]).resolve()) in pool_files]
    if shared:
        shown = ", ".join(f"{name} (pool id {a}, test id {b})" for name, a, b in shared[:5])
        raise InputError(test_path, f"{len(shared)} test image(s) are also pool images: {shown}"
                         f"{' ...' if len(shared) > 5 else ''}; the test split must hold other images")


def renumber_images(coco: dict, start: int) -> dict:
    """coco with its images numbered start, start+1, ... (in id order); each keeps its own id as
    `source_id`, and annotations follow their image."""
    new_ids = {img["id"]: start + i for i, img in enumerate(sorted(coco["images"], key=lambda im: im["id"]))}
    return {
        **coco,
        "images": [dict(img, id=new_ids[img["id"]], source_id=img["id"]) for img in coco["images"]],
        "annotations": [dict(a, image_id=new_ids[a["image_id"]]) for a in coco["annotations"]],
    }


def _safe_file_name(name: Any, where: str, path: Path, image_dir: Path, root: Path) -> str:
    """A posix path relative to image_dir that provably stays inside it (after symlinks)."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(path, f"{where} file_name must be a non-empty string, got {name!r}")
    posix = name.replace("\\", "/")  # files exported on Windows
    if PurePosixPath(posix).is_absolute() or PureWindowsPath(name).drive:
        raise InputError(
            path, f"{where} file_name {name!r} is an absolute path; it must be relative to the image folder {image_dir}"
        )
    norm = posixpath.normpath(posix)
    if norm in (".", ""):
        raise InputError(path, f"{where} file_name {name!r} names the image folder, not an image")
    escapes = norm == ".." or norm.startswith("../")
    # resolve() follows symlinks, so a link inside the folder pointing outside it is caught too.
    if escapes or not (root / norm).resolve().is_relative_to(root):
        raise InputError(path, f"{where} file_name {name!r} points outside the image folder {image_dir}")
    return norm


def _check_image(image_path: Path, image: dict, json_path: Path) -> None:
    listed = f"image id {image['id']} of {json_path}"
    if not image_path.is_file():
        raise InputError(image_path, f"missing image ({listed})")
    try:
        with Image.open(image_path) as im:
            size = im.size
            im.verify()  # reads the whole file and checks its structure and checksums
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(image_path, f"unreadable image ({listed}): {err}") from None
    if size != (image["width"], image["height"]):
        raise InputError(
            image_path,
            f"image is {size[0]}x{size[1]} (width x height) but {json_path} says "
            f"{image['width']}x{image['height']} ({listed})",
        )


# --- annotations -------------------------------------------------------------------------


def _parse_annotations(
    items: list, path: Path, images: dict[int, dict], category_ids: set[int]
) -> tuple[list[dict], dict[str, int]]:
    dropped = {reason: 0 for reason in DROP_REASONS}
    kept: list[tuple[str, dict, dict, Any]] = []  # (where, normalised fields, rle, given bbox)
    seen: dict[int, str] = {}
    for where, entry in entries(items, "annotations", ANNOTATION_KEYS, path):
        ann_id = as_int(entry["id"], f"{where} id", path)
        if ann_id in seen:
            raise InputError(path, f"duplicate annotation id {ann_id}: {seen[ann_id]} and {where}")
        seen[ann_id] = where
        image_id = as_int(entry["image_id"], f"{where} image_id", path)
        if image_id not in images:
            raise InputError(path, f"{where} points at image id {image_id}, which is not in 'images'")
        category_id = as_int(entry["category_id"], f"{where} category_id", path)
        if category_id not in category_ids:
            raise InputError(path, f"{where} has category id {category_id}, which is not in 'categories'")
        if entry.get("iscrowd", 0):
            dropped["crowd"] += 1  # crowd regions are "ignore" areas, not instances to learn
            continue
        image = images[image_id]
        rle = to_rle(entry["segmentation"], image["height"], image["width"], where, path)
        fields = {"id": ann_id, "image_id": image_id, "category_id": category_id}
        kept.append((where, fields, rle, entry.get("bbox")))
    check_compressed([(where, rle) for where, _, rle, _ in kept], path)
    return _finish(kept, dropped), dropped


def _finish(kept: list[tuple[str, dict, dict, Any]], dropped: dict[str, int]) -> list[dict]:
    """Attach mask-derived area and bbox; drop empty masks (batched pycocotools calls)."""
    if not kept:
        return []
    rles = [rle for _, _, rle, _ in kept]
    areas = rle_areas(rles)
    boxes = mask_utils.toBbox(rles)
    out = []
    for (_, fields, rle, given), area, box in zip(kept, areas, boxes):
        if area <= 0:
            dropped["zero_area" if given is None or _bbox_ok(given) else "bad_bbox"] += 1
            continue
        # The box is always recomputed from the mask, never taken from the file: a degenerate
        # or NaN bbox is repaired whenever the mask is fine, and the model itself trains on
        # mask-derived boxes, so the two always agree.
        out.append(
            fields
            | {
                "bbox": [float(v) for v in box],
                "area": float(area),
                "iscrowd": 0,
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": counts_str(rle["counts"])},
            }
        )
    return sorted(out, key=lambda a: a["id"])


def _bbox_ok(bbox: Any) -> bool:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        return False
    return all(math.isfinite(v) for v in bbox) and bbox[2] > 0 and bbox[3] > 0


def _warn_dropped(path: Path, dropped: dict[str, int]) -> None:
    total = sum(dropped.values())
    if not total:
        return
    parts = [f"{count} {DROP_REASONS[reason]}" for reason, count in dropped.items() if count]
    warnings.warn(f"{path}: dropped {total} annotation(s): {'; '.join(parts)}", UserWarning, stacklevel=3)
