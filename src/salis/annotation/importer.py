"""Bring human labels back: read a CVAT or Label Studio COCO export, validate it against the
request batch, and write the labels that the next cycle trains on.

What the two tools write, and how it is handled:
- Category ids differ (CVAT counts from 1, Label Studio from 0 unless the config sets
  category="..."), so categories are matched by NAME to the project's.
- Image ids are the tool's own, so images are matched by file name: the exact relative path,
  else a path ending in it, else the base name. Label Studio writes upload paths such as
  "/data/upload/3/1a2b3c4d-syn_000012.png" or "images/1a2b3c4d-syn_000012.png" (an 8-hex-digit
  upload prefix) and local-file URLs such as "/data/local-files/?d=images/syn_000012.png";
  the URL part and the prefix are stripped when the plain name does not match.
- CVAT exports brush/mask shapes as iscrowd=1 with uncompressed RLE counts; here every
  annotation is an instance, crowd flag or not (annotators draw instances, not crowd regions).
- CVAT lists every image of the task, labeled or not; Label Studio leaves out images without
  annotations. So an image the export lists with no annotation counts as unlabeled, which
  means the same in both tools (allow_empty_images=True accepts such images as "no object").

- Label Studio's JSON export (a task list) is read too, for every label type
  (salis.annotation.label_studio_json turns it into the COCO file of that type).
- Weak label types (the batch's request.<type>.json says which): boxes are bbox without a
  segmentation; points are one keypoint [x, y, v] (COCO keypoints) or a "point": [x, y] per
  annotation; image-level labels are no annotations but each image's "counts": {category name:
  number of instances} (0 or absent = the category is not there). An export holding another type
  than the batch asked for (masks for a point batch, boxes for a mask batch) is refused by item.

Every problem is an InputError naming the export file, raised before anything is written.
"""

from __future__ import annotations

import math
import posixpath
import re
import shutil
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pycocotools import mask as mask_utils

from salis.artifacts.atomic import atomic_path, write_json
from salis.data.coco_import import (
    _check_compressed,
    _check_top_level,
    _counts_str,
    _entries,
    _int,
    _read_json,
    _to_rle,
    rle_areas,
)
from salis.annotation.label_studio_json import coco_from_label_studio
from salis.annotation.label_studio_schema import MAX_COUNT
from salis.errors import InputError

POLYGON_SLACK_PX = 1.0  # vertices this far outside the image are clipped, farther ones refused
UPLOAD_PREFIX = re.compile(r"^[0-9a-fA-F]{8}-")
MAX_LISTED = 5


def read_label_export(
    path: Path, request: dict, allow_empty_images: bool = False, label_type: str = "mask"
) -> tuple[dict, list[int]]:
    """Validate a COCO export against the request; return (normalised COCO, unlabeled image ids).

    The normalised COCO uses the requested pool image ids and the project's category ids,
    compressed RLE masks with mask-derived bbox and area, annotation ids 1..N, and
    "clipped_vertices" (polygon vertices within 1 px outside the image, moved onto its border).
    The unlabeled ids are requested images the export leaves without annotations, in
    request order; the caller decides whether that is allowed (import_labels' partial).
    """
    path = Path(path)
    raw = _read_json(path)
    if isinstance(raw, list):  # Label Studio's JSON export: a list of tasks
        raw = coco_from_label_studio(raw, path, request)
    _check_top_level(raw, path)
    requested = {int(img["id"]): img for img in request["images"]}
    project_ids = {str(c["name"]): int(c["id"]) for c in request["categories"]}
    export_cats = _export_categories(raw["categories"], path)
    matched = _match_images(raw["images"], requested, path)
    if label_type != "mask":
        return _read_weak_export(raw, path, request, matched, export_cats, project_ids, allow_empty_images, label_type)
    for where, entry in _entries(raw["annotations"], "annotations", (), path):
        if "segmentation" not in entry and _annotation_type(entry) != "mask":
            raise InputError(path, f"{where} holds {_GEOMETRY_OF[_annotation_type(entry)]}, but this batch asked for "
                                   "masks (segmentation)")
    per_image, clipped = _read_annotations(raw["annotations"], matched, requested, export_cats, project_ids, path)
    listed = set(matched.values())
    labeled = {i for i in listed if per_image[i] or allow_empty_images}
    unlabeled = [i for i in requested if i not in labeled]
    if not labeled:
        raise InputError(path, f"none of the {len(requested)} requested images is labeled in this export")
    if clipped:
        warnings.warn(
            f"{path}: clipped {clipped} polygon vertex/vertices lying up to {POLYGON_SLACK_PX:g} px "
            "outside their image onto the image border",
            UserWarning,
            stacklevel=2,
        )
    coco = _normalised(requested, labeled, per_image, request["categories"])
    coco["clipped_vertices"] = clipped
    return coco, unlabeled


def import_labels(
    export_path: Path,
    request_path: Path,
    labels_path: Path,
    replace: bool = False,
    partial: bool = False,
    allow_empty_images: bool = False,
) -> dict:
    """Validate export_path against the request and write labels_path; refuse rather than overwrite.

    A labels_path that exists is refused unless replace; with replace its bytes are first
    copied to labels_path.with_suffix(".json.bak-<n>") (the first unused n), and only then is
    the new file renamed over it, so the old labels are never lost and never half-replaced.
    Requested images left unlabeled are refused unless partial; then they are recorded in
    "partial_unlabeled" and go back to the pool.
    """
    export_path, request_path, labels_path = Path(export_path), Path(request_path), Path(labels_path)
    request = _read_request(request_path)
    cycle = _request_cycle(request)
    label_type = _request_label_type(request)
    if labels_path.exists() and not replace:
        raise InputError(
            labels_path,
            f"labels for cycle {cycle} were already imported; pass --replace to replace them "
            "(the current file is kept as a backup)",
        )
    coco, unlabeled = read_label_export(export_path, request, allow_empty_images=allow_empty_images,
                                        label_type=label_type)
    if unlabeled and not partial:
        raise InputError(
            export_path,
            f"{len(unlabeled)} of the {len(request['images'])} requested images are not labeled "
            f"({_names(request, unlabeled)}); label them, or pass --partial to send them back to the pool",
        )
    labels = coco | {"cycle": cycle, "partial_unlabeled": unlabeled, "source_file": str(export_path)}
    if label_type != "mask":
        labels["label_type"] = label_type
    backup = _backup(labels_path) if labels_path.exists() else None
    write_json(labels_path, labels)
    return {
        "cycle": cycle,
        "labels_path": str(labels_path),
        "label_type": label_type,
        "images_labeled": len(coco["images"]),
        "instances": len(coco["annotations"]) if label_type != "image" else
        sum(int(c["count"]) for im in coco["images"] for c in im["counts"]),
        "partial_unlabeled": unlabeled,
        "clipped_vertices": coco["clipped_vertices"],
        "backup": None if backup is None else str(backup),
        "source_file": str(export_path),
    }


# --- request -------------------------------------------------------------------------------


def _read_request(path: Path) -> dict:
    raw = _read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list) or not isinstance(
        raw.get("categories"), list
    ):
        raise InputError(path, "not a salis request batch (expected a COCO file with images and categories)")
    if not raw["images"]:
        raise InputError(path, "the request batch lists no image")
    return raw


def _request_cycle(request: dict) -> int | None:
    """The cycle the batch was written for (info.salis.loop.cycle); None for a hand-made request."""
    info = request.get("info")
    salis = info.get("salis") if isinstance(info, dict) else None
    return salis.get("cycle") if isinstance(salis, dict) else None


def _request_label_type(request: dict) -> str:
    """What the batch asked for (info.salis.label_type); masks for batches before label types."""
    info = request.get("info")
    salis = info.get("salis") if isinstance(info, dict) else None
    return str(salis.get("label_type", "mask")) if isinstance(salis, dict) else "mask"


def _names(request: dict, ids: list[int]) -> str:
    by_id = {int(img["id"]): img["file_name"] for img in request["images"]}
    shown = ", ".join(by_id[i] for i in ids[:MAX_LISTED])
    return shown + (f" and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else "")


def _backup(labels_path: Path) -> Path:
    n = 1
    while labels_path.with_suffix(f".json.bak-{n}").exists():
        n += 1
    backup = labels_path.with_suffix(f".json.bak-{n}")
    with atomic_path(backup) as tmp:
        shutil.copyfile(labels_path, tmp)
    return backup


# --- categories and images -----------------------------------------------------------------


def _export_categories(items: list, path: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    for where, entry in _entries(items, "categories", ("id", "name"), path):
        cat_id = _int(entry["id"], f"{where} id", path)
        if not isinstance(entry["name"], str):
            raise InputError(path, f"{where} name must be a string, got {entry['name']!r}")
        if cat_id in names:
            raise InputError(path, f"duplicate category id {cat_id} ({where})")
        names[cat_id] = entry["name"]
    return names


def _match_images(items: list, requested: dict[int, dict], path: Path) -> dict[int, int]:
    """Export image id -> requested pool image id; refuse unrequested, ambiguous or repeated images."""
    by_path = {posixpath.normpath(img["file_name"]): i for i, img in requested.items()}
    by_base: dict[str, list[int]] = {}
    for i, img in requested.items():
        by_base.setdefault(posixpath.basename(img["file_name"]), []).append(i)
    matched: dict[int, int] = {}
    seen: dict[int, str] = {}
    export_ids: set[int] = set()
    unrequested: list[str] = []
    for where, entry in _entries(items, "images", ("id", "file_name", "width", "height"), path):
        export_id = _int(entry["id"], f"{where} id", path)
        if export_id in export_ids:
            raise InputError(path, f"duplicate image id {export_id} ({where})")
        export_ids.add(export_id)
        name = entry["file_name"]
        if not isinstance(name, str) or not name.strip():
            raise InputError(path, f"{where} file_name must be a non-empty string, got {name!r}")
        candidates = _candidates(name, by_path, by_base)
        if len(candidates) > 1:
            raise InputError(
                path,
                f"{where} file_name {name!r} matches several requested images "
                f"({', '.join(requested[i]['file_name'] for i in candidates)}); export with full paths",
            )
        if not candidates:
            unrequested.append(name)
            continue
        pool_id = candidates[0]
        if pool_id in seen:
            raise InputError(
                path, f"{where} and {seen[pool_id]} are both the requested image {requested[pool_id]['file_name']!r}"
            )
        seen[pool_id] = where
        _check_size(entry, requested[pool_id], where, path)
        matched[export_id] = pool_id
    if unrequested:
        more = f" and {len(unrequested) - MAX_LISTED} more" if len(unrequested) > MAX_LISTED else ""
        raise InputError(
            path,
            f"{len(unrequested)} image(s) were not requested in this batch: "
            f"{', '.join(map(repr, unrequested[:MAX_LISTED]))}{more}",
        )
    return matched


def _candidates(name: str, by_path: dict[str, int], by_base: dict[str, list[int]]) -> list[int]:
    """Requested ids an exported file name can mean, from the strictest reading to the loosest."""
    plain = name.replace("\\", "/")
    if "?d=" in plain:  # Label Studio local-files URL
        plain = plain.split("?d=", 1)[1]
    plain = posixpath.normpath(unquote(plain)).lstrip("/")
    if plain in by_path:
        return [by_path[plain]]
    suffix = [i for p, i in by_path.items() if plain.endswith("/" + p)]
    if suffix:
        return suffix
    base = posixpath.basename(plain)
    if base in by_base:
        return by_base[base]
    stripped = UPLOAD_PREFIX.sub("", base, count=1)
    return by_base.get(stripped, []) if stripped != base else []


def _check_size(entry: dict, image: dict, where: str, path: Path) -> None:
    width = _int(entry["width"], f"{where} width", path, positive=True)
    height = _int(entry["height"], f"{where} height", path, positive=True)
    if (width, height) != (image["width"], image["height"]):
        raise InputError(
            path,
            f"{where} ({entry['file_name']!r}) is {width}x{height} but the requested image "
            f"{image['file_name']!r} is {image['width']}x{image['height']} (width x height)",
        )


# --- annotations ---------------------------------------------------------------------------


def _read_annotations(
    items: list,
    matched: dict[int, int],
    requested: dict[int, dict],
    export_cats: dict[int, str],
    project_ids: dict[str, int],
    path: Path,
) -> tuple[dict[int, list[dict]], int]:
    per_image: dict[int, list[dict]] = {i: [] for i in requested}
    pending: list[tuple[str, int, int, dict]] = []  # (where, pool id, category id, rle)
    unknown: set[str] = set()
    clipped = 0
    for where, entry in _entries(items, "annotations", ("image_id", "category_id", "segmentation"), path):
        resolved = _resolve(entry, where, matched, export_cats, project_ids, unknown, path)
        if resolved is None:
            continue
        pool_id, category_id = resolved
        image = requested[pool_id]
        seg, n_clipped = _clip_polygons(entry["segmentation"], image, where, path)
        clipped += n_clipped
        rle = _to_rle(seg, image["height"], image["width"], where, path)
        pending.append((where, pool_id, category_id, rle))
    if unknown:
        raise InputError(
            path,
            f"unknown category name(s) {', '.join(map(repr, sorted(unknown)))}; "
            f"the project's categories are {', '.join(map(repr, project_ids))}",
        )
    _check_compressed([(where, rle) for where, _, _, rle in pending], path)
    areas = rle_areas([rle for *_, rle in pending])
    seen: set[tuple[int, int, str]] = set()
    duplicates: list[str] = []
    for (where, pool_id, cat_id, rle), area in zip(pending, areas):
        key = (pool_id, cat_id, _counts_str(rle["counts"]))
        if key in seen:  # the same mask twice (a double submit): one instance, not two
            duplicates.append(where)
            continue
        seen.add(key)
        if area <= 0:
            raise InputError(
                path,
                f"{where} (image {requested[pool_id]['file_name']!r}) has an empty mask; "
                "every instance needs a mask (delete it, or draw its outline)",
            )
        per_image[pool_id].append({"category_id": cat_id, "rle": rle, "area": float(area)})
    _warn_duplicates(duplicates, path)
    return per_image, clipped


def _warn_duplicates(duplicates: list[str], path: Path) -> None:
    if duplicates:
        warnings.warn(f"{path}: {len(duplicates)} annotation(s) repeat an earlier one exactly (same image, category "
                      f"and geometry), kept once: {', '.join(duplicates[:3])}", UserWarning, stacklevel=3)


def _resolve(
    entry: dict, where: str, matched: dict[int, int], export_cats: dict[int, str], project_ids: dict[str, int],
    unknown: set[str], path: Path,
) -> tuple[int, int] | None:
    """(requested pool id, project category id) of an exported annotation; None when its category
    name is not the project's (collected in `unknown`, refused together afterwards)."""
    export_image = _int(entry["image_id"], f"{where} image_id", path)
    if export_image not in matched:
        raise InputError(path, f"{where} points at image id {export_image}, which is not in 'images'")
    export_cat = _int(entry["category_id"], f"{where} category_id", path)
    if export_cat not in export_cats:
        raise InputError(path, f"{where} has category id {export_cat}, which is not in 'categories'")
    name = export_cats[export_cat]
    if name not in project_ids:
        unknown.add(name)
        return None
    return matched[export_image], project_ids[name]


def _clip_polygons(seg: Any, image: dict, where: str, path: Path) -> tuple[Any, int]:
    """Move vertices within POLYGON_SLACK_PX outside the image onto its border; refuse farther ones.

    Only well-formed polygons are touched; anything else goes on to _to_rle, which names
    the problem.
    """
    if not isinstance(seg, list):
        return seg, 0
    width, height = image["width"], image["height"]
    out, clipped = [], 0
    for j, poly in enumerate(seg):
        if not _numeric_list(poly):
            out.append(poly)
            continue
        fixed = []
        for k, v in enumerate(poly):
            limit = width if k % 2 == 0 else height
            if v < -POLYGON_SLACK_PX or v > limit + POLYGON_SLACK_PX:
                x, y = poly[k - k % 2], poly[k - k % 2 + 1]
                raise InputError(
                    path,
                    f"{where} segmentation[{j}] has the vertex ({x:g}, {y:g}) outside the "
                    f"{width}x{height} image {image['file_name']!r}",
                )
            c = min(max(float(v), 0.0), float(limit))
            clipped += c != v
            fixed.append(c)
        out.append(fixed)
    return out, clipped


def _numeric_list(poly: Any) -> bool:
    return isinstance(poly, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in poly
    )


def _normalised(
    requested: dict[int, dict], labeled: set[int], per_image: dict[int, list[dict]], categories: list[dict]
) -> dict:
    images = [
        {k: requested[i][k] for k in ("id", "file_name", "width", "height")} for i in sorted(labeled)
    ]
    annotations = []
    for image_id in sorted(labeled):
        for ann in per_image[image_id]:
            box = mask_utils.toBbox(ann["rle"])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ann["category_id"],
                    "bbox": [float(v) for v in box],
                    "area": ann["area"],
                    "iscrowd": 0,
                    "segmentation": {
                        "size": [int(s) for s in ann["rle"]["size"]],
                        "counts": _counts_str(ann["rle"]["counts"]),
                    },
                }
            )
    cats = [{"id": int(c["id"]), "name": str(c["name"])} for c in categories]
    return {"images": images, "annotations": annotations, "categories": sorted(cats, key=lambda c: c["id"])}


# --- weak label types ------------------------------------------------------------------------

_GEOMETRY_OF = {"mask": "masks (segmentation)", "box": "boxes (bbox)", "point": "points (keypoints)",
                "image": "image-level counts"}


def _annotation_type(entry: dict) -> str:
    """What an exported annotation holds: mask, point or box."""
    seg = entry.get("segmentation")
    if (isinstance(seg, list) and any(isinstance(p, list) and p for p in seg)) or isinstance(seg, dict):
        return "mask"
    if "point" in entry or entry.get("keypoints"):
        return "point"
    return "box"


def _read_weak_export(
    raw: dict, path: Path, request: dict, matched: dict[int, int], export_cats: dict[int, str],
    project_ids: dict[str, int], allow_empty_images: bool, label_type: str,
) -> tuple[dict, list[int]]:
    """Boxes, points or image-level counts of a COCO export (see the module docstring)."""
    requested = {int(img["id"]): img for img in request["images"]}
    per_image: dict[int, list[dict]] = {i: [] for i in requested}
    counts: dict[int, dict[int, int]] = {}
    unknown: set[str] = set()
    duplicates: list[str] = []
    for where, entry in _entries(raw["annotations"], "annotations", ("image_id", "category_id"), path):
        found = _annotation_type(entry)
        if label_type == "image" or found != label_type:
            raise InputError(path, f"{where} holds {_GEOMETRY_OF[found]}, but this batch asked for "
                                   f"{_GEOMETRY_OF[label_type]}; export the {label_type} project, or import this "
                                   f"file for the batch that asked for {found} labels")
        resolved = _resolve(entry, where, matched, export_cats, project_ids, unknown, path)
        if resolved is None:
            continue
        pool_id, category_id = resolved
        image = requested[pool_id]
        geometry = _box(entry, image, where, path) if label_type == "box" else _point(entry, image, where, path)
        instance = {"category_id": category_id, **geometry}
        if instance in per_image[pool_id]:
            duplicates.append(where)
            continue
        per_image[pool_id].append(instance)
    if label_type == "image":
        for where, entry in _entries(raw["images"], "images", ("id",), path):
            if "counts" in entry:
                pool_id = matched[_int(entry["id"], f"{where} id", path)]
                counts[pool_id] = _counts(entry["counts"], where, path, project_ids, unknown)
    if unknown:
        raise InputError(path, f"unknown category name(s) {', '.join(map(repr, sorted(unknown)))}; "
                               f"the project's categories are {', '.join(map(repr, project_ids))}")
    _warn_duplicates(duplicates, path)
    listed = set(matched.values())
    if label_type == "image":
        labeled = {i for i in listed if i in counts}
    else:
        labeled = {i for i in listed if per_image[i] or allow_empty_images}
    unlabeled = [i for i in requested if i not in labeled]
    if not labeled:
        raise InputError(path, f"none of the {len(requested)} requested images is labeled in this export")
    images = []
    for i in sorted(labeled):
        entry = {k: requested[i][k] for k in ("id", "file_name", "width", "height")} | {"label_type": label_type}
        if label_type == "image":
            entry["counts"] = [{"category_id": c, "count": counts[i].get(c, 0)} for c in sorted(project_ids.values())]
        images.append(entry)
    annotations = [dict(a, id=n, image_id=i) for n, (i, a) in
                   enumerate(((i, a) for i in sorted(labeled) for a in per_image[i]), start=1)]
    cats = sorted(({"id": int(c["id"]), "name": str(c["name"])} for c in request["categories"]), key=lambda c: c["id"])
    return {"images": images, "annotations": annotations, "categories": cats, "clipped_vertices": 0}, unlabeled


def _number(value: Any, what: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(path, f"{what} must be a finite number, got {value!r}")
    return float(value)


def _box(entry: dict, image: dict, where: str, path: Path) -> dict:
    bbox = entry.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise InputError(path, f"{where} needs a bbox [x, y, width, height], got {bbox!r}")
    x, y, w, h = (_number(v, f"{where} bbox", path) for v in bbox)
    if w <= 0 or h <= 0:
        raise InputError(path, f"{where} bbox {bbox} has a non-positive width or height")
    width, height = image["width"], image["height"]
    slack = POLYGON_SLACK_PX
    if x < -slack or y < -slack or x + w > width + slack or y + h > height + slack:
        raise InputError(path, f"{where} bbox {bbox} lies outside the {width}x{height} image {image['file_name']!r}")
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        raise InputError(path, f"{where} bbox {bbox} lies outside the {width}x{height} image {image['file_name']!r}")
    return {"bbox": [x0, y0, x1 - x0, y1 - y0]}


def _point(entry: dict, image: dict, where: str, path: Path) -> dict:
    if "point" in entry:
        point = entry["point"]
        if not isinstance(point, list) or len(point) != 2:
            raise InputError(path, f"{where} point must be [x, y], got {point!r}")
        x, y = (_number(v, f"{where} point", path) for v in point)
    else:
        keypoints = entry["keypoints"]
        if not isinstance(keypoints, list) or len(keypoints) != 3:
            raise InputError(path, f"{where} needs exactly one keypoint [x, y, visibility], got {keypoints!r}")
        x, y, v = (_number(k, f"{where} keypoints", path) for k in keypoints)
        if v <= 0:
            raise InputError(path, f"{where} keypoint is marked not labeled (visibility 0)")
    width, height = image["width"], image["height"]
    if not (0 <= x <= width and 0 <= y <= height):
        raise InputError(path, f"{where} point ({x:g}, {y:g}) lies outside the {width}x{height} image {image['file_name']!r}")
    return {"point": [min(x, width - 1e-3), min(y, height - 1e-3)]}


def _counts(raw: Any, where: str, path: Path, project_ids: dict[str, int], unknown: set[str]) -> dict[int, int]:
    """{category name: count} of an image-level label -> {category id: count}."""
    if not isinstance(raw, dict):
        raise InputError(path, f"{where} counts must be an object {{category name: number}}, got {raw!r}")
    out: dict[int, int] = {}
    for name, value in raw.items():
        if name not in project_ids:
            unknown.add(str(name))
            continue
        ok = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
        if not ok or value < 0:
            raise InputError(path, f"{where} counts {name!r}: {str(value)[:40]} is not a non-negative whole number")
        if value > MAX_COUNT:
            raise InputError(path, f"{where} counts {name!r}: {str(value)[:40]} is above the sane maximum of "
                                   f"{MAX_COUNT} instances of one category on one image")
        out[project_ids[name]] = int(value)
    return out
