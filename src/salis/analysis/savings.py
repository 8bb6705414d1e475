"""Label savings across DVC experiments: labels and hours each run needed to reach the random
sampler's final mask AP50 (one run each; `salis compare` does the same over several seeds, with
the same crossing: salis.analysis.curves)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from salis.analysis.curves import crossing, hours_of, usable_rows
from salis.analysis.experiments import BASELINE, WORKSPACE, collect_runs


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _saved(reference: float | None, value: float | None) -> tuple[float | None, float | None]:
    """(reference - value, that as a fraction of the reference); None where undefined."""
    if reference is None or value is None:
        return None, None
    return reference - value, (reference - value) / reference if reference > 0 else None


def label_savings(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], reference: str = "random", metric: str = "mask_AP50"
) -> dict[str, dict[str, Any]]:
    """Labels and hours each experiment needed to reach the reference's final `metric`.

    curves: experiment -> one row per cycle with labeled_images, annotation_hours (cumulative;
    optional) and `metric`. The target is the metric of the reference's last usable row; the
    crossing is salis.analysis.curves.crossing (interpolated between cycles). Experiments that
    never reach the target get None.

    Returns {} when there is no reference run with a usable row (nothing to compare with);
    otherwise, per experiment (the reference included): reference, metric, target,
    reference_labeled_images, reference_annotation_hours, reached, labeled_images,
    annotation_hours, labels_saved, labels_saved_fraction, hours_saved, hours_saved_fraction
    (savings relative to the reference's final counts; None where undefined).
    """
    ref_rows = usable_rows(curves.get(reference, []), metric)
    if not ref_rows:
        return {}
    final = ref_rows[-1]
    target = float(final[metric])
    ref_images, ref_hours = float(final["labeled_images"]), _or_none(hours_of(final))
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(curves):
        images, hours = (_or_none(v) for v in crossing(curves[name], metric, target))
        labels_saved, labels_fraction = _saved(ref_images, images)
        hours_saved, hours_fraction = _saved(ref_hours, hours)
        out[name] = {
            "reference": reference, "metric": metric, "target": target,
            "reference_labeled_images": ref_images, "reference_annotation_hours": ref_hours,
            "reached": images is not None, "labeled_images": images, "annotation_hours": hours,
            "labels_saved": labels_saved, "labels_saved_fraction": labels_fraction,
            "hours_saved": hours_saved, "hours_saved_fraction": hours_fraction,
        }
    return out


def savings_table(root: Path = Path("."), metric: str = "mask_AP50") -> tuple[str | None, dict[str, dict]]:
    """(reference run name, label_savings result); the reference is the workspace when it ran
    the random sampler, else the committed baseline, else the first random experiment found."""
    runs = {run.name: run for run in collect_runs(root)}
    random_runs = [name for name, run in runs.items() if run.sampler == "random"]
    if not random_runs:
        return None, {}
    preferred = [name for name in (WORKSPACE, BASELINE) if name in random_runs]
    reference = preferred[0] if preferred else sorted(random_runs)[0]
    curves = {name: run.curve.to_dict("records") for name, run in runs.items()}
    result = label_savings(curves, reference=reference, metric=metric)
    for name, entry in result.items():
        entry["sampler"] = runs[name].sampler
    return reference, result
