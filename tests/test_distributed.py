"""torch.distributed on CPU (gloo, torchrun): 2-process train, infer_score and evaluate on tiny
data; 1 vs 2 processes give the same tables byte for byte; a DDP step equals one process's on the
same global batch; a failing rank ends the job with one line; a killed scoring resumes from its
shards; impossible process counts are refused before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from support import new_project, run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TABLES = ("instances.parquet", "images.parquet", "embeddings/vectors.npy", "embeddings/image_ids.parquet")


def stage(work: Path, name: str, cycle: int = 1, expect_ok: bool = True, **env) -> str:
    environ = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env)
    environ.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-m", f"stages.{name}", "--cycle", str(cycle)], cwd=work, env=environ,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == expect_ok, out
    return out


def set_params(work: Path, **groups) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    for group, values in groups.items():
        params[group].update(values)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def snapshot(work: Path) -> dict[str, bytes]:
    files = {f"data/cycles/1/{t}": (work / "data" / "cycles" / "1" / t).read_bytes() for t in TABLES}
    for name in ("metrics/cycles/1.json", "metrics/iou/1.csv", "metrics/test_images/1.csv",
                 "data/cycles/1/test_detections.parquet"):
        files[name] = (work / name).read_bytes()
    return files


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    work = new_project(tmp_path_factory.mktemp("ddp"), {
        "runtime": {"threads": 1}, "train": {"pseudo_batch_size": 2}, "score": {"batch_size": 2, "shard_images": 4},
        "eval": {"batch_size": 2}})
    run(["dvc", "repro", "train@c1"], work)
    return work


def test_one_and_two_processes_write_the_same_scores_and_metrics(project: Path):
    stage(project, "infer_score")
    stage(project, "evaluate")
    one = snapshot(project)
    set_params(project, runtime={"nproc": 2})
    out = stage(project, "infer_score")
    assert "2 processes (2 per node x 1 node(s)) through torchrun" in out
    stage(project, "evaluate")
    assert snapshot(project) == one
    set_params(project, runtime={"nproc": 1, "workers": 2})  # DataLoader workers decode: same bytes
    stage(project, "infer_score")
    assert snapshot(project) == one
    assert not list((project / ".salis" / "shards").glob("*")), "the shard cache goes once the outputs are written"
    set_params(project, runtime={"workers": 0})


def test_two_process_training_writes_one_checkpoint(project: Path):
    set_params(project, runtime={"nproc": 2})
    out = stage(project, "train")
    assert "4 labeled + 0 pseudo-labeled images" in out and "2 processes" in out
    assert out.count("training on") == 1  # rank 0 alone reports and writes
    assert (project / "models" / "cycle_1" / "model.pt").is_file()
    log = (project / "metrics" / "train" / "1.csv").read_text().splitlines()
    assert log[0].startswith("step,") and len(log) == 2  # 4 iterations, logged every 10 and at the end
    set_params(project, runtime={"nproc": 1})


def test_a_mean_teacher_trains_on_two_processes(project: Path):
    """pseudo.mode teacher under torchrun: each rank's EMA teacher labels its share of the
    unlabeled images through an open gate; the cycle's count is the ranks' sum."""
    before = yaml.safe_load((project / "params.yaml").read_text())
    set_params(project, runtime={"nproc": 2}, pseudo={"mode": "teacher", "gate": "fixed", "score_thresh": 0.05,
                                                      "box_iou_thresh": 0.0, "mask_iou_thresh": 0.0})
    stage(project, "pseudo_label")  # the gate train@1's teacher reads
    out = stage(project, "train")
    assert "2 processes" in out and out.count("training on") == 1
    metrics = json.loads((project / "models" / "cycle_1" / "live" / "metrics.json").read_text())
    assert metrics["final/teacher_pseudo_instances"] >= metrics["final/teacher_pseudo_images"] > 0
    assert "semi_loss_mask" in metrics["train"]
    (project / "params.yaml").write_text(yaml.safe_dump(before, sort_keys=False))
    stage(project, "pseudo_label")


DDP_STEP = textwrap.dedent('''
    import sys, torch, numpy as np
    sys.path.insert(0, sys.argv[1])
    from salis.engine import distributed as dist
    from salis.engine.training import Trainer
    from salis.model.build import seeded_model
    from salis.params import RuntimeParams, TrainParams
    from support import SMALL, sample
    import dataclasses
    torch.set_num_threads(1)
    world = int(sys.argv[2])
    if world > 1:
        dist.init(RuntimeParams(device="cpu", nproc=world))
    # frozen BatchNorm, every anchor and RoI sampled, every negative RoI for the IoU heads and no
    # jittered box: no randomness, no batch statistics
    params = dataclasses.replace(SMALL, norm="frozen", rpn_batch_size_per_image=100000, box_batch_size_per_image=100000,
                                 iou_jitter_rois=0, iou_background_rois=100000)
    model = seeded_model(params, 2, seed=0).train()
    wrap = None
    if world > 1:
        wrap = lambda step: torch.nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)
    trainer = Trainer(model, TrainParams(), 10, torch.device("cpu"), amp=False, wrap=wrap)
    a = sample(0, False)
    b = a.flipped()  # the same number of objects and RoIs: the ranks' losses share a normaliser
    batch = [a, b][dist.rank()::dist.world_size()]
    loss, parts = trainer.losses(batch, None)
    loss.backward()
    if dist.is_main():
        grads = [p.grad.numpy().copy() for p in model.parameters() if p.grad is not None]
        np.savez(sys.argv[3], *grads)
    dist.shutdown()
''')


def test_a_ddp_step_equals_one_process_on_the_same_global_batch(tmp_path: Path):
    script = tmp_path / "step.py"
    script.write_text(DDP_STEP)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "tests"))
    subprocess.run([sys.executable, str(script), str(ROOT / "tests"), "1", str(tmp_path / "one.npz")], env=env,
                   check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    str(script), str(ROOT / "tests"), "2", str(tmp_path / "two.npz")], env=env, check=True,
                   capture_output=True, timeout=300)
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert len(one.files) == len(two.files) > 50
    worst = max(float(np.abs(one[k] - two[k]).max() / (np.abs(one[k]).max() + 1e-12)) for k in one.files)
    assert worst < 1e-4, f"largest relative gradient difference {worst:.2e}"


MEANS = textwrap.dedent('''
    import sys, json
    from salis.engine import distributed as dist
    from salis.params import RuntimeParams
    dist.init(RuntimeParams(device="cpu", nproc=2))
    mine = {"loss": 1.0 + dist.rank(), "loss_mask": 2.0} | ({"loss_mask_box": 4.0} if dist.rank() else {})
    out = dist.mean_over_ranks(mine)
    counts = dist.sum_over_ranks({"teacher_pseudo_instances": 3.0 + 4 * dist.rank(), "teacher_pseudo_images": 1.0})
    if dist.is_main():
        open(sys.argv[1], "w").write(json.dumps({"means": out, "sums": counts}))
    dist.shutdown()
''')


def test_logged_losses_average_over_the_ranks_that_have_them_and_counts_add_up(tmp_path: Path):
    """Only rank 1 had a box-labeled image: its BoxInst loss is averaged over itself alone; each
    rank's teacher counts its own pseudo-labels, and the cycle's figure is their sum."""
    script = tmp_path / "means.py"
    script.write_text(MEANS)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
                    str(tmp_path / "out.json")], check=True, capture_output=True, timeout=300,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["means"] == {"loss": 1.5, "loss_mask": 2.0, "loss_mask_box": 4.0}
    assert out["sums"] == {"teacher_pseudo_images": 2.0, "teacher_pseudo_instances": 10.0}  # 3 + 7; 1 + 1


def test_a_failing_rank_ends_the_job_with_one_line_and_scoring_resumes(project: Path):
    set_params(project, runtime={"nproc": 2})
    prepared = json.loads((project / "data" / "prepared" / "meta.json").read_text())
    images = project / prepared["image_root"] if not Path(prepared["image_root"]).is_absolute() else Path(prepared["image_root"])
    labeled = set(__import__("pandas").read_parquet(project / "data" / "cycles" / "1" / "labeled.parquet")["image_id"])
    pool = sorted(__import__("pandas").read_parquet(project / "data" / "prepared" / "pool.parquet")["image_id"])
    unlabeled = [i for i in pool if i not in labeled]
    victim = unlabeled[4]  # shard 1 (4 images a shard): rank 1's first shard
    path = images / f"syn_{victim:06d}.png"
    good = path.read_bytes()
    path.write_bytes(b"not a png")
    try:
        out = stage(project, "infer_score", expect_ok=False)
        assert "(rank 1): error:" in out and "unreadable image" in out and "a rank failed" in out
        assert "Traceback" not in out.split("(rank 1): error:")[0][-2000:]
    finally:
        path.write_bytes(good)
    kept = list((project / ".salis" / "shards").glob("infer_score@c1-*/*.done"))
    assert kept, "rank 0's finished shards stay in the cache"
    out = stage(project, "infer_score")
    assert f"resuming: {len(kept)} shard(s) already scored" in out
    set_params(project, runtime={"nproc": 1})
    before = {t: (project / "data" / "cycles" / "1" / t).read_bytes() for t in TABLES}
    stage(project, "infer_score")
    assert {t: (project / "data" / "cycles" / "1" / t).read_bytes() for t in TABLES} == before


def test_impossible_process_counts_are_refused_before_any_work(project: Path):
    cores = len(os.sched_getaffinity(0))
    set_params(project, runtime={"nproc": cores + 1}, train={"batch_size": 2 * (cores + 1), "pseudo_batch_size": cores + 1})
    out = stage(project, "train", expect_ok=False)
    assert "CPU core(s) for them" in out and "torchrun" not in out
    set_params(project, runtime={"nproc": 1, "nnodes": 2}, train={"batch_size": 2, "pseudo_batch_size": 2})
    assert "set runtime.rdzv_endpoint" in stage(project, "train", expect_ok=False)
    set_params(project, runtime={"nnodes": 1})
    # a rank started with another world size than params.yaml names
    out = stage(project, "evaluate", expect_ok=False, LOCAL_RANK="0", RANK="0", WORLD_SIZE="3")
    assert "runs in 3 processes but runtime.nproc x runtime.nnodes is 1" in out
