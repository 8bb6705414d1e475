"""Full masks: the instance's mask (COCO RLE), drawn by the annotator; salis's default kind."""

from __future__ import annotations

import math
from typing import Any

from pycocotools import mask as mask_utils

from salis.annotation.kinds.base import AnnotatorView, SLACK_PX, LabelKind, Parser, percent, region_labels
from salis.data.coco_checks import check_compressed, counts_str, rle_areas, to_rle
from salis.errors import InputError
from salis.params import CostParams


class MaskKind(LabelKind):
    name = "mask"
    geometry = "masks (segmentation)"
    task = "instance masks (polygons or brush masks), one per object"
    training = "full"
    region_type = "polygonlabels"

    def seconds_per_instance(self, cost: CostParams) -> float:
        return cost.mask_seconds_per_instance

    def derive(self, view: AnnotatorView) -> list[dict]:
        return [dict(a) for a in view.truth]

    def request_annotation(self, prediction: dict) -> dict:
        return {"segmentation": prediction["polygons"]}

    def label_studio_value(self, prediction: dict, width: int, height: int, label: list[str]) -> dict:
        poly = prediction["outline"]
        points = [[percent(x, width), percent(y, height)] for x, y in zip(poly[0::2], poly[1::2])]
        return {"points": points, "closed": True, "polygonlabels": label}

    def label_studio_control(self, categories: list[dict]) -> str:
        return region_labels("PolygonLabels", ' strokeWidth="2" pointSize="small" opacity="0.5"', categories)

    def recognises(self, entry: dict) -> bool:
        seg = entry.get("segmentation")
        return (isinstance(seg, list) and any(isinstance(p, list) and p for p in seg)) or isinstance(seg, dict)

    def accepts(self, entry: dict, found: LabelKind | None) -> bool:
        # CVAT writes a box drawn in a mask task as an empty segmentation: the parser refuses it as
        # an empty mask, which says what to do in a mask batch
        return "segmentation" in entry or super().accepts(entry, found)

    def parser(self, requested, path) -> "MaskParser":
        return MaskParser(requested, path)

    def labeled_annotation(self, instance: dict) -> dict:
        box = mask_utils.toBbox(instance["rle"])
        return {
            "category_id": instance["category_id"],
            "bbox": [float(v) for v in box],
            "area": instance["area"],
            "iscrowd": 0,
            "segmentation": {"size": [int(s) for s in instance["rle"]["size"]],
                             "counts": counts_str(instance["rle"]["counts"])},
        }


class MaskParser(Parser):
    """Polygons or RLE -> validated compressed RLE; vertices within SLACK_PX outside the image are
    moved onto its border, farther ones refused; compressed strings checked in one batch."""

    def __init__(self, requested, path):
        super().__init__(requested, path)
        self.pending: list[tuple[str, int, int, dict]] = []  # (where, pool id, category id, rle)
        self.clipped = 0

    def add(self, where: str, pool_id: int, category_id: int, entry: dict) -> None:
        if "segmentation" not in entry:
            raise InputError(self.path, f"{where} is missing the required key 'segmentation'")
        image = self.requested[pool_id]
        seg, clipped = clip_polygons(entry["segmentation"], image, where, self.path)
        self.clipped += clipped
        self.pending.append((where, pool_id, category_id, to_rle(seg, image["height"], image["width"], where, self.path)))

    def finish(self) -> tuple[dict[int, list[dict]], int]:
        check_compressed([(where, rle) for where, _, _, rle in self.pending], self.path)
        areas = rle_areas([rle for *_, rle in self.pending])
        seen: set[tuple[int, int, str]] = set()
        for (where, pool_id, category_id, rle), area in zip(self.pending, areas):
            key = (pool_id, category_id, counts_str(rle["counts"]))
            if key in seen:  # the same mask twice (a double submit): one instance, not two
                self.duplicates.append(where)
                continue
            seen.add(key)
            if area <= 0:
                raise InputError(self.path, f"{where} (image {self.requested[pool_id]['file_name']!r}) has an empty "
                                            "mask; every instance needs a mask (delete it, or draw its outline)")
            self.per_image[pool_id].append({"category_id": category_id, "rle": rle, "area": float(area)})
        self.warn_duplicates()
        return self.per_image, self.clipped


def clip_polygons(seg: Any, image: dict, where: str, path) -> tuple[Any, int]:
    """Move vertices within SLACK_PX outside the image onto its border; refuse farther ones.

    Only well-formed polygons are touched; anything else goes on to to_rle, which names the problem.
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
            if v < -SLACK_PX or v > limit + SLACK_PX:
                x, y = poly[k - k % 2], poly[k - k % 2 + 1]
                raise InputError(path, f"{where} segmentation[{j}] has the vertex ({x:g}, {y:g}) outside the "
                                       f"{width}x{height} image {image['file_name']!r}")
            c = min(max(float(v), 0.0), float(limit))
            clipped += c != v
            fixed.append(c)
        out.append(fixed)
    return out, clipped


def _numeric_list(poly: Any) -> bool:
    return isinstance(poly, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in poly
    )
