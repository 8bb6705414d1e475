"""What the pretrain stage costs per step and per epoch of the pool, for each method: a few steps of
pretrain_body on the dataset's pool images (prepared as the prepare stage would), timed.

    python bench/pretrain_cost.py --params examples/dsb2018/params.yaml [--methods simsiam,byol,simclr]
        [--steps 6] [--threads 1] [--work /tmp/pretrain_cost] [--out bench/results/pretrain_cost.json]

The first step is excluded (allocation, first-call overheads); an epoch is the pool in batches of
pretrain.batch_size, so a whole pretraining costs about epochs x steps_per_epoch x seconds_per_step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from salis.artifacts.layout import Layout  # noqa: E402
from salis.data.prepared import PreparedData  # noqa: E402
from salis.params import load_params  # noqa: E402
from salis.pipeline.prepare import stage_prepare  # noqa: E402
from salis.pretrain.train import epoch_batches, pretrain_body  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="examples/dsb2018/params.yaml")
    parser.add_argument("--methods", default="simsiam,byol,simclr")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="/tmp/pretrain_cost")
    parser.add_argument("--out", default="bench/results/pretrain_cost.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    layout = Layout(Path(args.work))
    if not layout.prepared.is_dir():
        stage_prepare(params, layout)
    prepared = PreparedData(layout.prepared)
    pool = prepared.pool_ids()
    settings = params.pretrain
    per_epoch = len(epoch_batches(pool, min(settings.batch_size, len(pool)), np.random.default_rng(0)))
    rows = []
    for method in args.methods.split(","):
        timings = []
        for steps in (1, args.steps + 1):  # two runs: the difference is steps without the first
            ids = pool[: settings.batch_size * steps]
            run = dataclasses.replace(settings, method=method, epochs=1)
            t0 = time.perf_counter()
            pretrain_body(prepared.load_image, ids, run, params.model.backbone, torch.device("cpu"))
            timings.append(time.perf_counter() - t0)
        per_step = (timings[1] - timings[0]) / args.steps
        rows.append({"method": method, "seconds_per_step": round(per_step, 3),
                     "seconds_per_epoch": round(per_step * per_epoch, 1),
                     "seconds_whole": round(per_step * per_epoch * settings.epochs, 1)})
        print(f"{method}: {per_step:.2f} s/step, {per_step * per_epoch:.0f} s/epoch ({per_epoch} steps of "
              f"{settings.batch_size} at {settings.image_size} px), {settings.epochs} epochs: "
              f"{per_step * per_epoch * settings.epochs / 60:.1f} min")
    result = {"params": args.params, "backbone": params.model.backbone, "pool_images": len(pool),
              "batch_size": settings.batch_size, "image_size": settings.image_size, "epochs": settings.epochs,
              "threads": args.threads, "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
              "torch": torch.__version__, "methods": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
