"""Learning curves: where a curve first reaches a target value, and its normalized area.

One definition for every report: `salis savings` (one run each) and `salis compare` (paired by
seed) both ask `crossing` how many labeled images and annotation hours a run needed to reach the
reference's final metric, so the two can never disagree on a run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def usable_rows(rows: Sequence[Mapping[str, Any]], metric: str) -> list[Mapping[str, Any]]:
    """The curve's cycles in order of labeled images, without rows whose metric or labeled-image
    count is missing or not finite (a cycle whose evaluation did not run)."""
    usable = [r for r in rows if _finite(r.get(metric)) and _finite(r.get("labeled_images"))]
    return sorted(usable, key=lambda r: float(r["labeled_images"]))


def hours_of(row: Mapping[str, Any]) -> float:
    value = row.get("annotation_hours")
    return float(value) if _finite(value) else math.nan


def crossing(rows: Sequence[Mapping[str, Any]], metric: str, target: float) -> tuple[float, float]:
    """(labeled images, annotation hours) where the curve first reaches `target`, linearly
    interpolated between the last cycle below it and the first at or above it (the curve is taken
    as linear between two cycles); a first cycle already there gives its own counts. NaN for a
    curve that never reaches it; hours NaN where the rows carry none."""
    previous = None
    for row in usable_rows(rows, metric):
        value = float(row[metric])
        if value >= target:
            if previous is None:
                return float(row["labeled_images"]), hours_of(row)
            t = (target - float(previous[metric])) / (value - float(previous[metric]))
            lerp = lambda a, b: a + t * (b - a)  # noqa: E731
            return (lerp(float(previous["labeled_images"]), float(row["labeled_images"])),
                    lerp(hours_of(previous), hours_of(row)))
        previous = row
    return math.nan, math.nan
