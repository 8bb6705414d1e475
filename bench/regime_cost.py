"""What the learner's regime costs against the one before it: one whole `salis compare` run of each
(random sampler, one seed, every cycle), side by side on this machine, each in its own clone of the
repository at one torch thread, timed by its process tree's CPU seconds (user + system, every stage
and every DVC process included) and by wall clock.

    python bench/regime_cost.py [--params examples/dsb2018/params.yaml] [--seed 0]
        [--work /tmp/regime_cost] [--out bench/results/regime_cost.json]

The arms: `new` is the params file as it stands (cycle 1 from scratch for
train.cold_start_iterations, later cycles train.min_iterations); `old` overrides it back to the
regime before (100 / 100 / 150 iterations: -S train.min_iterations=100 -S
train.cold_start_iterations=0 -S pseudo.gate=fixed). Both start at once, so both share whatever
else the machine runs; CPU seconds are the fair figure when it is busy, wall seconds when it is idle.
Each arm's mask AP50 per cycle is recorded too, to check the runs are the ones the reports hold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_REGIME = ["-S", "train.min_iterations=100", "-S", "train.cold_start_iterations=0", "-S", "pseudo.gate=fixed"]


def make_clone(work: Path, name: str, params: Path) -> Path:
    """A clone of the repository's HEAD with `params` as its committed params.yaml."""
    clone = work / name
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    shutil.copyfile(params, clone / "params.yaml")  # one torch thread comes from start_arm's -S
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@local"]
    subprocess.run([*git, "add", "-f", "params.yaml"], cwd=clone, check=True)
    subprocess.run([*git, "commit", "-qm", "bench params"], cwd=clone, check=True)
    return clone


def start_arm(clone: Path, out: Path, seed: int, overrides: list[str]) -> tuple[subprocess.Popen, float]:
    bin_dir = str(Path(sys.executable).parent)  # the environment's salis, dvc and python for the stages
    env = os.environ | {"PYTHONPATH": str(clone / "src"), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(Path(bin_dir) / "salis"), "compare", "--samplers", "random", "--seeds", str(seed),
           "-S", "runtime.threads=1", *overrides, "--out", str(out)]
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT), time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="examples/dsb2018/params.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/regime_cost")
    parser.add_argument("--out", default="bench/results/regime_cost.json")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    arms = {"old": OLD_REGIME, "new": []}
    running = {}
    for name, overrides in arms.items():
        clone = make_clone(work, f"clone_{name}", (ROOT / args.params).resolve())
        running[name] = start_arm(clone, work / f"out_{name}", args.seed, overrides)
    rows = {}
    by_pid = {proc.pid: name for name, (proc, _) in running.items()}
    while by_pid:  # whichever arm ends first: its wall clock stops then
        pid, status, usage = os.wait4(-1, 0)  # the child's rusage covers its waited-for descendants
        name = by_pid.pop(pid, None)
        if name is None:
            continue
        proc, started = running[name]
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            sys.exit(f"bench/regime_cost.py: the {name} arm failed (rc {proc.returncode}); see {work}/out_{name}.log")
        runs = json.loads((work / f"out_{name}" / "runs.json").read_text())
        rows[name] = {"overrides": " ".join(arms[name]), "wall_seconds": round(wall, 1),
                      "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                      "mask_AP50": [round(c["mask_AP50"], 4) for c in runs[0]["curve"]]}
        print(f"{name}: {rows[name]}")
    result = {"params": args.params, "seed": args.seed, "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
              "arms": rows, "cpu_ratio": round(rows["new"]["cpu_seconds"] / rows["old"]["cpu_seconds"], 2),
              "wall_ratio": round(rows["new"]["wall_seconds"] / rows["old"]["wall_seconds"], 2)}
    print(f"new / old: CPU {result['cpu_ratio']}x, wall {result['wall_ratio']}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
