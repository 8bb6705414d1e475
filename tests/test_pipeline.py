"""One small real pipeline: `dvc repro` over 2 cycles on tiny synthetic data, then experiments on it.
The human loop (test_human_loop.py), a compare grid (test_compare_grid.py) and a killed repro
(test_guard.py) build their own projects, so they sit in files of their own and run beside this one."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from support import new_project, run

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    work = new_project(tmp_path_factory.mktemp("project"), {})
    run(["dvc", "repro"], work)
    return work


def test_repro_writes_every_cycle_and_keeps_the_test_split_out(project: Path):
    prepared = project / "data" / "prepared"
    test_ids = {im["id"] for im in json.loads((prepared / "test.json").read_text())["images"]}
    sizes = []
    for k in (1, 2):
        labeled = pd.read_parquet(project / "data" / "cycles" / str(k) / "labeled.parquet")
        sizes.append(len(labeled))
        assert not set(labeled["image_id"]) & test_ids
        assert labeled["image_id"].is_unique
        assert (labeled["source"] == "simulated_oracle").all() and (labeled["seconds"] > 0).all()
    assert sizes == [4, 7]
    last_batch = pd.read_parquet(project / "data" / "cycles" / "2" / "selected.parquet")
    assert len(last_batch) == 3 and not set(last_batch["image_id"]) & (test_ids | set(labeled["image_id"]))
    request = json.loads((project / "data" / "requests" / "cycle_2" / "request.json").read_text())
    assert sorted(im["id"] for im in request["images"]) == sorted(last_batch["image_id"])
    for k in (1, 2):
        scored = pd.read_parquet(project / "data" / "cycles" / str(k) / "images.parquet")
        assert not set(scored["image_id"]) & test_ids
        assert len(scored) == 24 - sizes[k - 1]  # every unlabeled pool image, detections or not
        metrics = json.loads((project / "metrics" / "cycles" / f"{k}.json").read_text())
        assert metrics["cycle"] == k and metrics["labeled_images"] == sizes[k - 1]
        assert 0.0 <= metrics["mask_AP50"] <= 1.0
        assert metrics["annotation_hours"] > 0
    curve = pd.read_csv(project / "metrics" / "curve.csv")
    assert curve["cycle"].tolist() == [1, 2] and curve["labeled_images"].tolist() == [4, 7]
    assert (project / "models" / "cycle_2" / "live" / "metrics.json").is_file()


def test_nothing_reruns_without_changes(project: Path):
    # every stage of both cycles is in dvc.lock and none has changed: `dvc status` lists nothing
    assert json.loads(run(["dvc", "status", "--json"], project)) == {}
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {"train@c1", "train@c2", "infer_score@c2", "evaluate@c2", "report"} <= set(lock)


def test_changing_the_sampler_keeps_cycle_one_training_and_scoring_cached(project: Path):
    final = pd.read_csv(project / "metrics" / "curve.csv")["mask_AP50"].iloc[-1]
    out = run(["salis", "baseline"], project)
    assert f"committed: baseline: sampler random, seed 0, 2 cycles, mask AP50 {final:.3f} at 7 labeled" in out
    assert run(["git", "status", "--porcelain"], project).strip() == ""  # nothing of the run left out
    assert "nothing to record" in run(["salis", "baseline"], project, expect_ok=False)
    out = run(["dvc", "exp", "run", "-n", "try-entropy", "-S", "sampler=entropy"], project)
    for cached in ("train@c1", "infer_score@c1", "evaluate@c1", "annotate@c1", "init", "prepare"):
        assert f"'{cached}' didn't change" in out or f"'{cached}' is cached" in out, out
    assert "Running stage 'select@c1'" in out
    labeled = pd.read_parquet(project / "data" / "cycles" / "2" / "labeled.parquet")
    assert (labeled["sampler"].iloc[4:] == "entropy").all()
    rows = [line.split() for line in run(["salis", "runs"], project).splitlines()[1:]]
    assert {(r[0], r[1], r[4]) for r in rows} >= {("try-entropy", "entropy", "7"), ("HEAD", "random", "7")}
    assert all(len(line) <= 100 for line in run(["salis", "runs"], project).splitlines())


def test_pretraining_reruns_only_what_it_feeds_and_serves_every_seed(project: Path):
    quick = ["-S", "pretrain.enabled=true", "-S", "pretrain.epochs=1", "-S", "pretrain.batch_size=4",
             "-S", "pretrain.image_size=32"]
    out = run(["dvc", "exp", "run", "-n", "try-pretrain", *quick, "init_model"], project)
    assert "'prepare' didn't change" in out or "'prepare' is cached" in out, out
    assert "Running stage 'pretrain'" in out and "Running stage 'init_model'" in out
    assert json.loads((project / "metrics" / "pretrain.json").read_text())["enabled"] is True
    # another seed: init_model draws other heads, the pretraining is the same one
    out = run(["dvc", "exp", "run", "-n", "try-pretrain-s1", "-S", "seed=1", *quick, "init_model"], project)
    assert "Running stage 'pretrain'" not in out and "Running stage 'init_model'" in out, out
