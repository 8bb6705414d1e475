"""What labels cost: seconds per image from a per-instance / per-category model, hours and money.

Defaults come from the literature, as used by Bellver et al. (CVPR-W 2019, "Budget-aware
semi-supervised semantic and instance segmentation"):

- full mask: 79 s per instance plus 1 s per category checked (Bearman et al., ECCV 2016,
  "What's the point", from the COCO annotation statistics);
- box: 7 s per box (Papadopoulos et al., ICCV 2017, "Extreme clicking");
- point: 2.4 s per clicked point (Bearman et al.);
- image-level label: 1 s per category checked (Bearman et al.), plus 0.8 s per instance counted
  (Bellver et al. measured 20.0 s per PASCAL image for labels, 22.2 s for labels and counts:
  2.2 s more for about 2.7 instances).

Every label type pays the per-category check: the annotator looks at each category once per
image to decide whether it is present, whatever the count. Each labeled image is priced by its
own label type (a mixed batch holds several).

The label-savings comparison (label_savings) answers: how many labeled images and annotation
hours did an experiment need to reach the final mask AP50 of the random sampler?
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from salis.errors import ParamsError
from salis.params import LABEL_TYPES, CostParams

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class CostModel:
    """Annotation time per image, and money at `hourly_rate` currency units per annotator hour.

    hourly_rate is in whatever currency the user budgets in (0 leaves money out: every money
    figure is then 0).
    """

    mask_seconds_per_instance: float = 79.0
    seconds_per_category_checked: float = 1.0
    box_seconds: float = 7.0
    point_seconds: float = 2.4
    image_label_seconds_per_category: float = 1.0
    count_seconds_per_instance: float = 0.8
    hourly_rate: float = 0.0

    @classmethod
    def from_params(cls, params: CostParams) -> "CostModel":
        return cls(**asdict(params))

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0:
                raise ParamsError(f"annotation cost: {f.name} must be a non-negative number, got {value!r}")

    def seconds_per_instance(self, label_type: str = "mask") -> float:
        """The per-instance time of a label type (counting, for image-level labels)."""
        return {
            "mask": self.mask_seconds_per_instance,
            "box": self.box_seconds,
            "point": self.point_seconds,
            "image": self.count_seconds_per_instance,
        }[_checked(label_type)]

    def seconds_per_category(self, label_type: str = "mask") -> float:
        if _checked(label_type) == "image":
            return self.image_label_seconds_per_category
        return self.seconds_per_category_checked

    def image_seconds(self, num_instances: float, num_categories: int, label_type: str = "mask") -> float:
        """Seconds to label one image holding num_instances objects, num_categories categories checked."""
        if num_instances < 0 or num_categories < 0:
            raise ValueError(f"counts must be non-negative, got {num_instances} instances, {num_categories} categories")
        return self.seconds_per_instance(label_type) * num_instances + self.seconds_per_category(label_type) * num_categories

    def cost_table(
        self, instances_per_image: Mapping[int, int], num_categories: int, label_types: Mapping[int, str] | None = None
    ) -> pd.DataFrame:
        """One row per image (sorted by id): image_id, label_type, instances, seconds (masks unless
        label_types says otherwise)."""
        ids = sorted(int(i) for i in instances_per_image)
        counts = np.array([int(instances_per_image[i]) for i in ids], dtype=np.int64)
        if (counts < 0).any():
            raise ValueError("instance counts must be non-negative")
        if num_categories < 0:
            raise ValueError(f"num_categories must be non-negative, got {num_categories}")
        types = [str((label_types or {}).get(i, "mask")) for i in ids]
        seconds = [self.image_seconds(int(n), num_categories, t) for n, t in zip(counts, types)]
        return pd.DataFrame(
            {
                "image_id": np.array(ids, dtype=np.int64),
                "label_type": types,
                "instances": counts,
                "seconds": np.array(seconds, dtype=np.float64),
            }
        )

    def money(self, seconds: float) -> float:
        return seconds / SECONDS_PER_HOUR * self.hourly_rate

    def cumulative_hours_and_money(self, costs: pd.DataFrame, cycles: Sequence[int] | None = None) -> pd.DataFrame:
        """Per cycle: what that cycle's new labels cost, and the running totals.

        `costs` has one row per labeled image with columns cycle (the cycle whose training
        first uses the image, as in the labeled table) and seconds (from cost_table).
        `cycles` lists every cycle to report, so a cycle that added no labels still gets a
        row carrying the totals forward. Columns: cycle, images, seconds, annotation_hours,
        money, cumulative_annotation_hours, cumulative_money.
        """
        missing = {"cycle", "seconds"} - set(costs.columns)
        if missing:
            raise ValueError(f"costs needs the columns cycle and seconds; missing {sorted(missing)}")
        grouped = costs.groupby("cycle")["seconds"].agg(["count", "sum"])
        wanted = sorted({int(c) for c in (cycles or [])} | {int(c) for c in grouped.index})
        grouped = grouped.reindex(wanted, fill_value=0)
        seconds = grouped["sum"].to_numpy(dtype=np.float64)
        hours = seconds / SECONDS_PER_HOUR
        return pd.DataFrame(
            {
                "cycle": np.array(wanted, dtype=np.int64),
                "images": grouped["count"].to_numpy(dtype=np.int64),
                "seconds": seconds,
                "annotation_hours": hours,
                "money": hours * self.hourly_rate,
                "cumulative_annotation_hours": np.cumsum(hours),
                "cumulative_money": np.cumsum(hours) * self.hourly_rate,
            }
        )


def _checked(label_type: str) -> str:
    if label_type not in LABEL_TYPES:
        raise ValueError(f"unknown label type {label_type!r}; label types are {', '.join(LABEL_TYPES)}")
    return label_type


def instances_per_image(annotations: Iterable[Mapping[str, Any]], image_ids: Iterable[int]) -> dict[int, int]:
    """Instances per image from COCO annotations; every listed image gets a count, 0 included.

    The simulated mode feeds the oracle's ground truth, the human mode the imported labels:
    the cost of an image is what its labels hold, whoever drew them.
    """
    counts = {int(i): 0 for i in image_ids}
    for ann in annotations:
        image_id = int(ann["image_id"])
        if image_id in counts:
            counts[image_id] += 1
    return counts


# --- label savings ------------------------------------------------------------------------


def label_savings(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], reference: str = "random", metric: str = "mask_AP50"
) -> dict[str, dict[str, Any]]:
    """Labels and hours each experiment needed to reach the reference's final `metric`.

    curves: experiment -> one row per cycle with labeled_images, annotation_hours (cumulative;
    optional) and `metric`. Rows are ordered by labeled_images; rows whose metric is missing
    or not finite are skipped. The target is the metric of the reference's last row.

    The crossing is linearly interpolated between the last cycle below the target and the
    first one at or above it (the learning curve is assumed linear between two cycles), so
    the numbers are fractional; a first cycle that already reaches the target gives its own
    counts. Experiments that never reach the target get None.

    Returns {} when there is no reference run with a usable row (nothing to compare with);
    otherwise, per experiment (the reference included): reference, metric, target,
    reference_labeled_images, reference_annotation_hours, reached, labeled_images,
    annotation_hours, labels_saved, labels_saved_fraction, hours_saved, hours_saved_fraction
    (savings relative to the reference's final counts; None where undefined).
    """
    ref_rows = _usable_rows(curves.get(reference, []), metric)
    if not ref_rows:
        return {}
    final = ref_rows[-1]
    target = float(final[metric])
    ref_images = float(final["labeled_images"])
    ref_hours = _hours(final)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(curves):
        images, hours = _crossing(_usable_rows(curves[name], metric), metric, target)
        out[name] = {
            "reference": reference,
            "metric": metric,
            "target": target,
            "reference_labeled_images": ref_images,
            "reference_annotation_hours": ref_hours,
            "reached": images is not None,
            "labeled_images": images,
            "annotation_hours": hours,
            "labels_saved": _diff(ref_images, images),
            "labels_saved_fraction": _fraction(ref_images, images),
            "hours_saved": _diff(ref_hours, hours),
            "hours_saved_fraction": _fraction(ref_hours, hours),
        }
    return out


def _usable_rows(rows: Sequence[Mapping[str, Any]], metric: str) -> list[Mapping[str, Any]]:
    usable = [r for r in rows if _finite(r.get(metric)) and _finite(r.get("labeled_images"))]
    return sorted(usable, key=lambda r: float(r["labeled_images"]))


def _crossing(rows: list[Mapping[str, Any]], metric: str, target: float) -> tuple[float | None, float | None]:
    previous = None
    for row in rows:
        value = float(row[metric])
        if value >= target:
            if previous is None:
                return float(row["labeled_images"]), _hours(row)
            t = (target - float(previous[metric])) / (value - float(previous[metric]))
            images = _lerp(float(previous["labeled_images"]), float(row["labeled_images"]), t)
            before, after = _hours(previous), _hours(row)
            hours = None if before is None or after is None else _lerp(before, after, t)
            return images, hours
        previous = row
    return None, None


def _lerp(a: float, b: float, t: float) -> float:
    return a + t * (b - a)


def _hours(row: Mapping[str, Any]) -> float | None:
    value = row.get("annotation_hours")
    return float(value) if _finite(value) else None


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _diff(reference: float | None, value: float | None) -> float | None:
    return None if reference is None or value is None else reference - value


def _fraction(reference: float | None, value: float | None) -> float | None:
    if reference is None or value is None or reference <= 0:
        return None
    return (reference - value) / reference
