"""The runs a comparison reads: the workspace, the committed baseline (HEAD) and every DVC
experiment (refs/exps), each with its params.yaml and metrics/curve.csv as git holds them
(the metrics are `cache: false`, so git has them). Nothing is rerun here.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from salis.errors import SalisError

WORKSPACE = "workspace"
BASELINE = "HEAD"
CURVE = "metrics/curve.csv"
PARAMS = "params.yaml"


@dataclasses.dataclass(frozen=True)
class Run:
    name: str  # the experiment's name, or workspace / HEAD
    params: dict[str, Any]  # params.yaml, flattened to dotted keys
    curve: pd.DataFrame  # one row per cycle: cycle, labeled_images, annotation_hours, mask_AP50, ...

    @property
    def sampler(self) -> str:
        return str(self.params.get("sampler", "random"))

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0))

    @property
    def arm(self) -> str:
        """What a comparison groups runs by: the sampler (salis.analysis.compare.ArmRun adds params)."""
        return self.sampler


def git(args: list[str], cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SalisError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


def curve_rows(text: str) -> pd.DataFrame:
    rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(io.StringIO(text))]
    return pd.DataFrame(rows).sort_values("cycle").reset_index(drop=True) if rows else pd.DataFrame()


def _run(name: str, params_text: str, curve_text: str) -> Run | None:
    curve = curve_rows(curve_text)
    if curve.empty:
        return None
    return Run(name, flatten(yaml.safe_load(params_text) or {}), curve)


def experiment_refs(root: Path) -> list[tuple[str, str]]:
    """(name, commit) of every DVC experiment; DVC's bookkeeping refs are left out."""
    out = []
    for line in git(["for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"], root).splitlines():
        ref, sha = line.split()
        if ref.count("/") < 3 or ref.endswith(("/exec", "/runs")) or "/exec/" in ref or "/celery/" in ref:
            continue
        out.append((ref.rsplit("/", 1)[-1], sha))
    return out


def collect_runs(root: Path = Path(".")) -> list[Run]:
    """Every run with a learning curve: experiments first, then HEAD, then the workspace."""
    root = Path(root)
    runs: list[Run] = []
    commits = experiment_refs(root)
    head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode == 0:
        commits.append((BASELINE, head.stdout.strip()))
    for name, sha in commits:
        try:
            run = _run(name, git(["show", f"{sha}:{PARAMS}"], root), git(["show", f"{sha}:{CURVE}"], root))
        except SalisError:
            continue  # a commit that never reached the report stage
        if run is not None:
            runs.append(run)
    if (root / CURVE).is_file() and (root / PARAMS).is_file():
        run = _run(WORKSPACE, (root / PARAMS).read_text(), (root / CURVE).read_text())
        # the workspace counts when it holds a run of its own: after `dvc exp run` (or `salis
        # compare`, which resets params.yaml) its curve is the last experiment's, not its params'
        if run is not None and not any(r.curve.equals(run.curve) for r in runs):
            runs.append(run)
    return runs


def experiment_name(sampler: str, seed: int, overrides: Sequence[str]) -> str:
    """cmp-<sampler>-s<seed>, plus a short hash of the -S overrides when there are any."""
    suffix = f"-{hashlib.sha1(' '.join(sorted(overrides)).encode()).hexdigest()[:6]}" if overrides else ""
    return f"cmp-{sampler}-s{seed}{suffix}"


def with_requirements(sampler: str, overrides: Sequence[str]) -> list[str]:
    """The overrides plus what the sampler needs (e.g. MC passes), unless an override sets it."""
    from salis.acquisition.samplers import SAMPLERS

    given = {o.split("=", 1)[0] for o in overrides}
    return [*overrides, *(r for r in SAMPLERS[sampler].requires if r.split("=", 1)[0] not in given)]


def run_grid(
    samplers: Sequence[str], seeds: Sequence[int], overrides: Sequence[str], jobs: int, root: Path,
    echo: Callable[[str], None] = print,
) -> list[str]:
    """Run every (sampler, seed) as a DVC experiment that does not exist yet; names of those run.

    jobs = 1 runs them one after another (`dvc exp run`); jobs > 1 queues them and starts that
    many DVC queue workers (`dvc exp run --queue`, `dvc queue start -j`), then waits.
    """
    # `dvc exp run` applies -S to the workspace's params.yaml, which still holds the previous
    # run's overrides: without a reset, a run after mc_dropout or learning_loss would inherit
    # score.mc_passes or model.learning_loss. Every run starts from HEAD's params.yaml.
    head_params = git(["show", f"HEAD:{PARAMS}"], root)
    if (root / PARAMS).read_text() != head_params:
        raise SalisError(f"{PARAMS} differs from the committed one: commit it, or pass the change to every run "
                         "with -S KEY=VALUE (each run of the grid starts from HEAD's params.yaml)")
    existing = {name for name, _ in experiment_refs(root)}
    todo = [(s, seed) for seed in seeds for s in samplers if experiment_name(s, seed, overrides) not in existing]
    for s, seed in [(s, seed) for seed in seeds for s in samplers if (s, seed) not in todo]:
        echo(f"{experiment_name(s, seed, overrides)}: already present, not rerun")
    for s, seed in todo:
        name = experiment_name(s, seed, overrides)
        command = ["dvc", "exp", "run", "-n", name, "-S", f"sampler={s}", "-S", f"seed={seed}"]
        command += [arg for o in with_requirements(s, overrides) for arg in ("-S", o)]
        if jobs > 1:
            command.insert(3, "--queue")
        echo(("queue: " if jobs > 1 else "run: ") + " ".join(command))
        (root / PARAMS).write_text(head_params)
        if subprocess.run(command, cwd=root).returncode != 0:
            raise SalisError(f"`{' '.join(command)}` failed; fix it and run `salis compare` again (done runs are kept)")
    (root / PARAMS).write_text(head_params)
    if jobs > 1 and todo:
        if subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=root).returncode != 0:
            raise SalisError("`dvc queue start` failed")
        _wait_for_queue(root, echo)
    return [experiment_name(s, seed, overrides) for s, seed in todo]


def _wait_for_queue(root: Path, echo: Callable[[str], None], poll_seconds: float = 10.0) -> None:
    while True:
        status = subprocess.run(["dvc", "queue", "status"], cwd=root, capture_output=True, text=True).stdout
        busy = [line for line in status.splitlines() if " Queued " in f" {line} " or " Running " in f" {line} "]
        failed = [line for line in status.splitlines() if " Failed " in f" {line} "]
        if failed:
            raise SalisError(f"{len(failed)} queued experiments failed; `dvc queue logs <name>` says why")
        if not busy:
            return
        echo(f"waiting for {len(busy)} queued experiments ...")
        time.sleep(poll_seconds)


def run_rows(runs: Sequence[Run], metric: str = "mask_AP50") -> pd.DataFrame:
    """One row per run, what a user compares: sampler, seed, cycles, labels, hours, final metric."""
    rows = []
    for run in runs:
        last = run.curve.iloc[-1]
        rows.append({
            "run": run.name,
            "sampler": run.sampler,
            "seed": run.seed,
            "cycles": len(run.curve),
            "labeled_images": int(last.get("labeled_images", 0)),
            "annotation_hours": float(last.get("annotation_hours", float("nan"))),
            f"final_{metric}": float(last.get(metric, float("nan"))),
            f"best_{metric}": float(run.curve[metric].max()) if metric in run.curve else float("nan"),
        })
    return pd.DataFrame(rows)


BASELINE_PATHS = ("dvc.lock", "params.yaml", "metrics", "data", "models", "labels", ".gitignore")


def record_baseline(root: Path) -> str:
    """Commit the workspace's finished run as the baseline that `dvc metrics diff`, `dvc exp diff`,
    `salis savings` and experiments start from; returns the commit message."""
    root = Path(root)
    if not (root / CURVE).is_file() or not (root / "dvc.lock").is_file():
        raise SalisError(f"no finished run in {root.resolve()} ({CURVE} is missing): run `dvc repro` first")
    stale = subprocess.run(["dvc", "status", "-q"], cwd=root, capture_output=True, text=True)
    if stale.returncode != 0:
        raise SalisError("the workspace is not what dvc.lock records (`dvc status` lists changes): run `dvc repro` "
                         "to finish the run, then `salis baseline`")
    run = _run(BASELINE, (root / PARAMS).read_text(), (root / CURVE).read_text())
    assert run is not None
    last = run.curve.iloc[-1]
    message = (f"baseline: sampler {run.sampler}, seed {run.seed}, {len(run.curve)} cycles, "
               f"mask AP50 {last['mask_AP50']:.3f} at {int(last['labeled_images'])} labeled images")
    git(["add", "--", *[p for p in BASELINE_PATHS if (root / p).exists()]], root)
    if not git(["diff", "--cached", "--name-only"], root).strip():
        raise SalisError("nothing to record: HEAD already holds this run (`git log -1` shows it)")
    git(["commit", "-q", "-m", message], root)
    return message


def save_runs(runs: Sequence[Run], path: Path) -> None:
    """The runs of a report as JSON (name, flattened params, curve rows), so a later report, on
    this machine or another, can include them without their DVC experiments (`--include`)."""
    from salis.artifacts.atomic import write_text
    import json

    records = [{"name": r.name, "params": r.params, "curve": r.curve.to_dict(orient="records")} for r in runs]
    write_text(path, json.dumps(records, indent=1, default=str) + "\n")


def load_runs(path: Path) -> list[Run]:
    """Runs saved by save_runs; a file that is not such a list is refused by name."""
    import json

    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise SalisError(f"{path}: no such file (a runs.json written by `salis compare`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SalisError(f"{path}: not a runs.json written by `salis compare` ({err})") from None
    ok = isinstance(records, list) and all(
        isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("params"), dict)
        and isinstance(r.get("curve"), list) and r["curve"] for r in records
    )
    if not ok:
        raise SalisError(f"{path}: expected a list of {{name, params, curve}} runs as `salis compare` writes them")
    runs = []
    for r in records:
        curve = pd.DataFrame(r["curve"])
        if "cycle" not in curve.columns:
            raise SalisError(f"{path}: run {r['name']!r} has a curve without a cycle column")
        runs.append(Run(r["name"], r["params"], curve.sort_values("cycle").reset_index(drop=True)))
    return runs
