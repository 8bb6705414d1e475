"""A cycle's request batch for human annotators, with the model's predictions as pre-annotations.

out_dir (written as a whole through atomic_dir, so a crash leaves the old batch or none), one set
of files per label type the batch asks for; masks have no suffix, the others .box, .point, .image:
  request[.T].json            COCO for CVAT ("Upload annotations", COCO 1.0): the images of that
                              type, the project's categories, predictions as pre-annotations
                              (masks: polygons; boxes: bbox only; points: one keypoint each) with
                              their score in `attributes`, and info.salis (cycle, label type, image
                              root, order of selection) the import reads. Image-level labels have
                              no annotations: annotators fill each image's `counts` field.
  label_studio_tasks[.T].json Label Studio tasks: the image URL and the predictions as regions
                              (polygonlabels, rectanglelabels, keypointlabels, or choices and
                              numbers for image-level labels), in percent of width/height.
  label_config[.T].xml        the Label Studio labeling config those tasks need.
  images[.T].txt              absolute paths of those images, one per line (for uploads).
  README.txt                  how to load the batch into CVAT or Label Studio and bring labels back.

Masks become polygons by tracing pixel edges (mask_to_polygons), so a polygon rasterised by
pycocotools gives back the same pixels; holes are not represented (see mask_to_polygons). A Label
Studio polygon region holds one outline, so a prediction becomes one region: the outline of its
largest 4-connected part (specks elsewhere are left out), and accepting it stores one instance.

Image URLs: Label Studio serves local files under /data/local-files/?d=PATH, PATH relative to
LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, and only from a local-files storage that is a
*subfolder* of that root. So the tasks name each image as <image folder name>/<file name> and the
README sets the document root to the image folder's parent and the storage to the image folder.
"""

from __future__ import annotations

import json
import posixpath
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from scipy import ndimage

from salis.annotation.kinds import DEFAULT_KIND, label_kind, label_kinds
from salis.annotation.kinds.base import TO_NAME
from salis.annotation.kinds.point import click_point
from salis.artifacts.atomic import atomic_dir, write_text
from salis.data.prepared import PreparedData
from salis.errors import SalisError

# Label Studio serves local files under this URL once LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED
# is set; `d` is relative to LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: the image folder's parent.
DEFAULT_IMAGE_URL = "/data/local-files/?d={relative}"
IMAGE_URL_FIELDS = {"file_name", "path", "image_id", "relative"}
INSTANCE_COLUMNS = ("image_id", "category_id", "score", "height", "width", "rle")


def write_request_batch(
    out_dir: Path,
    prepared: PreparedData,
    image_ids: Sequence[int],
    instances: pd.DataFrame,
    cycle: int,
    min_score: float = 0.5,
    image_url: str = DEFAULT_IMAGE_URL,
    model_note: str = "",
    label_types: Sequence[str] | None = None,
) -> dict:
    """Write the request batch for `image_ids` (in selection order) into out_dir.

    instances: rows of INSTANCE_SCHEMA (other images' rows are ignored); detections scoring
    below min_score are left out, so annotators start from confident predictions only.
    image_url: the Label Studio image reference, a template over {relative} (image folder name /
    file name: the default, for a document root at the image folder's parent), {file_name}
    (relative to the image folder), {path} (absolute) and {image_id}.
    model_note: a line for README.txt on the model that made the predictions.
    label_types: per image, what the annotators are asked for (full masks for all when None).
    Returns {cycle, images, pre_annotations, below_min_score, empty_masks, out_dir, by_type}.
    """
    ids = _checked_ids(prepared, image_ids)
    types = list(label_types) if label_types is not None else [DEFAULT_KIND] * len(ids)
    known = [k.name for k in label_kinds()]
    if len(types) != len(ids) or set(types) - set(known):
        raise ValueError(f"label_types must give one of {known} per image, got {types}")
    _check_template(image_url)
    if cycle < 0:  # batch 0 is the random initial set, requested before any model exists
        raise ValueError(f"cycle must be >= 0, got {cycle}")
    images = {i: _image_entry(prepared, i) for i in ids}
    categories = [{"id": int(c["id"]), "name": str(c["name"]), "supercategory": ""} for c in prepared.categories]
    by_image, counts = _predictions(instances, images, min_score)
    present = [k for k in label_kinds() if k.name in types]
    out_dir = Path(out_dir)
    summary: dict[str, Any] = {"cycle": cycle, "images": len(ids), "pre_annotations": 0,
                               "below_min_score": counts["below_min_score"], "empty_masks": counts["empty_masks"],
                               "out_dir": str(out_dir), "by_type": {}}
    with atomic_dir(out_dir) as tmp:
        for kind in present:
            group = [images[i] for i, t in zip(ids, types) if t == kind.name]
            suffix = kind.suffix
            request = _request_coco(group, categories, by_image, cycle, prepared, min_score, kind.name)
            tasks = [_task(prepared, img, by_image[img["id"]], categories, cycle, image_url, kind.name) for img in group]
            write_text(tmp / f"request{suffix}.json", _dumps(request))
            write_text(tmp / f"label_studio_tasks{suffix}.json", _dumps(tasks))
            write_text(tmp / f"label_config{suffix}.xml", label_config(categories, kind.name))
            write_text(tmp / f"images{suffix}.txt", "".join(f"{prepared.image_path(img['id'])}\n" for img in group))
            kept = 0 if kind.image_level else sum(len(by_image[img["id"]]) for img in group)
            summary["pre_annotations"] += kept
            summary["by_type"][kind.name] = {"images": len(group), "pre_annotations": kept}
        note = _pre_annotation_note(cycle, summary["pre_annotations"], counts, min_score, model_note)
        root = prepared.image_root(ids[0]) if ids else None
        write_text(tmp / "README.txt", _readme(cycle, out_dir, root, note, summary["by_type"]))
    return summary


# --- masks to polygons ---------------------------------------------------------------------


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer outlines of a binary HxW mask as COCO polygons [x0, y0, x1, y1, ...].

    Vertices sit on pixel corners (pixel (r, c) spans [c, c+1] x [r, r+1]) and follow the
    pixel edges, so pycocotools rasterises each polygon back to exactly the pixels it
    encloses. Pixels that touch only at a corner get separate polygons (4-connectivity), so
    no outline pinches through a single point. Holes are dropped: a COCO polygon list is a
    union, it cannot subtract, so a mask with a hole comes back with the hole filled.
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    sx, sy, ex, ey = _boundary_edges(m)
    polygons = []
    for loop in _loops(sx, sy, ex, ey):
        corners = _corners(loop)
        if _signed_area(corners) > 0:  # outer outlines run this way round, holes the other
            polygons.append([float(v) for xy in corners for v in xy])
    return polygons


def _boundary_edges(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Directed pixel edges between foreground and background, each pixel walked the same way round."""
    p = np.pad(m, 1)
    core = p[1:-1, 1:-1]
    sides = (
        (core & ~p[:-2, 1:-1], (0, 0), (1, 0)),  # top: (c, r) -> (c+1, r)
        (core & ~p[1:-1, 2:], (1, 0), (1, 1)),  # right: (c+1, r) -> (c+1, r+1)
        (core & ~p[2:, 1:-1], (1, 1), (0, 1)),  # bottom: (c+1, r+1) -> (c, r+1)
        (core & ~p[1:-1, :-2], (0, 1), (0, 0)),  # left: (c, r+1) -> (c, r)
    )
    parts = []
    for side, (dx0, dy0), (dx1, dy1) in sides:
        r, c = np.nonzero(side)
        parts.append(np.stack([c + dx0, r + dy0, c + dx1, r + dy1]))
    edges = np.concatenate(parts, axis=1) if parts else np.zeros((4, 0), dtype=np.int64)
    return edges[0], edges[1], edges[2], edges[3]


def _loops(sx: np.ndarray, sy: np.ndarray, ex: np.ndarray, ey: np.ndarray) -> list[list[tuple[int, int]]]:
    """Chain edges into closed loops of start vertices."""
    sx, sy, ex, ey = sx.tolist(), sy.tolist(), ex.tolist(), ey.tolist()
    outgoing: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(sx, sy)):
        outgoing.setdefault(key, []).append(i)

    def successor(e: int) -> int:
        options = outgoing[(ex[e], ey[e])]
        if len(options) == 1:
            return options[0]
        # Two pixels meeting at a corner: stay with the pixel we came along (turn towards
        # the inside), which keeps corner-touching pixels in separate loops.
        dx, dy = ex[e] - sx[e], ey[e] - sy[e]
        return next(j for j in options if dx * (ey[j] - sy[j]) - dy * (ex[j] - sx[j]) > 0)

    used = [False] * len(sx)
    loops = []
    for first in range(len(sx)):
        if used[first]:
            continue
        loop, e = [], first
        while not used[e]:
            used[e] = True
            loop.append((sx[e], sy[e]))
            e = successor(e)
        loops.append(loop)
    return loops


def _corners(loop: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Drop vertices in the middle of straight runs: the outline is unchanged."""
    n = len(loop)
    keep = []
    for i in range(n):
        (x0, y0), (x1, y1), (x2, y2) = loop[i - 1], loop[i], loop[(i + 1) % n]
        if (x1 - x0, y1 - y0) != (x2 - x1, y2 - y1):
            keep.append(loop[i])
    return keep


def _signed_area(points: list[tuple[int, int]]) -> float:
    xs = np.array([p[0] for p in points], dtype=np.float64)
    ys = np.array([p[1] for p in points], dtype=np.float64)
    return float(np.sum(xs * np.roll(ys, -1) - np.roll(xs, -1) * ys)) / 2.0


# --- predictions ---------------------------------------------------------------------------


def _checked_ids(prepared: PreparedData, image_ids: Sequence[int]) -> list[int]:
    ids = [int(i) for i in image_ids]
    if len(set(ids)) != len(ids):
        raise SalisError("the request batch lists an image more than once")
    pool = set(prepared.pool_ids())
    outside = [i for i in ids if i not in pool]
    if outside:
        raise SalisError(f"image id(s) {outside[:5]} are not pool images; only pool images are ever sent for labeling")
    return ids


def _check_template(template: str) -> None:
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = fields - IMAGE_URL_FIELDS
    if unknown:
        raise ValueError(
            f"image_url template {template!r} uses {sorted(unknown)}; it may use {sorted(IMAGE_URL_FIELDS)}"
        )


def _image_entry(prepared: PreparedData, image_id: int) -> dict:
    info = prepared.image_info(image_id)
    return {
        "id": image_id,
        "file_name": info["file_name"],
        "width": int(info["width"]),
        "height": int(info["height"]),
    }


def _predictions(
    instances: pd.DataFrame, images: dict[int, dict], min_score: float
) -> tuple[dict[int, list[dict]], dict[str, Any]]:
    """Per requested image: its confident detections as {category_id, score, polygons, bbox, area,
    outline (the largest part's polygon, for Label Studio), point (its deepest pixel)}."""
    missing = [c for c in INSTANCE_COLUMNS if c not in instances.columns]
    if missing:
        raise SalisError(f"the instance table lacks the column(s) {missing}")
    by_image: dict[int, list[dict]] = {i: [] for i in images}
    counts: dict[str, Any] = {"below_min_score": 0, "empty_masks": 0}
    rows = instances[instances["image_id"].isin(list(images))]
    counts["best_score"] = float(rows["score"].max()) if len(rows) else None
    if "det" in rows.columns:
        rows = rows.sort_values(["image_id", "det"], kind="stable")
    for row in rows.itertuples(index=False):
        if float(row.score) < min_score:
            counts["below_min_score"] += 1
            continue
        prediction = _prediction(row, images[int(row.image_id)])
        if prediction is None:
            counts["empty_masks"] += 1
            continue
        by_image[int(row.image_id)].append(prediction)
    return by_image, counts


def largest_part(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected part of a binary mask (the first in raster order on ties)."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def _prediction(row: Any, image: dict) -> dict | None:
    height, width = int(row.height), int(row.width)
    if not isinstance(row.rle, str):
        raise SalisError(f"a detection of image {image['id']} (score {float(row.score):.3f}) was scored without its "
                         "mask: annotation.pre_annotation_score must be at least score.mask_min_score")
    if (height, width) != (image["height"], image["width"]):
        raise SalisError(
            f"a detection of image {image['id']} has a {width}x{height} mask but the image is "
            f"{image['width']}x{image['height']}"
        )
    rle = {"size": [height, width], "counts": str(row.rle).encode("ascii")}
    mask = mask_utils.decode(rle)
    polygons = mask_to_polygons(mask)
    if not polygons:
        return None
    part = largest_part(mask)
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return {
        "category_id": int(row.category_id),
        "score": round(float(row.score), 6),
        "polygons": polygons,
        "outline": mask_to_polygons(part)[0],
        "point": list(click_point(part, "center", np.random.default_rng(0))),
        "bbox": [x, y, w, h],
        "area": float(mask_utils.area(rle)),
    }


# --- request.json (COCO) ---------------------------------------------------------------------


def _request_coco(
    images: list[dict],
    categories: list[dict],
    by_image: dict[int, list[dict]],
    cycle: int,
    prepared: PreparedData,
    min_score: float,
    label_type: str = DEFAULT_KIND,
) -> dict:
    kind = label_kind(label_type)
    annotations = []
    for image in images if not kind.image_level else []:
        for p in by_image[image["id"]]:
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image["id"],
                "category_id": p["category_id"],
                "bbox": p["bbox"],
                "area": p["area"],
                "iscrowd": 0,
                "attributes": {"score": p["score"], "occluded": False},
            }
            ann.update(kind.request_annotation(p))
            annotations.append(ann)
    roots = sorted({str(prepared.image_root(img["id"])) for img in images})
    cats = kind.request_categories(categories)
    # CVAT's COCO reader (datumaro) refuses unknown top-level keys and needs "licenses" and
    # "info", so salis's own fields live inside "info". No date: the same selection must give
    # the same bytes.
    salis: dict[str, Any] = {
        "cycle": cycle,
        "label_type": label_type,
        "image_root": roots[0] if len(roots) == 1 else roots,
        "image_ids": [img["id"] for img in images],
        "min_score": min_score,
    }
    if kind.image_level:
        salis["counts_field"] = "each image's `counts`: {category name: number of instances}, 0 when absent"
    return {
        "info": {
            "description": f"salis request batch, cycle {cycle}: {label_type} labels"
            + ("" if kind.image_level else ", model predictions as pre-annotations"),
            "contributor": "salis",
            "version": "1.0",
            "salis": salis,
        },
        "licenses": [],
        "images": images,
        "categories": cats,
        "annotations": annotations,
    }


# --- Label Studio ----------------------------------------------------------------------------


def image_reference(prepared: PreparedData, image: dict, template: str) -> str:
    """The Label Studio URL of an image from the template (see write_request_batch)."""
    root = prepared.image_root(image["id"])
    return template.format(
        relative=posixpath.join(root.name, image["file_name"]) if root.name else image["file_name"],
        file_name=image["file_name"], path=prepared.image_path(image["id"]), image_id=image["id"],
    )


def _task(
    prepared: PreparedData, image: dict, predictions: list[dict], categories: list[dict], cycle: int, image_url: str,
    label_type: str = DEFAULT_KIND,
) -> dict:
    names = {c["id"]: c["name"] for c in categories}
    url = image_reference(prepared, image, image_url)
    results = label_kind(label_type).label_studio_results(predictions, image, names, categories)
    task: dict[str, Any] = {"data": {"image": url, "salis_image_id": image["id"], "file_name": image["file_name"]}}
    if results:
        mean_score = float(np.mean([p["score"] for p in predictions]))
        task["predictions"] = [
            {"model_version": f"salis-cycle-{cycle}", "score": round(mean_score, 6), "result": results}
        ]
    return task


def label_config(categories: list[dict], label_type: str = DEFAULT_KIND) -> str:
    """Label Studio labeling config of a label type, on the image "image": the kind's controls
    (salis.annotation.kinds: polygons, rectangles or keypoints named "label" with one Label per
    category; image-level labels a multiple Choices "present" and one Number per category)."""
    image = f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
    return f"<View>\n{image}{label_kind(label_type).label_studio_control(categories)}</View>\n"


def _pre_annotation_note(cycle: int, kept: int, counts: dict[str, Any], min_score: float, model_note: str) -> str:
    """What the annotators get to start from, and why (a batch without pre-annotations is no bug)."""
    if cycle == 0:
        return ("Batch 0 is the random initial set: no model exists yet, so the images come without\n"
                "pre-annotations. Draw every instance.")
    best = counts.get("best_score")
    if kept == 0:
        why = ("the model detected nothing on them" if best is None else
               f"none of the model's detections reached the pre-annotation floor (annotation.pre_annotation_score "
               f"{min_score}; best here {best:.3f}; {counts['below_min_score']} detections left out)")
        text = f"These images come without pre-annotations: {why}. Draw every instance."
    else:
        text = (f"{kept} of the model's detections come along as pre-annotations (score >= {min_score}, "
                f"annotation.pre_annotation_score; {counts['below_min_score']} scored lower and were left out): "
                "correct them, delete wrong ones, add what is missing.")
    return "\n".join(filter(None, [model_note, text]))


def _readme(cycle: int, out_dir: Path, image_root: Path | None, note: str, by_type: dict[str, dict]) -> str:
    root = image_root if image_root is not None else Path("<image folder>")
    parent = root.parent if image_root is not None else "<its parent folder>"
    lines = [f"salis request batch for cycle {cycle}", "=" * 32, ""]
    for label_type, info in by_type.items():
        kind = label_kind(label_type)
        suffix = kind.suffix
        lines += [
            f"{info['images']} image(s) need {label_type} labels: {kind.task}.",
            f"  files: request{suffix}.json, images{suffix}.txt (CVAT); label_studio_tasks{suffix}.json,",
            f"         label_config{suffix}.xml (Label Studio); import with",
            f"         salis labels import --cycle {cycle}{kind.type_flag} <export>",
        ]
    lines += ["", f"File names are relative to {root}. Keep the category names unchanged.", note, ""]
    lines += [f"""CVAT
  1. Create a task whose labels are the category names in the request file (same spelling),
     with the images of the images file.
  2. Actions > Upload annotations > format "COCO 1.0" > the request file (masks, boxes;
     points as "COCO Keypoints 1.0").
  3. Annotate, then Actions > Export task dataset > the same format.
  4. Unzip it and import annotations/instances_default.json (or person_keypoints_default.json):
       salis labels import --cycle {cycle} [--type T] instances_default.json

Label Studio (see README "Real annotators in the loop"; `salis labels push --cycle {cycle}` does
steps 1-3 through the API, `salis labels pull --cycle {cycle}` step 4)
  1. Serve the images: start Label Studio with
       LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true
       LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={parent}
     and add a Local Files source storage with the absolute path {root}
     (a subfolder of the document root; do not sync it: the tasks come from step 3).
  2. Create a project; Settings > Labeling Interface > Code: paste the label_config file.
  3. Import the label_studio_tasks file (predictions show up as pre-annotations).
  4. Annotate, then Export > "COCO" (or "JSON": every label type reads it) and import it:
       salis labels import --cycle {cycle} [--type T] result.json

Every requested image must be labeled: an image the export lists with no annotation counts as
left unlabeled. Pass --partial to send such images back to the pool instead, and
--allow-empty where an image truly holds no object. A second import for the same cycle is
refused unless --replace (the old labels are kept as a backup).
"""]
    return "\n".join(lines)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n"
