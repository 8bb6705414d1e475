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
from urllib.parse import unquote

from salis.annotation.kinds import DEFAULT_KIND, LabelKind, label_kind, recognised_kind
from salis.annotation.kinds.base import SLACK_PX, pre_annotations_of
from salis.annotation.label_studio_json import coco_from_label_studio
from salis.artifacts.atomic import atomic_path, write_json
from salis.data.coco_checks import as_int, check_top_level, entries, read_json
from salis.errors import InputError

UPLOAD_PREFIX = re.compile(r"^[0-9a-fA-F]{8}-")
MAX_LISTED = 5


def read_label_export(
    path: Path, request: dict, allow_empty_images: bool = False, label_type: str = DEFAULT_KIND
) -> tuple[dict, list[int]]:
    """Validate a COCO export against the request; return (normalised COCO, unlabeled image ids).

    One loop for every label kind: each annotation must hold the kind's geometry and is read by
    the kind's parser (salis.annotation.kinds); image-level fields by its parse_image. The
    normalised COCO uses the requested pool image ids and the project's category ids, annotation
    ids 1..N, the kind's stored annotations (masks: compressed RLE with mask-derived bbox and
    area), and "clipped_vertices" (polygon vertices within 1 px outside the image, moved onto its
    border). The unlabeled ids are requested images the export leaves without labels, in request
    order; the caller decides whether that is allowed (import_labels' partial).
    """
    path = Path(path)
    kind = label_kind(label_type)
    raw = read_json(path)
    if isinstance(raw, list):  # Label Studio's JSON export: a list of tasks
        raw = coco_from_label_studio(raw, path, request)
    check_top_level(raw, path)
    requested = {int(img["id"]): img for img in request["images"]}
    project_ids = {str(c["name"]): int(c["id"]) for c in request["categories"]}
    export_cats = _export_categories(raw["categories"], path)
    matched = _match_images(raw["images"], requested, path)
    unknown: set[str] = set()
    parser = None if kind.image_level else kind.parser(requested, path)
    for where, entry in entries(raw["annotations"], "annotations", ("image_id", "category_id"), path):
        found = recognised_kind(entry)
        if parser is None or not kind.accepts(entry, found):
            found = found or kind
            raise InputError(path, f"{where} holds {found.geometry}, but this batch asked for {kind.geometry}; export "
                                   f"the {kind.name} project, or import this file for the batch that asked for "
                                   f"{found.name} labels")
        resolved = _resolve(entry, where, matched, export_cats, project_ids, unknown, path)
        if resolved is not None:
            parser.add(where, *resolved, entry)
    image_fields: dict[int, dict] = {}
    seconds: dict[int, float] = {}
    for where, entry in entries(raw["images"], "images", ("id",), path):
        pool_id = matched.get(as_int(entry["id"], f"{where} id", path))
        fields = kind.parse_image(entry, where, path, project_ids, unknown)
        if fields is not None:
            image_fields[pool_id] = fields
        if entry.get("lead_time") is not None and pool_id is not None:  # null: not timed
            seconds[pool_id] = _lead_time(entry["lead_time"], where, path)
    if unknown:
        raise InputError(path, f"unknown category name(s) {', '.join(map(repr, sorted(unknown)))}; "
                               f"the project's categories are {', '.join(map(repr, project_ids))}")
    per_image, clipped = parser.finish() if parser is not None else ({i: [] for i in requested}, 0)
    listed = set(matched.values())
    labeled = {i for i in listed if (i in image_fields if kind.image_level else per_image[i] or allow_empty_images)}
    unlabeled = [i for i in requested if i not in labeled]
    if not labeled:
        raise InputError(path, f"none of the {len(requested)} requested images is labeled in this export")
    _check_times(seconds, labeled, requested, path)
    for i in labeled & set(seconds):
        image_fields[i] = image_fields.get(i, {}) | {"annotation_seconds": seconds[i]}
    pre = pre_annotations_of(request, path) if kind.reads_pre_annotations else {}
    for i in labeled:  # what the annotators did with the model's pre-annotations, where the kind asks
        image_fields[i] = image_fields.get(i, {}) | kind.human_fields(per_image[i], requested[i], pre.get(i, []))
    if clipped:
        warnings.warn(f"{path}: clipped {clipped} polygon vertex/vertices lying up to {SLACK_PX:g} px outside their "
                      "image onto the image border", UserWarning, stacklevel=2)
    return _normalised(kind, requested, labeled, per_image, image_fields, request["categories"], clipped), unlabeled


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
    label_type = _request_label_type(request, request_path)
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
    kind = label_kind(label_type)
    if kind.name != DEFAULT_KIND:  # label files before label kinds name none
        labels["label_type"] = label_type
    backup = _backup(labels_path) if labels_path.exists() else None
    write_json(labels_path, labels)
    return {
        "cycle": cycle,
        "labels_path": str(labels_path),
        "label_type": label_type,
        "images_labeled": len(coco["images"]),
        "instances": sum(int(c["count"]) for im in coco["images"] for c in im["counts"]) if kind.image_level
        else len(coco["annotations"]),
        "partial_unlabeled": unlabeled,
        "clipped_vertices": coco["clipped_vertices"],
        "backup": None if backup is None else str(backup),
        "source_file": str(export_path),
        # seconds the annotators spent (Label Studio's lead_time), None when the export has no times
        "annotation_seconds": sum(im["annotation_seconds"] for im in coco["images"])
        if any("annotation_seconds" in im for im in coco["images"]) else None,
        # corrected masks: what happened to the model's pre-annotations
        "outcomes": {k: sum(im[k] for im in coco["images"]) for k in kind.outcome_fields} or None,
    }


# --- request -------------------------------------------------------------------------------


def _read_request(path: Path) -> dict:
    raw = read_json(path)
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


def _request_label_type(request: dict, path: Path) -> str:
    """What the batch asked for (info.salis.label_type); masks for batches before label types."""
    info = request.get("info")
    salis = info.get("salis") if isinstance(info, dict) else None
    name = str(salis.get("label_type", DEFAULT_KIND)) if isinstance(salis, dict) else DEFAULT_KIND
    try:
        return label_kind(name).name
    except ValueError as err:
        raise InputError(path, f"info.salis.label_type: {err}") from None


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
    for where, entry in entries(items, "categories", ("id", "name"), path):
        cat_id = as_int(entry["id"], f"{where} id", path)
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
    for where, entry in entries(items, "images", ("id", "file_name", "width", "height"), path):
        export_id = as_int(entry["id"], f"{where} id", path)
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
    width = as_int(entry["width"], f"{where} width", path, positive=True)
    height = as_int(entry["height"], f"{where} height", path, positive=True)
    if (width, height) != (image["width"], image["height"]):
        raise InputError(
            path,
            f"{where} ({entry['file_name']!r}) is {width}x{height} but the requested image "
            f"{image['file_name']!r} is {image['width']}x{image['height']} (width x height)",
        )


# --- annotation times ----------------------------------------------------------------------

MAX_LEAD_TIME = 24 * 3600.0  # seconds on one image past which a recorded time is a stale session, not work


def _lead_time(value, where: str, path: Path) -> float:
    """Label Studio's lead_time of a task: seconds, positive and at most a day."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(path, f"{where} lead_time must be a number of seconds, got {str(value)[:40]!r}")
    if value <= 0:
        raise InputError(path, f"{where} lead_time {value:g} s is not positive")
    if value > MAX_LEAD_TIME:
        raise InputError(path, f"{where} lead_time {value:g} s is more than a day: an annotation session left "
                               "open, not work on the image (fix or drop it in the export)")
    return float(value)


def _check_times(seconds: dict[int, float], labeled: set[int], requested: dict[int, dict], path: Path) -> None:
    """An export times all its labeled images or none (CVAT and COCO exports carry no times)."""
    untimed = sorted(labeled - set(seconds))
    if seconds and untimed:
        names = ", ".join(requested[i]["file_name"] for i in untimed[:MAX_LISTED])
        raise InputError(path, f"lead_time missing on {len(untimed)} of the {len(labeled)} labeled images ({names}): "
                               "an export must time all its images or none, or the measured costs are biased")


# --- annotations ---------------------------------------------------------------------------


def _resolve(
    entry: dict, where: str, matched: dict[int, int], export_cats: dict[int, str], project_ids: dict[str, int],
    unknown: set[str], path: Path,
) -> tuple[int, int] | None:
    """(requested pool id, project category id) of an exported annotation; None when its category
    name is not the project's (collected in `unknown`, refused together afterwards)."""
    export_image = as_int(entry["image_id"], f"{where} image_id", path)
    if export_image not in matched:
        raise InputError(path, f"{where} points at image id {export_image}, which is not in 'images'")
    export_cat = as_int(entry["category_id"], f"{where} category_id", path)
    if export_cat not in export_cats:
        raise InputError(path, f"{where} has category id {export_cat}, which is not in 'categories'")
    name = export_cats[export_cat]
    if name not in project_ids:
        unknown.add(name)
        return None
    return matched[export_image], project_ids[name]


def _normalised(
    kind: LabelKind, requested: dict[int, dict], labeled: set[int], per_image: dict[int, list[dict]],
    image_fields: dict[int, dict], categories: list[dict], clipped: int,
) -> dict:
    """The labels file's COCO: labeled images (with the kind's label_type and fields unless it is
    the default kind), the kind's stored annotations numbered 1..N, the project's categories."""
    tag = {} if kind.name == DEFAULT_KIND else {"label_type": kind.name}
    images = [{k: requested[i][k] for k in ("id", "file_name", "width", "height")} | tag | image_fields.get(i, {})
              for i in sorted(labeled)]
    annotations = [{"id": n, "image_id": i, **kind.labeled_annotation(a)} for n, (i, a) in
                   enumerate(((i, a) for i in sorted(labeled) for a in per_image[i]), start=1)]
    cats = sorted(({"id": int(c["id"]), "name": str(c["name"])} for c in categories), key=lambda c: c["id"])
    return {"images": images, "annotations": annotations, "categories": cats, "clipped_vertices": clipped}
