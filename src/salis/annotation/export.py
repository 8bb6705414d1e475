"""A cycle's request batch for human annotators, with the model's predictions as pre-annotations.

out_dir (written as a whole through atomic_dir, so a crash leaves the old batch or none):
  request.json            COCO for CVAT ("Upload annotations", COCO 1.0): the requested images,
                          the project's categories, predictions as polygons with their score
                          in `attributes` (where CVAT's COCO 1.0 format keeps attributes), and
                          info.salis (cycle, image root, order of selection) the import reads.
  label_studio_tasks.json Label Studio tasks: the image URL and the predictions as
                          polygonlabels pre-annotations, points in percent of width/height.
  label_config.xml        the Label Studio labeling config those tasks need.
  images.txt              absolute paths of the requested images, one per line (for uploads).
  README.txt              how to load the batch into CVAT or Label Studio and bring labels back.

Masks become polygons by tracing pixel edges (mask_to_polygons), so a polygon rasterised by
pycocotools gives back the same pixels; holes are not represented (see mask_to_polygons).
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from salis.artifacts.atomic import atomic_dir, write_text
from salis.data.prepared import PreparedData
from salis.errors import SalisError

# Label Studio serves local files under this URL once LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED
# is set; `d` is relative to LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (set it to the image root).
DEFAULT_IMAGE_URL = "/data/local-files/?d={file_name}"
IMAGE_URL_FIELDS = {"file_name", "path", "image_id"}
FROM_NAME = "label"
TO_NAME = "image"
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
) -> dict:
    """Write the request batch for `image_ids` (in selection order) into out_dir.

    instances: rows of INSTANCE_SCHEMA (other images' rows are ignored); detections scoring
    below min_score are left out, so annotators start from confident predictions only.
    image_url: the Label Studio image reference, a template over {file_name} (relative to
    the image root), {path} (absolute) and {image_id}.
    model_note: a line for README.txt on the model that made the predictions.
    Returns {cycle, images, pre_annotations, below_min_score, empty_masks, out_dir}.
    """
    ids = _checked_ids(prepared, image_ids)
    _check_template(image_url)
    if cycle < 0:  # batch 0 is the random initial set, requested before any model exists
        raise ValueError(f"cycle must be >= 0, got {cycle}")
    images = [_image_entry(prepared, i) for i in ids]
    categories = [{"id": int(c["id"]), "name": str(c["name"]), "supercategory": ""} for c in prepared.categories]
    by_image, counts = _predictions(instances, {img["id"]: img for img in images}, min_score)
    request = _request_coco(images, categories, by_image, cycle, prepared, min_score)
    tasks = [_task(prepared, img, by_image[img["id"]], categories, cycle, image_url) for img in images]
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_text(tmp / "request.json", _dumps(request))
        write_text(tmp / "label_studio_tasks.json", _dumps(tasks))
        write_text(tmp / "label_config.xml", label_config(categories))
        write_text(tmp / "images.txt", "".join(f"{prepared.image_path(i)}\n" for i in ids))
        note = _pre_annotation_note(cycle, len(request["annotations"]), counts, min_score, model_note)
        write_text(tmp / "README.txt", _readme(cycle, out_dir, prepared.image_root(ids[0]) if ids else None, note))
    return {
        "cycle": cycle,
        "images": len(images),
        "pre_annotations": len(request["annotations"]),
        "below_min_score": counts["below_min_score"],
        "empty_masks": counts["empty_masks"],
        "out_dir": str(out_dir),
    }


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
) -> tuple[dict[int, list[dict]], dict[str, int]]:
    """Per requested image: its confident detections as {category_id, score, polygons, bbox, area}."""
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


def _prediction(row: Any, image: dict) -> dict | None:
    height, width = int(row.height), int(row.width)
    if (height, width) != (image["height"], image["width"]):
        raise SalisError(
            f"a detection of image {image['id']} has a {width}x{height} mask but the image is "
            f"{image['width']}x{image['height']}"
        )
    rle = {"size": [height, width], "counts": str(row.rle).encode("ascii")}
    polygons = mask_to_polygons(mask_utils.decode(rle))
    if not polygons:
        return None
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return {
        "category_id": int(row.category_id),
        "score": round(float(row.score), 6),
        "polygons": polygons,
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
) -> dict:
    annotations = []
    for image in images:
        for p in by_image[image["id"]]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": p["category_id"],
                    "segmentation": p["polygons"],
                    "bbox": p["bbox"],
                    "area": p["area"],
                    "iscrowd": 0,
                    "attributes": {"score": p["score"], "occluded": False},
                }
            )
    roots = sorted({str(prepared.image_root(img["id"])) for img in images})
    # CVAT's COCO reader (datumaro) refuses unknown top-level keys and needs "licenses" and
    # "info", so salis's own fields live inside "info". No date: the same selection must give
    # the same bytes.
    return {
        "info": {
            "description": f"salis request batch, cycle {cycle}: model predictions as pre-annotations",
            "contributor": "salis",
            "version": "1.0",
            "salis": {
                "cycle": cycle,
                "image_root": roots[0] if len(roots) == 1 else roots,
                "image_ids": [img["id"] for img in images],
                "min_score": min_score,
            },
        },
        "licenses": [],
        "images": images,
        "categories": categories,
        "annotations": annotations,
    }


# --- Label Studio ----------------------------------------------------------------------------


def _task(
    prepared: PreparedData, image: dict, predictions: list[dict], categories: list[dict], cycle: int, image_url: str
) -> dict:
    names = {c["id"]: c["name"] for c in categories}
    url = image_url.format(file_name=image["file_name"], path=prepared.image_path(image["id"]), image_id=image["id"])
    results = [r for k, p in enumerate(predictions) for r in _ls_result(p, image, names, k)]
    task: dict[str, Any] = {"data": {"image": url, "salis_image_id": image["id"], "file_name": image["file_name"]}}
    if results:
        mean_score = float(np.mean([p["score"] for p in predictions]))
        task["predictions"] = [
            {"model_version": f"salis-cycle-{cycle}", "score": round(mean_score, 6), "result": results}
        ]
    return task


def _ls_result(prediction: dict, image: dict, names: dict[int, str], k: int) -> list[dict]:
    """One polygonlabels region per polygon (Label Studio regions hold a single outline)."""
    w, h = image["width"], image["height"]
    out = []
    for j, poly in enumerate(prediction["polygons"]):
        points = [[round(x / w * 100.0, 6), round(y / h * 100.0, 6)] for x, y in zip(poly[0::2], poly[1::2])]
        out.append(
            {
                "id": f"p{k}_{j}",
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "polygonlabels",
                "original_width": w,
                "original_height": h,
                "image_rotation": 0,
                "value": {"points": points, "closed": True, "polygonlabels": [names[prediction["category_id"]]]},
                "score": prediction["score"],
            }
        )
    return out


def label_config(categories: list[dict]) -> str:
    """Label Studio labeling config: polygons named "label" on the image "image", one Label per category.

    category="<id>" makes Label Studio's COCO export use the project's ids (the import matches
    by name anyway, since older exports ignore it and count from 0).
    """
    labels = "\n".join(
        f"    <Label value={quoteattr(c['name'])} category={quoteattr(str(c['id']))}/>" for c in categories
    )
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
        f'  <PolygonLabels name="{FROM_NAME}" toName="{TO_NAME}" strokeWidth="2" pointSize="small" opacity="0.5">\n'
        f"{labels}\n"
        "  </PolygonLabels>\n"
        "</View>\n"
    )


def _pre_annotation_note(cycle: int, kept: int, counts: dict[str, Any], min_score: float, model_note: str) -> str:
    """What the annotators get to start from, and why (a batch without pre-annotations is no bug)."""
    if cycle == 0:
        return ("Batch 0 is the random initial set: no model exists yet, so the images come without\n"
                "pre-annotations. Draw every instance.")
    best = counts.get("best_score")
    if kept == 0:
        why = ("the model detected nothing on them" if best is None else
               f"none of the model's detections reached the pre-annotation floor (score >= {min_score}; "
               f"best here {best:.3f})")
        text = f"These images come without pre-annotations: {why}. Draw every instance."
    else:
        text = (f"{kept} of the model's detections come along as pre-annotations (score >= {min_score}; "
                f"{counts['below_min_score']} scored lower and were left out): correct them, delete wrong "
                "ones, add what is missing.")
    return "\n".join(filter(None, [model_note, text]))


def _readme(cycle: int, out_dir: Path, image_root: Path | None, note: str) -> str:
    root = image_root if image_root is not None else "<image root>"
    return f"""salis request batch for cycle {cycle}
=================================

The images listed in request.json (file names relative to {root}; absolute paths in
images.txt) need instance masks. Keep the category names unchanged.
{note}

CVAT
  1. Create a task whose labels are the category names in request.json (same spelling),
     with the images of images.txt.
  2. Actions > Upload annotations > format "COCO 1.0" > {out_dir}/request.json.
  3. Annotate (polygons or masks), then Actions > Export task dataset > "COCO 1.0".
  4. Unzip it and import annotations/instances_default.json:
       salis labels import --cycle {cycle} instances_default.json

Label Studio
  1. Serve the images: start Label Studio with
       LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true
       LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}
     and add a Local Files source storage for that folder (do not sync it: the tasks come from
     step 3).
  2. Create a project; Settings > Labeling Interface > Code: paste label_config.xml.
  3. Import label_studio_tasks.json (predictions show up as pre-annotations).
  4. Annotate, then Export > "COCO" and import its result.json:
       salis labels import --cycle {cycle} result.json

Every requested image must be labeled: an image the export lists with no annotation counts as
left unlabeled. Pass --partial to send such images back to the pool instead, and
--allow-empty where an image truly holds no object. A second import for the same cycle is
refused unless --replace (the old labels are kept as a backup).
"""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n"
