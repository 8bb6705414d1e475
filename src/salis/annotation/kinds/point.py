"""Points: one click inside each instance, (x, y) in pixels (a pixel's centre is at col + 0.5,
row + 0.5), no mask, no box; the weak_label stage turns clicks into masks from the model's
detections (salis.loop.weak)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from salis.annotation.kinds.base import AnnotatorView, LabelKind, Parser, finite_number, percent, region_labels
from salis.errors import InputError
from salis.geometry import decode_rles, rle
from salis.params import CostParams


class PointKind(LabelKind):
    name = "point"
    geometry = "points (keypoints)"
    task = "one click (keypoint) on each object, anywhere inside it"
    training = "weak"
    region_type = "keypointlabels"
    recognition_rank = 1  # a COCO keypoint annotation carries a bbox too: look for points first

    def seconds_per_instance(self, cost: CostParams) -> float:
        return cost.point_seconds

    def derive(self, view: AnnotatorView) -> list[dict]:
        truth = view.truth
        masks = decode_rles([rle(a["segmentation"]) for a in truth], view.height, view.width) if truth else []
        points = [click_point(m, view.placement, view.rng) for m in masks]
        return [{"category_id": int(a["category_id"]), "point": [x, y]} for a, (x, y) in zip(truth, points)]

    def request_categories(self, categories: list[dict]) -> list[dict]:
        return [dict(c, keypoints=["point"], skeleton=[]) for c in categories]

    def request_annotation(self, prediction: dict) -> dict:
        x, y = prediction["point"]
        return {"keypoints": [x, y, 2], "num_keypoints": 1, "segmentation": [], "area": 0.0, "bbox": [x, y, 0.0, 0.0]}

    def label_studio_value(self, prediction: dict, width: int, height: int, label: list[str]) -> dict:
        x, y = prediction["point"]
        return {"x": percent(x, width), "y": percent(y, height), "width": 0.5, "keypointlabels": label}

    def label_studio_control(self, categories: list[dict]) -> str:
        return region_labels("KeyPointLabels", ' smart="false"', categories)

    def recognises(self, entry: dict) -> bool:
        return "point" in entry or bool(entry.get("keypoints"))

    def parser(self, requested, path) -> "PointParser":
        return PointParser(requested, path)


class PointParser(Parser):
    """A "point": [x, y], or one COCO keypoint [x, y, visibility > 0], inside the image."""

    def add(self, where: str, pool_id: int, category_id: int, entry: dict) -> None:
        image, path = self.requested[pool_id], self.path
        if "point" in entry:
            point = entry["point"]
            if not isinstance(point, list) or len(point) != 2:
                raise InputError(path, f"{where} point must be [x, y], got {point!r}")
            x, y = (finite_number(v, f"{where} point", path) for v in point)
        else:
            keypoints = entry.get("keypoints")
            if not isinstance(keypoints, list) or len(keypoints) != 3:
                raise InputError(path, f"{where} needs exactly one keypoint [x, y, visibility], got {keypoints!r}")
            x, y, v = (finite_number(k, f"{where} keypoints", path) for k in keypoints)
            if v <= 0:
                raise InputError(path, f"{where} keypoint is marked not labeled (visibility 0)")
        width, height = image["width"], image["height"]
        if not (0 <= x <= width and 0 <= y <= height):
            raise InputError(path, f"{where} point ({x:g}, {y:g}) lies outside the {width}x{height} image "
                                   f"{image['file_name']!r}")
        self.keep(where, pool_id, {"category_id": category_id, "point": [min(x, width - 1e-3), min(y, height - 1e-3)]})


def click_point(mask: np.ndarray, placement: str, rng: np.random.Generator) -> tuple[float, float]:
    """Where an annotator clicks on a binary H x W mask: (x, y) at a pixel centre.

    center: the pixel deepest inside the mask (largest distance to the background; the first in
    raster order on ties). uniform: any mask pixel, equally likely. annotator: a pixel drawn with
    probability proportional to its distance to the background, so clicks land well inside the
    instance, near but not always at its centre, as people click.
    """
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        raise ValueError("cannot click on an empty mask")
    if placement == "uniform":
        rows, cols = np.nonzero(m)
        k = int(rng.integers(len(rows)))
        return float(cols[k]) + 0.5, float(rows[k]) + 0.5
    depth = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    if placement == "center":
        row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
        return float(col) + 0.5, float(row) + 0.5
    if placement == "annotator":
        flat = depth.ravel()
        k = int(rng.choice(len(flat), p=flat / flat.sum()))
        row, col = divmod(k, m.shape[1])
        return float(col) + 0.5, float(row) + 0.5
    raise ValueError(f"unknown point placement {placement!r}; use center, uniform or annotator")
