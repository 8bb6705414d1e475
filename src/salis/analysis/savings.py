"""Label savings across DVC experiments: labels and hours each run needed to reach the random
sampler's final mask AP50.

Experiments are git commits under refs/exps (what `dvc exp run` makes); each holds its own
params.yaml and metrics/curve.csv (git-tracked: the metrics are `cache: false`). The
workspace and the committed baseline (HEAD) count as runs too.
"""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path

import yaml

from salis.annotation.cost import label_savings
from salis.errors import SalisError

WORKSPACE = "workspace"
BASELINE = "HEAD"


def _git(args: list[str], cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SalisError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _rows(text: str) -> list[dict]:
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def experiment_runs(root: Path = Path(".")) -> dict[str, tuple[str, list[dict]]]:
    """name -> (sampler, curve rows) for the workspace and every DVC experiment."""
    runs: dict[str, tuple[str, list[dict]]] = {}
    curve, params = root / "metrics" / "curve.csv", root / "params.yaml"
    if curve.is_file() and params.is_file():
        runs[WORKSPACE] = (yaml.safe_load(params.read_text()).get("sampler", "random"), _rows(curve.read_text()))
    refs = _git(["for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"], root).split("\n")
    head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode == 0:  # the committed baseline the experiments branch from
        refs.insert(0, f"{BASELINE} {head.stdout.strip()}")
    for line in filter(None, refs):
        ref, sha = line.split()
        if ref != BASELINE and (ref.count("/") < 3 or ref.endswith(("/exec", "/runs")) or "/exec/" in ref):
            continue  # DVC's bookkeeping refs (e.g. refs/exps/exec/...), not experiments
        try:
            text = _git(["show", f"{sha}:metrics/curve.csv"], root)
            sampler = yaml.safe_load(_git(["show", f"{sha}:params.yaml"], root)).get("sampler", "random")
        except SalisError:
            continue  # an experiment that never reached the report stage
        runs[ref.rsplit("/", 1)[-1]] = (sampler, _rows(text))
    return runs


def savings_table(root: Path = Path("."), metric: str = "mask_AP50") -> tuple[str | None, dict[str, dict]]:
    """(reference run name, label_savings result); the reference is the workspace when it ran
    the random sampler, else the first random experiment found."""
    runs = experiment_runs(root)
    random_runs = [name for name, (sampler, _) in runs.items() if sampler == "random"]
    if not random_runs:
        return None, {}
    preferred = [name for name in (WORKSPACE, BASELINE) if name in random_runs]
    reference = preferred[0] if preferred else sorted(random_runs)[0]
    curves = {name: rows for name, (_, rows) in runs.items()}
    result = label_savings(curves, reference=reference, metric=metric)
    for name, entry in result.items():
        entry["sampler"] = runs[name][0]
    return reference, result
