"""Load and validate a user's COCO instances file into the normalised form the rest of salis reads.

Structural problems (missing keys, unknown ids, paths escaping the image folder, unreadable
images) are InputErrors naming the file: they mean the dataset is wrong and guessing would
hide it. Individually unusable annotations (crowd regions, empty masks) are dropped with one
counted warning, because real datasets contain a few of them and they carry no signal.
"""

from __future__ import annotations

import json
import math
import posixpath
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from salis.errors import InputError

TOP_LEVEL_KEYS = ("images", "annotations", "categories")
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
    raw = _read_json(json_path)
    _check_top_level(raw, json_path)
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


def rle_areas(rles: list[dict]) -> np.ndarray:
    """pycocotools.mask.area for any number of RLEs.

    pycocotools 2.0.11 under numpy 2 fails on lists of more than 255 RLEs
    ("Python integer 256 out of bounds for uint8"), so call it in chunks.
    """
    chunks = [mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)]
    return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(0)


def _subset(coco: dict, image_ids: set[int]) -> dict:
    return {
        "images": [img for img in coco["images"] if img["id"] in image_ids],
        "annotations": [ann for ann in coco["annotations"] if ann["image_id"] in image_ids],
        "categories": [dict(c) for c in coco["categories"]],
    }


# --- reading and structure -------------------------------------------------------------


MAX_JSON_BYTES = 4 * 2**30  # a label export or instances file larger than this is refused unread


def _read_json(path: Path, max_bytes: int | None = None) -> Any:
    if not path.is_file():
        raise InputError(path, "no such file (expected a COCO instances JSON file)")
    limit = MAX_JSON_BYTES if max_bytes is None else max_bytes
    if path.stat().st_size > limit:
        raise InputError(path, f"is {path.stat().st_size / 2**20:.0f} MiB, above the {limit / 2**20:.0f} MiB a JSON file "
                               "may have here")
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except RecursionError:
        raise InputError(path, "not valid JSON here: nested deeper than any COCO or Label Studio file") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except UnicodeDecodeError as err:
        raise InputError(path, f"not valid JSON: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from None


def _check_top_level(raw: Any, path: Path) -> None:
    if not isinstance(raw, dict):
        raise InputError(path, f"top level must be a JSON object with keys {', '.join(TOP_LEVEL_KEYS)}")
    missing = [k for k in TOP_LEVEL_KEYS if k not in raw]
    if missing:
        raise InputError(
            path,
            f"missing top-level key(s) {', '.join(map(repr, missing))} "
            "(a COCO instances file has images, annotations and categories)",
        )
    for key in TOP_LEVEL_KEYS:
        if not isinstance(raw[key], list):
            raise InputError(path, f"top-level key {key!r} must be a list, got {type(raw[key]).__name__}")


def _entries(items: list, kind: str, required: tuple[str, ...], path: Path):
    """Yield (where, entry) after checking each entry is an object with the required keys."""
    for i, entry in enumerate(items):
        if not isinstance(entry, dict):
            raise InputError(path, f"{kind}[{i}] must be an object, got {type(entry).__name__}")
        where = f"{kind}[{i}]" + (f" (id {entry['id']!r})" if "id" in entry else "")
        for key in required:
            if key not in entry:
                raise InputError(path, f"{where} is missing the required key {key!r}")
        yield where, entry


def _int(value: Any, what: str, path: Path, positive: bool = False) -> int:
    """JSON ints, or floats holding whole numbers (some exporters write 256.0)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():
        value, ok = int(value), True
    if not ok or (positive and value <= 0):
        kind = "a positive integer" if positive else "an integer"
        raise InputError(path, f"{what} must be {kind}, got {value!r}")
    return int(value)


def _parse_categories(items: list, path: Path) -> list[dict]:
    categories: dict[int, dict] = {}
    for where, entry in _entries(items, "categories", CATEGORY_KEYS, path):
        cat_id = _int(entry["id"], f"{where} id", path)
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
    for where, entry in _entries(items, "images", IMAGE_KEYS, path):
        image_id = _int(entry["id"], f"{where} id", path)
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
            "width": _int(entry["width"], f"{where} width", path, positive=True),
            "height": _int(entry["height"], f"{where} height", path, positive=True),
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
    for where, entry in _entries(items, "annotations", ANNOTATION_KEYS, path):
        ann_id = _int(entry["id"], f"{where} id", path)
        if ann_id in seen:
            raise InputError(path, f"duplicate annotation id {ann_id}: {seen[ann_id]} and {where}")
        seen[ann_id] = where
        image_id = _int(entry["image_id"], f"{where} image_id", path)
        if image_id not in images:
            raise InputError(path, f"{where} points at image id {image_id}, which is not in 'images'")
        category_id = _int(entry["category_id"], f"{where} category_id", path)
        if category_id not in category_ids:
            raise InputError(path, f"{where} has category id {category_id}, which is not in 'categories'")
        if entry.get("iscrowd", 0):
            dropped["crowd"] += 1  # crowd regions are "ignore" areas, not instances to learn
            continue
        image = images[image_id]
        rle = _to_rle(entry["segmentation"], image["height"], image["width"], where, path)
        fields = {"id": ann_id, "image_id": image_id, "category_id": category_id}
        kept.append((where, fields, rle, entry.get("bbox")))
    _check_compressed([(where, rle) for where, _, rle, _ in kept], path)
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
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": _counts_str(rle["counts"])},
            }
        )
    return sorted(out, key=lambda a: a["id"])


def _bbox_ok(bbox: Any) -> bool:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        return False
    return all(math.isfinite(v) for v in bbox) and bbox[2] > 0 and bbox[3] > 0


def _counts_str(counts: bytes | str) -> str:
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


def _to_rle(seg: Any, height: int, width: int, where: str, path: Path) -> dict:
    """Polygons, uncompressed RLE or compressed RLE -> one compressed RLE of the image's size."""
    if isinstance(seg, list):
        return _polygons_to_rle(seg, height, width, where, path)
    if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
        raise InputError(
            path, f"{where} segmentation is neither a list of polygons nor an RLE dict with 'size' and 'counts'"
        )
    size = seg["size"]
    if not (isinstance(size, list) and len(size) == 2 and list(size) == [height, width]):
        raise InputError(
            path, f"{where} mask size {size!r} does not match its image's [height, width] [{height}, {width}]"
        )
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise InputError(path, f"{where} uncompressed RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            raise InputError(
                path, f"{where} uncompressed RLE counts sum to {sum(counts)}, expected height*width = {height * width}"
            )
        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if isinstance(counts, (str, bytes)):
        if isinstance(counts, str) and not counts.isascii():
            raise InputError(path, f"{where} has a corrupt compressed RLE mask (non-ASCII characters in counts)")
        raw = counts.encode("ascii") if isinstance(counts, str) else counts
        return {"size": [height, width], "counts": raw}  # validated in one batch by _check_compressed
    raise InputError(path, f"{where} RLE counts must be a string or a list of integers, got {type(counts).__name__}")


def _polygons_to_rle(polygons: list, height: int, width: int, where: str, path: Path) -> dict:
    usable = []
    for j, poly in enumerate(polygons):
        if not isinstance(poly, list) or len(poly) % 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly
        ):
            raise InputError(path, f"{where} segmentation[{j}] is not a polygon (a flat list of x, y numbers)")
        if not all(math.isfinite(v) for v in poly):
            raise InputError(path, f"{where} segmentation[{j}] has non-finite coordinates")
        if len(poly) >= 6:  # fewer than 3 points enclose nothing
            usable.append([float(v) for v in poly])
    if not usable:
        empty = np.zeros((height, width, 1), dtype=np.uint8, order="F")
        return mask_utils.encode(empty)[0]
    # All polygons have >= 6 numbers, so frPyObjects cannot mistake them for [x, y, w, h] boxes.
    return mask_utils.merge(mask_utils.frPyObjects(usable, height, width))


def _check_compressed(items: list[tuple[str, dict]], path: Path) -> None:
    """Reject corrupt compressed RLE strings before pycocotools decodes them unchecked."""
    if not items:
        return
    totals, valid = _rle_totals([rle["counts"] for _, rle in items])
    for (where, rle), total, ok in zip(items, totals, valid):
        expected = rle["size"][0] * rle["size"][1]
        if not ok or total != expected:
            raise InputError(
                path,
                f"{where} has a corrupt compressed RLE mask (its runs sum to {int(total)}, "
                f"expected height*width = {expected})",
            )


def _rle_totals(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Per string: the sum of its run lengths, and whether it parses to non-negative runs.

    A vectorised port of pycocotools' rleFrString (maskApi.c): 6-bit chunks offset by 48,
    bit 0x20 continues a value, bit 0x10 of the last chunk is the sign, and from the fourth
    run on each value is a delta to the run two places back. One pass for all strings keeps
    this cheap even for tens of thousands of masks.
    """
    n = len(strings)
    lengths = np.array([len(s) for s in strings], dtype=np.int64)
    chars = np.frombuffer(b"".join(strings), dtype=np.uint8).astype(np.int64) - 48
    valid = np.ones(n, dtype=bool)
    totals = np.zeros(n, dtype=np.int64)
    if chars.size == 0:
        return totals, valid & (lengths > 0)
    owner = np.repeat(np.arange(n), lengths)
    valid &= np.bincount(owner, weights=(chars < 0) | (chars > 63), minlength=n) == 0
    ends = (chars & 0x20) == 0
    last_char = np.cumsum(lengths)[lengths > 0] - 1
    valid[owner[last_char[~ends[last_char]]]] = False  # a string must end on a complete value
    ends[last_char] = True  # ... and a broken one must not spill into the next string
    starts = np.flatnonzero(np.r_[True, ends[:-1]])
    group = np.cumsum(np.r_[0, ends[:-1].astype(np.int64)])
    shift = np.arange(chars.size) - starts[group]
    too_long = shift > 6  # a 32-bit run needs at most 7 chunks
    valid[owner[too_long]] = False
    shift = np.minimum(shift, 6)
    values = np.add.reduceat((chars & 0x1F) << (5 * shift), starts)
    last = np.flatnonzero(ends)
    negative = (chars[last] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (shift[last][negative] + 1))
    # Undo the delta coding: runs 1, 3, 5, ... and runs 2, 4, 6, ... are running sums.
    value_owner = owner[starts]
    first_value = np.searchsorted(value_owner, np.arange(n))
    pos = np.arange(values.size) - first_value[value_owner]
    chain = value_owner * 3 + np.where(pos == 0, 0, np.where(pos % 2 == 1, 1, 2))
    order = np.argsort(chain, kind="stable")
    sums = np.cumsum(values[order])
    chain_sorted = chain[order]
    chain_start = np.flatnonzero(np.r_[True, chain_sorted[1:] != chain_sorted[:-1]])
    seg_index = np.cumsum(np.r_[0, (chain_sorted[1:] != chain_sorted[:-1]).astype(np.int64)])
    offsets = sums[chain_start] - values[order][chain_start]
    runs = np.empty_like(values)
    runs[order] = sums - offsets[seg_index]
    valid &= np.bincount(value_owner, weights=(runs < 0) | (runs >= 2**32), minlength=n) == 0
    totals = np.bincount(value_owner, weights=runs.astype(np.float64), minlength=n).astype(np.int64)
    return totals, valid & (lengths > 0)


def _warn_dropped(path: Path, dropped: dict[str, int]) -> None:
    total = sum(dropped.values())
    if not total:
        return
    parts = [f"{count} {DROP_REASONS[reason]}" for reason, count in dropped.items() if count]
    warnings.warn(f"{path}: dropped {total} annotation(s): {'; '.join(parts)}", UserWarning, stacklevel=3)
