"""What many test files share, defined once: the small model, a labeled sample, the tiny in-process
project's params (and a factory for variants), running a stage in process, a COCO export drawn
from the hidden truth, and the selection context samplers read. Test files import these from
here, never from each other; conftest.py serves the common ones as fixtures. A module, not only
fixtures, because subprocess scripts (the DDP test) and module-level constants use them too."""

from __future__ import annotations

import ast
import copy
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from salis.acquisition.samplers.base import SelectionContext
from salis.data.prepared import SimulatedOracle
from salis.engine.datasets import Sample
from salis.params import ModelParams

# the smallest Mask R-CNN that still learns on 64 x 64 images
SMALL = ModelParams(fpn_channels=16, box_head_dim=32, mask_head_channels=8, mask_head_convs=1,
                    rpn_batch_size_per_image=64, box_batch_size_per_image=32, iou_head_channels=8,
                    min_size=64, max_size=64, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30,
                    detections_per_image=10)


def sample(i: int, positive_only: bool = False) -> Sample:
    """A 64 x 64 training sample with two instances of classes 1 and 2 (image noise seeded by i)."""
    rng = np.random.default_rng(i)
    image = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    masks = np.zeros((2, 64, 64), dtype=np.uint8)
    masks[0, 8:24, 8:24] = 1
    masks[1, 30:50, 34:60] = 1
    boxes = np.array([[8, 8, 24, 24], [34, 30, 60, 50]], dtype=np.float32)
    return Sample(i, image, boxes, np.array([1, 2], dtype=np.int64), masks, positive_only=positive_only)


# A whole in-process project in seconds: 14 synthetic pool images, the small model, 3 iterations
# a cycle, two cycles; an untrained model is never confident, so the fixed gate keeps every
# detection (all score above model.box_score_thresh 0.05) and masks are kept from that floor.
TINY: dict[str, Any] = {
    "sampler": "tsp",
    "runtime": {"device": "cpu", "threads": 1},
    "data": {"synthetic": {"pool_images": 14, "test_images": 3, "image_size": 64, "max_instances": 3}},
    "model": {"fpn_channels": 16, "box_head_dim": 32, "mask_head_channels": 8, "mask_head_convs": 1,
              "iou_head_channels": 8, "min_size": 64, "max_size": 64, "rpn_pre_nms_top_n_test": 100,
              "rpn_post_nms_top_n_test": 30, "detections_per_image": 10},
    "train": {"min_iterations": 3, "max_iterations": 3, "warmup_iterations": 1, "batch_size": 2,
              "pseudo_batch_size": 2, "semi_loss_weight": 0.5},
    "score": {"batch_size": 4, "mask_min_score": 0.05},
    "select": {"initial": 4, "budget": 2},
    "pseudo": {"gate": "fixed", "score_thresh": 0.05, "box_iou_thresh": 0.0, "mask_iou_thresh": 0.0},
    "cycles": {"c1": {"k": 1, "prev": 0, "next": 2}, "c2": {"k": 2, "prev": 1, "next": 3}},
}


def merge(base: dict, extra: dict) -> dict:
    """base with extra's keys; nested groups merged key by key, except `cycles`, replaced whole."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) and key != "cycles" else value
    return out


def tiny(**groups: Any) -> dict:
    """TINY with some params changed: tiny(oracle="human", select={"budget": 3})."""
    return merge(copy.deepcopy(TINY), groups)


def run_stage(name: str, params, layout, *args):
    """Stage `name` in this process, as its `python -m stages.<name>` would run it."""
    return getattr(importlib.import_module(f"salis.pipeline.{name}"), f"stage_{name}")(params, layout, *args)


def selection_context(images: pd.DataFrame, instances_path: Path | None = None, labeled: Iterable[int] = (),
                      **fields: Any) -> SelectionContext:
    """What a sampler sees, with a fixed generator (seed 0); fields: num_classes, oracle, embeddings_path."""
    return SelectionContext(images=images, instances_path=instances_path, labeled_ids=frozenset(labeled),
                            rng=np.random.default_rng(0), **fields)


def coco_export(request: dict, oracle: SimulatedOracle, label_type: str) -> dict:
    """What an annotation tool exports for a request, drawn from the ground truth."""
    names = {c["id"]: c["name"] for c in request["categories"]}
    images, annotations = [], []
    for k, image in enumerate(request["images"], start=1):
        gt = oracle.annotations(image["id"])
        entry = {"id": k, "file_name": image["file_name"], "width": image["width"], "height": image["height"]}
        if label_type == "image":
            entry["counts"] = {names[c]: sum(a["category_id"] == c for a in gt) for c in names}
        for a in gt if label_type != "image" else []:
            ann = {"id": len(annotations) + 1, "image_id": k, "category_id": a["category_id"]}
            if label_type == "mask":
                ann["segmentation"] = a["segmentation"]
            elif label_type == "box":
                ann.update(bbox=a["bbox"], segmentation=[])
            else:
                x, y, w, h = a["bbox"]
                ann["keypoints"] = [x + w / 2, y + h / 2, 2]  # inside for the generator's convex-ish shapes
            annotations.append(ann)
        images.append(entry)
    return {"images": images, "annotations": annotations, "categories": request["categories"]}


# --- the project's import graph (tests of the DVC deps and of the layers) -----------------------

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ROOTS = {"salis": ROOT / "src", "stages": ROOT}  # top-level package -> the folder that holds it


def module_file(name: str) -> Path | None:
    """The file of a first-party module (package __init__ or .py), None for anything else."""
    top = name.split(".")[0]
    if top not in SOURCE_ROOTS:
        return None
    base = SOURCE_ROOTS[top].joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> str:
    for top, root in SOURCE_ROOTS.items():
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        if rel.parts[0] == top:
            parts = list(rel.with_suffix("").parts)
            return ".".join(parts[:-1] if path.name == "__init__.py" else parts[:-1])
    raise ValueError(path)


@cache
def imported_modules(path: Path) -> frozenset[str]:
    """Every module an import statement of `path` names, at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(path).split(".")
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return frozenset(names)


# --- DVC projects (tests that run `dvc repro` and `salis` in a subprocess) ----------------------

# A DVC project of the default model at 64 px: 24 pool images, 4 iterations a cycle, two cycles
DVC_TINY = {
    "runtime": {"threads": 1},  # its stages share the cores with another test worker
    "data": {"synthetic": {"pool_images": 24, "test_images": 6, "image_size": 64, "max_instances": 4}},
    "model": {"min_size": 64, "max_size": 64, "rpn_post_nms_top_n_test": 50, "detections_per_image": 20},
    "train": {"min_iterations": 4, "max_iterations": 4, "batch_size": 2, "pseudo_batch_size": 1, "warmup_iterations": 2},
    "select": {"initial": 4, "budget": 3},
    # masks kept from an untrained model's lowest scores (model.box_score_thresh 0.05)
    "score": {"mask_min_score": 0.05},
    "cycles": {"c1": {"k": 1, "prev": 0, "next": 2}, "c2": {"k": 2, "prev": 1, "next": 3}},
}


def run(args: list[str], cwd: Path, expect_ok: bool = True) -> str:
    """A command in cwd with the venv first on PATH; its output. Asserts it succeeded (or failed)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)  # stages must import the installed salis
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if expect_ok:
        assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    else:
        assert proc.returncode != 0, f"{' '.join(args)} should have failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def new_project(work: Path, extra: dict) -> Path:
    """A git + DVC project in `work`: salis's dvc.yaml, stages and sources, DVC_TINY's params plus extra."""
    for name in ("dvc.yaml", "stages", "src", "labels", ".gitignore"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    params = merge(merge(yaml.safe_load((ROOT / "params.yaml").read_text()), DVC_TINY), extra)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], work)
    run(["git", "config", "user.email", "ci@salis.local"], work)
    run(["git", "config", "user.name", "salis ci"], work)
    run(["dvc", "init", "-q"], work)
    shutil.copytree(ROOT / ".dvc" / "plots", work / ".dvc" / "plots")  # salis's plot templates
    shutil.copy(ROOT / ".dvc" / "config", work / ".dvc" / "config")  # the offline HTML template
    run(["git", "add", "-A"], work)
    run(["git", "commit", "-qm", "tiny project"], work)
    return work
