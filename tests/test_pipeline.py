"""One small real pipeline: `dvc repro` over 2 cycles on tiny synthetic data, then an experiment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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


def label_like_an_annotator(work: Path, batch: int, out: Path) -> set[int]:
    """A COCO export answering request batch `batch` with the dataset's hidden ground truth,
    numbered as an annotation tool would (its own category ids)."""
    request = json.loads((work / "data" / "requests" / f"cycle_{batch}" / "request.json").read_text())
    pool = json.loads((work / "data" / "prepared" / "pool.json").read_text())
    wanted = {im["id"] for im in request["images"]}
    export = {
        "images": request["images"],
        "categories": [{"id": c["id"] + 10, "name": c["name"]} for c in pool["categories"]],
        "annotations": [
            dict(a, category_id=a["category_id"] + 10) for a in pool["annotations"] if a["image_id"] in wanted
        ],
    }
    out.write_text(json.dumps(export))
    return wanted


def test_human_annotators_in_the_loop(tmp_path):
    """A test plays the annotator: dvc repro waits for labels, an import lets it go on, and
    while batch k awaits its labels the model of cycle k has been evaluated."""
    (tmp_path / "p").mkdir()
    work = new_project(tmp_path / "p", {"oracle": "human"})
    out = run(["dvc", "repro"], work, expect_ok=False)
    assert "waiting for the labels of request batch 0" in out and "salis labels import --cycle 0" in out
    assert not (work / "models" / "cycle_1").exists()
    readme = (work / "data" / "requests" / "cycle_0" / "README.txt").read_text()
    assert "no model exists yet, so the images come without" in readme

    wanted = label_like_an_annotator(work, 0, tmp_path / "export0.json")
    out = run(["salis", "labels", "import", "--cycle", "0", str(tmp_path / "export0.json")], work)
    assert "cycle 0: 4 images" in out
    again = run(["salis", "labels", "import", "--cycle", "0", str(tmp_path / "export0.json")], work, expect_ok=False)
    assert "already imported" in again

    out = run(["dvc", "repro"], work, expect_ok=False)  # cycle 1 runs, then batch 1 awaits labels
    assert "waiting for the labels of request batch 1" in out
    labeled = pd.read_parquet(work / "data" / "cycles" / "1" / "labeled.parquet")
    assert sorted(labeled["image_id"]) == sorted(wanted) and (labeled["source"] == "human").all()
    metrics = json.loads((work / "metrics" / "cycles" / "1.json").read_text())  # evaluate@1 ran before the stop
    status = " ".join(run(["salis", "status"], work).split())
    assert f"current model: cycle 1, mask AP50 {metrics['mask_AP50']:.3f}" in status
    assert "awaiting labels: request batch 1, 3 images" in status
    readme = (work / "data" / "requests" / "cycle_1" / "README.txt").read_text()
    assert f"scores mask AP50 {metrics['mask_AP50']:.3f} on the test split" in readme

    label_like_an_annotator(work, 1, tmp_path / "export1.json")
    run(["salis", "labels", "import", "--cycle", "1", str(tmp_path / "export1.json")], work)
    run(["dvc", "repro"], work)
    status = " ".join(run(["salis", "status"], work).split())  # status wraps its prose at the terminal
    assert "batch 2 (3 images" in status and "add c3: {k: 3, prev: 2, next: 4}" in status


def test_compare_runs_a_grid_of_experiments_and_reports_it(tmp_path: Path):
    """salis compare: 2 samplers x 2 seeds as DVC experiments (train@c1 shared per seed), the
    report from them, a rerun that resumes instead of repeating, and `dvc plots show`."""
    work = new_project(tmp_path, {"cycles": {"c1": {"k": 1, "prev": 0, "next": 2}}})
    salis = str(Path(sys.executable).parent / "salis")
    out = run([salis, "compare", "--samplers", "random,entropy", "--seeds", "0,1"], work)
    exps = run(["git", "for-each-ref", "--format=%(refname:short)", "refs/exps"], work)
    for name in ("cmp-random-s0", "cmp-random-s1", "cmp-entropy-s0", "cmp-entropy-s1"):
        assert name in exps
    summary = pd.read_csv(work / "metrics" / "compare" / "summary.csv").set_index("sampler")
    assert summary.loc["random", "runs"] == 2 and summary.loc["entropy", "runs"] == 2
    assert summary.loc["random", "aulc_diff_mean"] == 0.0  # random against itself, seed by seed
    assert "| entropy | 2 |" in out
    again = run([salis, "compare", "--samplers", "random,entropy", "--seeds", "0,1"], work)
    assert again.count("already present, not rerun") == 4
    plots = run(["dvc", "plots", "show", "--json"], work)
    assert "vs labeled images (mean and 95% CI over seeds)" in plots and "curves.png" in plots


def test_killing_dvc_mid_stage_leaves_no_orphan_writer(tmp_path: Path):
    """kill -9 of `dvc repro` during train@c1: the trainer ends with it, nothing half-written
    stays, and the next `dvc repro` finishes the cycle."""
    work = new_project(tmp_path, {"train": {"min_iterations": 400, "max_iterations": 400},
                                  "cycles": {"c1": {"k": 1, "prev": 0, "next": 2}}})
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    dvc = subprocess.Popen(["dvc", "repro"], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cycle_dir = work / "models" / "cycle_1"
    deadline = time.monotonic() + 300
    while not list(cycle_dir.glob(".live.*.tmp")):  # train@c1 is writing its dvclive folder
        assert dvc.poll() is None and time.monotonic() < deadline, "train@c1 never started"
        time.sleep(0.2)
    trainer = int(next(cycle_dir.glob(".live.*.tmp")).name.split(".")[2])
    os.kill(dvc.pid, signal.SIGKILL)
    dvc.wait()
    deadline = time.monotonic() + 30
    while _running(trainer):
        assert time.monotonic() < deadline, "the trainer outlived dvc"
        time.sleep(0.2)
    assert not (cycle_dir / "model.pt").exists() and not list(cycle_dir.glob(".*.tmp"))
    run(["dvc", "repro"], work)
    assert (cycle_dir / "model.pt").is_file() and not list(work.rglob(".*.tmp"))


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
