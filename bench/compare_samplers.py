"""Run several samplers on one dataset as DVC experiments and print mask AP50 per cycle.

    python bench/compare_samplers.py --project DIR [--cycles 3] [--samplers random entropy tsp beta_iou]
        [--params-file examples/dsb2018/params.yaml] [-S key=value ...]

DIR becomes a fresh copy of this repository (git init, dvc init), with params from
--params-file (default: params.yaml), cut to --cycles cycles. The first sampler runs as
`dvc repro`, the others as `dvc exp run -S sampler=NAME` (cycle 1 is reused from cache).
The table is printed and written to DIR/comparison.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def sh(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env["PYTHONPATH"] = str(cwd / "src")  # the project's frozen copy, not the live checkout
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def _absolute(value: str | None) -> str | None:
    """Dataset paths in params are relative to the repository root: keep them valid from DIR."""
    if value and not Path(value).is_absolute() and (ROOT / value).exists():
        return str((ROOT / value).resolve())
    return value


def setup(project: Path, params_file: Path, cycles: int, overrides: list[str]) -> None:
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    for name in ("dvc.yaml", "stages", "src", "labels"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, project / name)
    params = yaml.safe_load(params_file.read_text())
    params["cycles"] = {f"c{k}": {"k": k, "prev": k - 1, "next": k + 1} for k in range(1, cycles + 1)}
    for item in overrides:
        key, value = item.split("=", 1)
        node = params
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = yaml.safe_load(value)
    if params["data"]["source"] == "coco":
        params["data"]["watch"] = _absolute(params["data"]["watch"])
        for key in ("instances", "images", "test_instances", "test_images"):
            params["data"]["coco"][key] = _absolute(params["data"]["coco"].get(key))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["git", "init", "-q"], ["git", "config", "user.email", "bench@salis"], ["git", "config", "user.name", "bench"],
                 ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench project"]):
        sh(args, project)


def ap50_column(project: Path) -> list[float]:
    text = (project / "metrics" / "curve.csv").read_text()
    return [float(row["mask_AP50"]) for row in csv.DictReader(io.StringIO(text))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--params-file", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--samplers", nargs="+", default=["random", "entropy", "tsp", "beta_iou"])
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value for params.yaml")
    args = parser.parse_args()

    setup(args.project, args.params_file, args.cycles, args.overrides)
    results, seconds = {}, {}
    for i, sampler in enumerate(args.samplers):
        start = time.perf_counter()
        if i == 0:
            params_path = args.project / "params.yaml"
            params_path.write_text(params_path.read_text().replace("sampler: random", f"sampler: {sampler}", 1))
            sh(["dvc", "repro"], args.project)
            sh(["git", "add", "-A"], args.project)
            sh(["git", "commit", "-qm", f"baseline: {sampler}"], args.project)
        else:
            sh(["dvc", "exp", "run", "-n", f"cmp-{sampler}", "-S", f"sampler={sampler}"], args.project)
        results[sampler] = ap50_column(args.project)
        seconds[sampler] = time.perf_counter() - start
        print(f"{sampler}: {results[sampler]} ({seconds[sampler]:.0f} s)", flush=True)

    header = "| sampler | " + " | ".join(f"cycle {k}" for k in range(1, args.cycles + 1)) + " | wall time |"
    lines = [header, "|" + "---|" * (args.cycles + 2)]
    for sampler, values in results.items():
        lines.append(f"| {sampler} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {seconds[sampler] / 60:.1f} min |")
    table = "\n".join(lines)
    print(table)
    (args.project / "comparison.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
