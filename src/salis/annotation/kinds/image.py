"""Image-level labels: per category, whether it is present and how many instances it has; the
counts live on the image entry, there are no annotations. The weak_label stage keeps the model's
best detections of the present classes, up to each count (salis.loop.weak)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from xml.sax.saxutils import quoteattr

from salis.annotation.kinds.base import AnnotatorView, COUNT_PREFIX, MAX_COUNT, PRESENT_NAME, TO_NAME, LabelKind
from salis.errors import InputError
from salis.params import CostParams


class ImageKind(LabelKind):
    name = "image"
    geometry = "image-level counts"
    task = ("for each category: is it present, and how many instances (fill each image's `counts` in "
            "COCO as {category name: number}; in Label Studio the Choices and Number fields)")
    training = "weak"
    image_level = True

    def seconds_per_instance(self, cost: CostParams) -> float:
        return cost.count_seconds_per_instance

    def seconds_per_category(self, cost: CostParams) -> float:
        return cost.image_label_seconds_per_category

    def derive(self, view: AnnotatorView) -> list[dict]:
        return []

    def image_fields(self, view: AnnotatorView) -> dict:
        return {"counts": image_counts(view.truth, view.category_ids)}

    def request_annotation(self, prediction: dict) -> dict:
        raise ValueError("image-level requests carry no annotations")

    def label_studio_results(self, predictions: list[dict], image: dict, names: Mapping[int, str],
                             categories: list[dict]) -> list[dict]:
        """The predicted classes as choices and their counts as numbers."""
        counts = {c["id"]: 0 for c in categories}
        for p in predictions:
            counts[p["category_id"]] += 1
        present = [c["name"] for c in categories if counts[c["id"]]]
        if not present:
            return []
        out = [{"id": "present", "from_name": PRESENT_NAME, "to_name": TO_NAME, "type": "choices",
                "value": {"choices": present}}]
        out += [{"id": f"n{c['id']}", "from_name": f"{COUNT_PREFIX}{c['id']}", "to_name": TO_NAME, "type": "number",
                 "value": {"number": counts[c["id"]]}} for c in categories if counts[c["id"]]]
        return out

    def label_studio_control(self, categories: list[dict]) -> str:
        choices = "\n".join(f"    <Choice value={quoteattr(c['name'])}/>" for c in categories)
        numbers = "\n".join(
            f'  <Header value={quoteattr("How many " + c["name"] + "?")}/>\n'
            f'  <Number name="{COUNT_PREFIX}{c["id"]}" toName="{TO_NAME}" min="0" defaultValue="0"/>'
            for c in categories
        )
        return (f'  <Choices name="{PRESENT_NAME}" toName="{TO_NAME}" choice="multiple" showInline="true">\n'
                f"{choices}\n  </Choices>\n{numbers}\n")

    def parse_image(self, entry: dict, where: str, path, project_ids: Mapping[str, int],
                    unknown: set[str]) -> dict | None:
        if "counts" not in entry:
            return None
        counts = _counts(entry["counts"], where, path, project_ids, unknown)
        return {"counts": [{"category_id": c, "count": counts.get(c, 0)} for c in sorted(project_ids.values())]}


def image_counts(annotations: Iterable[Mapping[str, Any]], category_ids: Iterable[int]) -> list[dict]:
    """[{category_id, count}] for every category (0 = absent), in category id order."""
    counts = {int(c): 0 for c in category_ids}
    for ann in annotations:
        counts[int(ann["category_id"])] += 1
    return [{"category_id": c, "count": n} for c, n in sorted(counts.items())]


def _counts(raw: Any, where: str, path, project_ids: Mapping[str, int], unknown: set[str]) -> dict[int, int]:
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
