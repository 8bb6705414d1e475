"""The learning curve over active-learning cycles: curve.csv and summary.json.

Each cycle's evaluation leaves ``metrics_dir/<k>.json``; this module gathers those of the params' cycles,
sorts by cycle and writes one CSV row per cycle (for ``dvc plots``) and a summary
(for ``dvc metrics show``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from salis.artifacts.atomic import write_json, write_text
from salis.errors import InputError

# Keys every per-cycle metric file must carry.
REQUIRED_KEYS = (
    "cycle",
    "labeled_images",
    "labeled_instances",
    "pseudo_images",
    "pseudo_instances",
    "mask_AP",
    "mask_AP50",
    "mask_AP75",
    "box_AP",
    "mask_AR",
)
# curve.csv's leading columns, always present and in this order (a stable header keeps
# plots and diffs comparable); extra numeric keys follow, sorted.
CURVE_COLUMNS = (
    "cycle",
    "labeled_images",
    "labeled_instances",
    "pseudo_images",
    "pseudo_instances",
    "mask_AP",
    "mask_AP50",
    "mask_AP75",
    "box_AP",
    "box_AP50",
    "mask_AR",
)


def build_report(cycle_metrics: list[dict]) -> tuple[list[dict], dict]:
    """(curve rows sorted by cycle, summary) from per-cycle metric dicts.

    Rows hold the CURVE_COLUMNS a cycle has, then its extra numeric keys sorted.
    The best mask_AP50 cycle is the earliest one on a tie.
    """
    if not cycle_metrics:
        raise ValueError("no cycle metrics to report")
    for metrics in cycle_metrics:
        _check_metrics(metrics)
    ordered = sorted(cycle_metrics, key=lambda m: m["cycle"])
    _check_unique_cycles(ordered)
    rows = [_curve_row(m) for m in ordered]
    return rows, _summary(ordered)


def write_report(metrics_dir: Path, curve_csv: Path, summary_json: Path, cycles: Sequence[int]) -> None:
    """Read metrics_dir/<k>.json for each of `cycles` and write curve_csv and summary_json
    atomically. Only the pipeline's own cycles: a file left by a longer run before (the stages of
    cycles no longer in params are gone, their files are not) must not enter this run's curve."""
    if not cycles:
        raise InputError(metrics_dir, "no cycles to report")
    paths = [Path(metrics_dir) / f"{k}.json" for k in sorted(cycles)]
    for k, path in zip(sorted(cycles), paths):
        if not path.is_file():
            raise InputError(path, f"missing; evaluate@c{k} writes it")
    cycle_metrics = [_read_metrics(p) for p in paths]
    for k, path, metrics in zip(sorted(cycles), paths, cycle_metrics):
        if metrics["cycle"] != k:
            raise InputError(path, f"reports cycle {metrics['cycle']}, not {k}")
    rows, summary = build_report(cycle_metrics)
    write_text(curve_csv, _to_csv(rows))
    write_json(summary_json, summary)


def _check_metrics(metrics: dict) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"cycle metrics lack {', '.join(missing)}")
    cycle = metrics["cycle"]
    if not isinstance(cycle, int) or isinstance(cycle, bool):
        raise ValueError(f"cycle must be an integer, got {cycle!r}")


def _check_unique_cycles(ordered: list[dict]) -> None:
    cycles = [m["cycle"] for m in ordered]
    duplicates = sorted({c for c in cycles if cycles.count(c) > 1})
    if duplicates:
        raise ValueError(f"cycles reported more than once: {duplicates}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _curve_row(metrics: dict) -> dict:
    row = {k: metrics[k] for k in CURVE_COLUMNS if k in metrics}
    extras = sorted(k for k, v in metrics.items() if k not in CURVE_COLUMNS and _is_number(v))
    row.update((k, metrics[k]) for k in extras)
    return row


FINAL_KEYS = ("cycle", "labeled_images", "annotation_hours", "pseudo_images", "mask_AP", "mask_AP50", "mask_AP75", "box_AP")


def _summary(ordered: list[dict]) -> dict:
    first, last = ordered[0], ordered[-1]
    # max() keeps the first maximum, so a tie goes to the earliest cycle.
    best = max(ordered, key=lambda m: m["mask_AP50"])
    return {
        "cycles": len(ordered),
        # a few headline numbers only: per-cycle files already hold the rest
        "final": {k: last[k] for k in FINAL_KEYS if k in last},
        "best_mask_AP50": best["mask_AP50"],
        "best_mask_AP50_cycle": best["cycle"],
        "mask_AP50_gain": last["mask_AP50"] - first["mask_AP50"],
        "labeled_images_final": last["labeled_images"],
    }


def _read_metrics(path: Path) -> dict:
    """One cycle's metrics; InputError naming the file when it is not usable."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(metrics, dict):
        raise InputError(path, "expected a JSON object of metrics")
    try:
        _check_metrics(metrics)
    except ValueError as exc:
        raise InputError(path, str(exc)) from exc
    return metrics


def _to_csv(rows: list[dict]) -> str:
    extras = sorted({k for row in rows for k in row} - set(CURVE_COLUMNS))
    buffer = io.StringIO()
    fieldnames = [*CURVE_COLUMNS, *extras]
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    # An empty cell rather than "nan": plot readers treat both as missing, and it is plainer.
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value
