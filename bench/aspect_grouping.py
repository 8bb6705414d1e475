"""What grouping training batches by aspect ratio (train.aspect_ratio_group_factor) buys on a
dataset of mixed shapes: the padded pixels of every batch, and seconds per training iteration.

  python bench/aspect_grouping.py [--params examples/dsb2018/params.yaml] [--instances FILE --images DIR]

Padding: Mask R-CNN's transform resizes each image (short side model.min_size, long side at most
model.max_size) and pads a batch to its tallest and widest image, rounded up to 32 pixels. Over
2,000 batches of train.batch_size drawn from every image of the dataset, grouped (factor 3) and
ungrouped (-1), it reports the share of the padded tensor that is padding and the mean padded
area. Time: 30 training iterations each way on the same 40 images (seeded), one torch thread.
Results: bench/results/aspect_grouping.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from salis.data.prepared import target_arrays
from salis.engine.datasets import Sample
from salis.engine.training import aspect_ratio_groups, batch_plan, train_model
from salis.model.build import seeded_model
from salis.params import load_params

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "dsb2018"


def resized(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return math.floor(height * scale), math.floor(width * scale)


def padding(sizes: list[tuple[int, int]], plan, min_size: int, max_size: int) -> dict[str, float]:
    content = padded = 0
    for batch, _ in plan:
        shapes = [resized(*sizes[i], min_size, max_size) for i, _ in batch]
        h = math.ceil(max(s[0] for s in shapes) / 32) * 32
        w = math.ceil(max(s[1] for s in shapes) / 32) * 32
        content += sum(a * b for a, b in shapes)
        padded += h * w * len(shapes)
    return {"padding_share": round(1 - content / padded, 4), "mean_padded_pixels_per_image": round(padded / len(plan) / len(plan[0][0]), 1)}


class Images:
    """Samples of COCO images with their masks (one class), decoded once."""

    def __init__(self, coco: dict, image_dir: Path, ids: list[int]) -> None:
        by_image: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
        infos = {int(i["id"]): i for i in coco["images"]}
        self.samples = []
        for image_id in ids:
            info = infos[image_id]
            pixels = np.array(Image.open(image_dir / info["file_name"]).convert("RGB"))
            arrays = target_arrays(by_image.get(image_id, []), info["height"], info["width"], lambda _: 1)
            self.samples.append(Sample(image_id, pixels, **arrays))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=ROOT / "examples" / "dsb2018" / "params.yaml")
    parser.add_argument("--instances", type=Path, default=SHARED / "instances.json")
    parser.add_argument("--images", type=Path, default=SHARED / "images")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "aspect_grouping.json")
    args = parser.parse_args()
    if not args.instances.is_file():
        raise SystemExit(f"{args.instances}: not found (the DSB2018 copy in ../shared, or pass --instances/--images)")
    torch.set_num_threads(1)
    params = load_params(args.params)
    coco = json.loads(args.instances.read_text())
    sizes = [(int(i["height"]), int(i["width"])) for i in coco["images"]]
    m = params.model
    result: dict = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread", "params": str(args.params),
                    "images": len(sizes), "batch_size": params.train.batch_size, "min_size": m.min_size, "max_size": m.max_size,
                    "group_sizes_k3": np.bincount(aspect_ratio_groups(sizes, 3)).tolist()}
    for factor in (-1, 3):
        train = dataclasses.replace(params.train, aspect_ratio_group_factor=factor)
        plan = batch_plan(aspect_ratio_groups(sizes, factor), [], train, np.random.default_rng(0), 2000, False)
        result[f"factor_{factor}"] = padding(sizes, plan, m.min_size, m.max_size)

    rng = np.random.default_rng(0)
    ids = sorted(rng.choice([int(i["id"]) for i in coco["images"]], size=40, replace=False).tolist())
    samples = Images(coco, args.images, ids)
    for factor in (-1, 3):
        n = args.iterations
        train = dataclasses.replace(params.train, aspect_ratio_group_factor=factor, epochs=0, min_iterations=n,
                                    max_iterations=n, warmup_iterations=min(params.train.warmup_iterations, n))
        model = seeded_model(params.model, 1, seed=0)
        t0 = time.perf_counter()
        train_model(model, samples, [], train, seed=0, device=torch.device("cpu"), amp=False)
        result[f"factor_{factor}"]["seconds_per_iteration"] = round((time.perf_counter() - t0) / n, 3)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
