"""Label savings across DVC experiments: labels and hours each run needed to reach the random
sampler's final mask AP50 (one run each; `salis compare` does the same over several seeds)."""

from __future__ import annotations

from pathlib import Path

from salis.analysis.experiments import BASELINE, WORKSPACE, collect_runs
from salis.annotation.cost import label_savings


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
