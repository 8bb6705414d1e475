"""Where a cycle's time goes: every stage of cycle 1..K timed in one process, infer_score and
evaluate part by part, and pool scoring three ways side by side on the same images: as main did
before this round (every mask pasted by torchvision into a float stack; commit 2dcd621), with
every mask through the binary paste (score.mask_min_score 0), and with the floor.

    python bench/cycle_cost.py --params examples/dsb2018/params.yaml [--cycles 1] [--threads 1]
        [--repeats 2] [--work /tmp/cycle_cost] [--out bench/results/cycle_cost.json]

Stages run as `dvc repro` runs them (the stage functions, in DAG order) in a workspace of their
own (--work), from the repository root so the params' relative data paths resolve. Parts are
timed with forward hooks on the model's modules and wrappers around the functions that paste,
encode and evaluate masks; "other" is the rest of the stage (image decoding, tables, RPN
post-processing). The comparison rescores the last cycle's candidates with each setting in turn,
alternating, and checks that images.parquet, every sampler's selection and the pseudo-labels
are the same bytes as main's path gives. Process start (imports) per stage is timed in subprocesses.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import yaml

from salis.artifacts.layout import Layout
from salis.params import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = ("random", "entropy", "tsp", "coreset")
STAGE_MODULES = ("prepare", "init", "init_model", "annotate", "weak_label", "train", "infer_score", "select_images",
                 "pseudo_label", "evaluate", "request", "pictures")


class PartTimer:
    """Seconds spent in named model modules and functions, accumulated while active."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []

    def module(self, name: str, module: torch.nn.Module | None) -> None:
        if module is None:
            return
        starts: list[float] = []
        pre = module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
        post = module.register_forward_hook(lambda *_: self._add(name, starts.pop()))
        self._undo += [pre.remove, post.remove]

    def function(self, name: str, owner: object, attribute: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._add(name, start)

        setattr(owner, attribute, timed)
        self._undo.append(lambda: setattr(owner, attribute, original))

    def _add(self, name: str, start: float) -> None:
        self.seconds[name] += time.perf_counter() - start

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def model_parts(timer: PartTimer, model: torch.nn.Module) -> None:
    heads = model.roi_heads
    timer.module("backbone+fpn", model.backbone)
    timer.module("rpn", model.rpn)
    for name in ("box_roi_pool", "box_head", "box_predictor", "mask_roi_pool", "mask_head", "mask_predictor",
                 "box_iou_head", "mask_iou_head", "loss_prediction"):
        timer.module(name, getattr(heads, name, None))


@contextlib.contextmanager
def timed_parts(stage: str) -> Iterator[PartTimer]:
    """Part timers for one stage: modules of every model the stage loads, and the mask functions."""
    import torchvision.models.detection.transform as tv_transform

    import salis.acquisition.scoring as scoring
    import salis.engine.inference as inference
    import salis.model.checkpoint as checkpoint

    timer = PartTimer()
    load = checkpoint.load_model

    def load_and_hook(*args, **kwargs):
        model, meta = load(*args, **kwargs)
        model_parts(timer, model)
        return model, meta

    for module in _importers_of_load_model():
        if hasattr(module, "load_model"):
            timer._undo.append(lambda m=module, f=module.load_model: setattr(m, "load_model", f))
            module.load_model = load_and_hook
    timer.function("paste masks", tv_transform, "paste_masks_in_image")  # main's path, before this bench
    timer.function("paste masks", inference, "paste_binary_masks")
    timer.function("rle encode", scoring, "encode_masks")
    if stage == "evaluate":
        import salis.pipeline.evaluate as evaluate

        for name in ("detections_from_prediction", "iou_pairs", "per_image_ap50", "coco_metrics",
                     "pseudo_label_quality"):
            timer.function(name, evaluate, name)  # detections_from_prediction: the RLE encoding
    try:
        yield timer
    finally:
        timer.remove()


def _importers_of_load_model() -> list:
    import salis.pipeline.evaluate
    import salis.pipeline.infer_score
    import salis.pipeline.train

    return [salis.pipeline.infer_score, salis.pipeline.evaluate, salis.pipeline.train]


def stage_functions() -> dict[str, Callable]:
    from salis.pipeline.annotate import stage_annotate
    from salis.pipeline.evaluate import stage_evaluate
    from salis.pipeline.infer_score import stage_infer_score
    from salis.pipeline.init import stage_init
    from salis.pipeline.init_model import stage_init_model
    from salis.pipeline.pictures import stage_pictures
    from salis.pipeline.prepare import stage_prepare
    from salis.pipeline.pseudo_label import stage_pseudo_label
    from salis.pipeline.request import stage_request
    from salis.pipeline.select import stage_select
    from salis.pipeline.train import stage_train
    from salis.pipeline.weak_label import stage_weak_label

    return {"prepare": stage_prepare, "init": stage_init, "init_model": stage_init_model, "annotate": stage_annotate,
            "weak_label": stage_weak_label, "train": stage_train, "infer_score": stage_infer_score,
            "select": stage_select, "pseudo_label": stage_pseudo_label, "evaluate": stage_evaluate,
            "request": stage_request, "pictures": stage_pictures}


def run_cycles(params: Params, layout: Layout, cycles: int) -> list[dict]:
    """Every stage in DAG order; per stage its seconds and, for the torch stages, its parts."""
    stages = stage_functions()
    rows = []

    def run(name: str, *cycle: int) -> None:
        with timed_parts(name) as timer:
            start = time.perf_counter()
            stages[name](params, layout, *cycle)
            seconds = time.perf_counter() - start
        parts = dict(sorted(timer.seconds.items(), key=lambda kv: -kv[1]))
        row = {"stage": name + (f"@c{cycle[0]}" if cycle else ""), "seconds": round(seconds, 3)}
        if parts and name in ("infer_score", "evaluate"):
            row["parts"] = {k: round(v, 3) for k, v in parts.items()}
            row["parts"]["other"] = round(seconds - sum(parts.values()), 3)
        rows.append(row)
        print(f"  {row['stage']}: {seconds:.1f} s", flush=True)

    for name in ("prepare", "init", "init_model"):
        run(name)
    for k in range(1, cycles + 1):
        for name in ("annotate", "weak_label", "train", "infer_score", "select", "pseudo_label", "evaluate",
                     "request", "pictures"):
            run(name, k)
    return rows


@contextlib.contextmanager
def mains_path() -> Iterator[None]:
    """Scoring as main did before the mask floor (commit 2dcd621): the model's transform pastes every
    detection's mask with torchvision's paste_masks_in_image into an N x H x W float stack, then
    `> 0.5`; every mask is RLE-encoded."""
    import salis.engine.inference as inference
    from salis.model.heads import SalisRoIHeads

    def every_mask_pasted_by_torchvision(self, min_score):
        return contextlib.nullcontext()  # no floor: the heads output "masks" as torchvision's do

    def binary(output, image_size):
        return (output["masks"][:, 0] > inference.MASK_THRESHOLD).cpu().numpy(), None

    saved = SalisRoIHeads.masks_from, inference._binary_masks
    SalisRoIHeads.masks_from, inference._binary_masks = every_mask_pasted_by_torchvision, binary
    try:
        yield
    finally:
        SalisRoIHeads.masks_from, inference._binary_masks = saved


def floor_comparison(params: Params, layout: Layout, cycle: int, floor: float, repeats: int, work: Path) -> dict:
    """Pool scoring of cycle `cycle` as main did (every mask, torchvision's paste), with every mask
    (floor 0) and with the floor, alternating; per image seconds, and whether selections and
    pseudo-labels are the same bytes as main's."""
    stages = stage_functions()
    settings = {"main (2dcd621): every mask, torchvision's paste": None, "every mask (mask_min_score 0)": 0.0,
                f"floor (mask_min_score {floor})": floor}
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    outputs: dict[str, dict[str, bytes]] = {}
    images = 0
    for repeat in range(repeats):
        for n, (name, value) in enumerate(settings.items()):
            copy = Layout(work / f"floor-{n}")
            shutil.rmtree(copy.root, ignore_errors=True)
            shutil.copytree(layout.root / "data", copy.root / "data")
            (copy.root / "models").mkdir(parents=True)
            shutil.copytree(layout.model(cycle).parent, copy.model(cycle).parent)
            run_params = dataclasses.replace(params, score=dataclasses.replace(params.score, mask_min_score=value or 0.0))
            with mains_path() if value is None else contextlib.nullcontext():
                start = time.perf_counter()
                frame = stages["infer_score"](run_params, copy, cycle)
                seconds[name].append(time.perf_counter() - start)
            images = len(frame)
            if repeat == 0:
                out = {"images.parquet": copy.images(cycle).read_bytes()}
                for sampler in SAMPLERS:
                    stages["select"](dataclasses.replace(run_params, sampler=sampler), copy, cycle)
                    out[f"selected ({sampler})"] = copy.selected(cycle).read_bytes()
                stages["pseudo_label"](run_params, copy, cycle)
                out["pseudo.parquet"] = copy.pseudo(cycle + 1).read_bytes()
                outputs[name] = out
            shutil.rmtree(copy.root, ignore_errors=True)
    old, every, new = settings
    per_image = {name: statistics.median(v) / max(images, 1) for name, v in seconds.items()}
    return {
        "cycle": cycle, "images": images, "repeats": repeats,
        "seconds_per_image": {k: round(v, 4) for k, v in per_image.items()},
        "speedup_floor_vs_main": round(per_image[old] / per_image[new], 2),
        "speedup_every_mask_vs_main": round(per_image[old] / per_image[every], 2),
        "identical_to_main": {name: {k: outputs[old][k] == outputs[name][k] for k in outputs[old]}
                              for name in (every, new)},
    }


def process_start(python: str) -> dict[str, float]:
    """Seconds from `python -m stages.x --help` to its exit: Python's start and the stage's imports."""
    out = {}
    for module in STAGE_MODULES:
        start = time.perf_counter()
        subprocess.run([python, "-m", f"stages.{module}", "--help"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        out[module] = round(time.perf_counter() - start, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=ROOT / "examples/dsb2018/params.yaml")
    parser.add_argument("--cycles", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/salis_cycle_cost"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/cycle_cost.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param (YAML value), as dvc exp run -S does")
    args = parser.parse_args()

    raw = yaml.safe_load(args.params.read_text())
    raw.setdefault("runtime", {})["threads"] = args.threads
    raw["cycles"] = {f"c{k}": {"k": k, "prev": k - 1, "next": k + 1} for k in range(1, args.cycles + 1)}
    for item in args.set:
        key, value = item.split("=", 1)
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    params = parse_params(raw, str(args.params))
    shutil.rmtree(args.work, ignore_errors=True)
    layout = Layout(args.work / "run")

    print(f"stages of {args.cycles} cycle(s) at {args.params}, {args.threads} thread(s):")
    start = time.perf_counter()
    stages = run_cycles(params, layout, args.cycles)
    total = time.perf_counter() - start
    print("pool scoring, every mask vs the floor:")
    floor = floor_comparison(params, layout, args.cycles, params.score.mask_min_score or 0.3, args.repeats, args.work)
    print(json.dumps(floor, indent=1))
    result = {
        "command": "python bench/cycle_cost.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": torch.get_num_threads()
                    if args.threads == 0 else args.threads, "torch": torch.__version__, "python": platform.python_version()},
        "params": str(args.params), "overrides": args.set, "cycles": args.cycles,
        "stages": stages,
        "stages_total_seconds": round(total, 1),
        "infer_score_every_mask_vs_floor": floor,
        "process_start_seconds": process_start(sys.executable),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
