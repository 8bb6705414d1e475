"""Inference time with and without TSP's two IoU heads, same weights, same images, one process.

    python bench/iou_heads_overhead.py [--checkpoint models/cycle_5/model.pt] [--device cuda]

Both variants share every weight; "without" only switches the heads off, so the difference is
the heads' cost (one extra RoIAlign over the final boxes plus two small conv stacks). Runs
alternate between the variants and the median per image is reported. Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from salis.data.synthetic import generate
from salis.engine.device import autocast, pick_device
from salis.model.build import seeded_model
from salis.params import ModelParams
from salis.model.checkpoint import load_model as model_from_checkpoint


def load_model(checkpoint: Path | None) -> torch.nn.Module:
    if checkpoint and checkpoint.is_file():
        model, _ = model_from_checkpoint(checkpoint)
        return model
    return seeded_model(ModelParams(), 3, seed=0)


@torch.inference_mode()
def time_pass(model, images, batch_size: int, device: torch.device, amp: bool) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        with autocast(device, amp):
            outputs = model(images[i : i + batch_size])
        for out in outputs:  # what scoring does next: bring results to the host
            {k: v.float().cpu() for k, v in out.items()}
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("models/cycle_5/model.pt"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()

    device = pick_device(args.device)
    model = load_model(args.checkpoint).to(device).eval()
    heads = model.roi_heads
    if not heads.has_iou_heads:
        raise SystemExit("the model has no IoU heads (model.iou_heads: false)")
    _, _, pixels = generate(args.images, args.image_size, 18, seed=123)
    images = [torch.from_numpy(p).permute(2, 0, 1).float().div(255).to(device) for p in pixels]
    box_head, mask_head = heads.box_iou_head, heads.mask_iou_head
    amp = not args.no_amp

    def run(with_heads: bool) -> float:
        heads.box_iou_head, heads.mask_iou_head = (box_head, mask_head) if with_heads else (None, None)
        return time_pass(model, images, args.batch_size, device, amp)

    run(True), run(False)  # warm-up
    with_times, without_times = [], []
    for _ in range(args.repeats):
        with_times.append(run(True))
        without_times.append(run(False))
    heads.box_iou_head, heads.mask_iou_head = box_head, mask_head
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "amp": amp and device.type == "cuda",
        "images": args.images,
        "image_size": args.image_size,
        "ms_per_image_with_heads": 1000 * statistics.median(with_times),
        "ms_per_image_without_heads": 1000 * statistics.median(without_times),
    }
    result["ratio"] = result["ms_per_image_with_heads"] / result["ms_per_image_without_heads"]
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
