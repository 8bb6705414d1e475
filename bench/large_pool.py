"""Large-pool benchmark: infer_score over 20,000+ small built-in images with 1 and 2 processes.

  python bench/large_pool.py                      # 20,000 pool images of 64 px, 1 and 2 processes
  python bench/large_pool.py --pool 2000 --quick  # a smoke test

Builds a project in --work (default /tmp/salis-large-pool): the built-in generator's pool, a model
trained for a few iterations on 40 of its images (random weights would output the cap of
detections everywhere), then runs `python -m stages.infer_score --cycle 1` with runtime.nproc 1
and then 2 (one torch thread per process), each from a cold shard cache. Measured per run: wall
time and images per second, the peak resident memory of every rank (the stage reports each
rank's getrusage maximum), the bytes the stage wrote (its outputs; the shard cache is removed
at the end). The 1-vs-2 ratio is read within one invocation, on the same machine and load.
Results: bench/results/large_pool.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def setup(work: Path, pool: int) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in ("dvc.yaml", "stages", "src", "labels"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, work / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["synthetic"].update(pool_images=pool, test_images=20, image_size=64, max_instances=6)
    params["model"].update(min_size=64, max_size=64)
    params["runtime"].update(threads=1, nproc=1)
    params["train"].update(min_iterations=60, max_iterations=60, warmup_iterations=20)
    params["select"].update(initial=40)
    params["cycles"] = {"c1": {"k": 1, "prev": 0, "next": 2}}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("prepare", "init", "init_model"):
        run([sys.executable, "-m", f"stages.{stage}"], work)
    for stage in ("annotate", "weak_label", "train"):
        run([sys.executable, "-m", f"stages.{stage}", "--cycle", "1"], work)


def set_nproc(work: Path, nproc: int) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["runtime"]["nproc"] = nproc
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def written(work: Path) -> int:
    folder = work / "data" / "cycles" / "1"
    paths = [folder / "instances.parquet", folder / "images.parquet", *(folder / "embeddings").glob("*")]
    return sum(p.stat().st_size for p in paths if p.is_file())


def score(work: Path, nproc: int, unlabeled: int) -> dict:
    set_nproc(work, nproc)
    shutil.rmtree(work / ".salis" / "shards", ignore_errors=True)
    t0 = time.perf_counter()
    out = run([sys.executable, "-m", "stages.infer_score", "--cycle", "1"], work)
    wall = time.perf_counter() - t0
    peaks = [float(m) for m in re.findall(r"peak RSS (\d+) MiB", out)]
    return {"nproc": nproc, "wall_s": round(wall, 1), "images_per_s": round(unlabeled / wall, 1),
            "peak_rss_mib_per_rank": peaks, "bytes_written": written(work)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=20000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/salis-large-pool"))
    parser.add_argument("--quick", action="store_true", help="no results written to bench/results")
    args = parser.parse_args()
    t0 = time.perf_counter()
    setup(args.work, args.pool)
    setup_s = time.perf_counter() - t0
    import pandas as pd

    labeled = len(pd.read_parquet(args.work / "data" / "cycles" / "1" / "labeled.parquet"))
    unlabeled = args.pool - labeled
    runs = [score(args.work, n, unlabeled) for n in (1, 2)]
    detections = len(pd.read_parquet(args.work / "data" / "cycles" / "1" / "instances.parquet", columns=["image_id"]))
    load = os.getloadavg()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB, no GPU used",
        "load_average_at_end": [round(v, 2) for v in load],
        "pool_images": args.pool, "unlabeled_scored": unlabeled, "labeled_embedded": labeled,
        "image_size": 64, "detections": detections, "setup_s": round(setup_s, 1), "runs": runs,
        "speedup_2_vs_1": round(runs[0]["wall_s"] / runs[1]["wall_s"], 2),
    }
    print(json.dumps(result, indent=1))
    if not args.quick:
        out = ROOT / "bench" / "results"
        (out / "large_pool.json").write_text(json.dumps(result, indent=1) + "\n")
        rows = "\n".join(f"| {r['nproc']} | {r['wall_s']} | {r['images_per_s']} | "
                         f"{', '.join(f'{m:.0f}' for m in r['peak_rss_mib_per_rank'])} | {r['bytes_written'] / 2**20:.1f} |"
                         for r in runs)
        (out / "large_pool.md").write_text(
            f"infer_score over {unlabeled:,} unlabeled + {labeled} labeled pool images of 64 px "
            f"({detections:,} detections), one torch thread per process; {result['machine']}.\n\n"
            "| processes | wall s | images / s | peak RSS per rank (MiB) | MiB written |\n|---:|---:|---:|---:|---:|\n"
            f"{rows}\n\n2 vs 1 processes: {result['speedup_2_vs_1']}x.\n")


if __name__ == "__main__":
    main()
