"""What the IoU heads' training recipe costs per training step: the old recipe (positives only,
the appended ground-truth boxes included) against params.yaml's (jittered and background RoIs),
alternating on the same batch, one torch thread. `python bench/iou_head_cost.py` ->
bench/results/iou_head_cost.json."""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from salis.model.build import seeded_model
from salis.params import parse_params

ROOT = Path(__file__).resolve().parents[1]


def batch(size: int, instances: int, seed: int) -> tuple[list, list]:
    """`size` random images with `instances` random rectangles each (the demo's 128 px)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(size):
        masks = torch.zeros(instances, 128, 128, dtype=torch.uint8)
        boxes = []
        for i in range(instances):
            x, y = torch.randint(0, 100, (2,), generator=g).tolist()
            w, h = torch.randint(8, 28, (2,), generator=g).tolist()
            masks[i, y:y + h, x:x + w] = 1
            boxes.append([x, y, min(x + w, 128), min(y + h, 128)])
        images.append(torch.rand(3, 128, 128, generator=g))
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.ones(instances, dtype=torch.long), "masks": masks})
    return images, targets


def main(repeats: int = 8) -> dict:
    torch.set_num_threads(1)
    new = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text())).model
    old = dataclasses.replace(new, iou_jitter_rois=0, iou_background_rois=0, iou_gt_proposals=True)
    models = {"old recipe": seeded_model(old, 1, seed=0).train(), "params.yaml": seeded_model(new, 1, seed=0).train()}
    images, targets = batch(4, 12, seed=0)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            losses = model(images, targets)
            sum(losses.values()).backward()
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    result = {"machine": f"{platform.machine()} {torch.get_num_threads()} thread, torch {torch.__version__}",
              "batch": "4 images of 128 px, 12 instances each; params.yaml's model",
              "median_step_seconds": median, "ratio": median["params.yaml"] / median["old recipe"],
              "repeats": repeats}
    out = ROOT / "bench" / "results" / "iou_head_cost.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
