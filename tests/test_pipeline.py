"""One small real pipeline: `dvc repro` over 2 cycles on tiny synthetic data, then an experiment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = {
    "data": {"synthetic": {"pool_images": 24, "test_images": 6, "image_size": 64, "max_instances": 4}},
    "model": {"min_size": 64, "max_size": 64, "rpn_post_nms_top_n_test": 50, "detections_per_image": 20},
    "train": {"iterations": 4, "batch_size": 2, "pseudo_batch_size": 1, "warmup_iterations": 2},
    "select": {"initial": 4, "budget": 3},
    "pseudo": {"score_thresh": 0.0},  # an untrained model is never confident: keep every detection
    "cycles": {"c1": {"k": 1, "prev": 0, "next": 2}, "c2": {"k": 2, "prev": 1, "next": 3}},
}


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) and key != "cycles" else value
    return out


def run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)  # stages must import the installed salis
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "stages", "src"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], work)
    run(["git", "config", "user.email", "ci@salis.local"], work)
    run(["git", "config", "user.name", "salis ci"], work)
    run(["dvc", "init", "-q"], work)
    run(["git", "add", "-A"], work)
    run(["git", "commit", "-qm", "tiny project"], work)
    run(["dvc", "repro"], work)
    return work


def test_repro_writes_every_cycle_and_keeps_the_test_split_out(project: Path):
    prepared = project / "data" / "prepared"
    test_ids = {im["id"] for im in json.loads((prepared / "test.json").read_text())["images"]}
    sizes = []
    for k in (1, 2, 3):
        labeled = pd.read_parquet(project / "data" / "cycles" / str(k) / "labeled.parquet")
        sizes.append(len(labeled))
        assert not set(labeled["image_id"]) & test_ids
        assert labeled["image_id"].is_unique
    assert sizes == [4, 7, 10]
    for k in (1, 2):
        scored = pd.read_parquet(project / "data" / "cycles" / str(k) / "images.parquet")
        assert not set(scored["image_id"]) & test_ids
        assert len(scored) == 24 - sizes[k - 1]  # every unlabeled pool image, detections or not
        metrics = json.loads((project / "metrics" / "cycles" / f"{k}.json").read_text())
        assert metrics["cycle"] == k and metrics["labeled_images"] == sizes[k - 1]
        assert 0.0 <= metrics["mask_AP50"] <= 1.0
    curve = pd.read_csv(project / "metrics" / "curve.csv")
    assert curve["cycle"].tolist() == [1, 2] and curve["labeled_images"].tolist() == [4, 7]
    assert (project / "models" / "cycle_2" / "live" / "metrics.json").is_file()


def test_nothing_reruns_without_changes(project: Path):
    out = run(["dvc", "status"], project)
    assert "up to date" in out


def test_changing_the_sampler_keeps_cycle_one_training_and_scoring_cached(project: Path):
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline run"], project)
    out = run(["dvc", "exp", "run", "-S", "sampler=entropy"], project)
    for cached in ("train@c1", "infer_score@c1", "evaluate@c1", "init", "prepare"):
        assert f"'{cached}' didn't change" in out or f"'{cached}' is cached" in out, out
    assert "Running stage 'select@c1'" in out
    labeled = pd.read_parquet(project / "data" / "cycles" / "2" / "labeled.parquet")
    assert (labeled["sampler"].iloc[4:] == "entropy").all()
