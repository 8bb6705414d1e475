"""Boxes: the instance's tight box (COCO xywh), no mask; trained with box supervision (BoxInst)."""

from __future__ import annotations

from salis.annotation.kinds.base import AnnotatorView, SLACK_PX, LabelKind, Parser, finite_number, percent, region_labels
from salis.errors import InputError
from salis.params import CostParams


class BoxKind(LabelKind):
    name = "box"
    geometry = "boxes (bbox)"
    task = "a tight box around each object"
    training = "boxes"
    region_type = "rectanglelabels"
    recognition_rank = 2  # anything with a bbox: asked after the more specific kinds

    def seconds_per_instance(self, cost: CostParams) -> float:
        return cost.box_seconds

    def derive(self, view: AnnotatorView) -> list[dict]:
        return [{"category_id": int(a["category_id"]), "bbox": [float(v) for v in a["bbox"]]} for a in view.truth]

    def request_annotation(self, prediction: dict) -> dict:
        return {"segmentation": []}

    def label_studio_value(self, prediction: dict, width: int, height: int, label: list[str]) -> dict:
        x, y, bw, bh = prediction["bbox"]
        return {"x": percent(x, width), "y": percent(y, height), "width": percent(bw, width),
                "height": percent(bh, height), "rotation": 0, "rectanglelabels": label}

    def label_studio_control(self, categories: list[dict]) -> str:
        return region_labels("RectangleLabels", ' strokeWidth="2"', categories)

    def recognises(self, entry: dict) -> bool:
        return "bbox" in entry

    def parser(self, requested, path) -> "BoxParser":
        return BoxParser(requested, path)


class BoxParser(Parser):
    def add(self, where: str, pool_id: int, category_id: int, entry: dict) -> None:
        image, path = self.requested[pool_id], self.path
        bbox = entry.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise InputError(path, f"{where} needs a bbox [x, y, width, height], got {bbox!r}")
        x, y, w, h = (finite_number(v, f"{where} bbox", path) for v in bbox)
        if w <= 0 or h <= 0:
            raise InputError(path, f"{where} bbox {bbox} has a non-positive width or height")
        width, height = image["width"], image["height"]
        outside = f"{where} bbox {bbox} lies outside the {width}x{height} image {image['file_name']!r}"
        if x < -SLACK_PX or y < -SLACK_PX or x + w > width + SLACK_PX or y + h > height + SLACK_PX:
            raise InputError(path, outside)
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(width)), min(y + h, float(height))
        if x1 <= x0 or y1 <= y0:
            raise InputError(path, outside)
        self.keep(where, pool_id, {"category_id": category_id, "bbox": [x0, y0, x1 - x0, y1 - y0]})
