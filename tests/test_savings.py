import subprocess

import pytest
import yaml

from salis.analysis.savings import WORKSPACE, savings_table


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def write_run(root, sampler, rows):
    (root / "params.yaml").write_text(yaml.safe_dump({"sampler": sampler}))
    (root / "metrics").mkdir(exist_ok=True)
    lines = ["cycle,labeled_images,annotation_hours,mask_AP50"] + [",".join(map(str, r)) for r in rows]
    (root / "metrics" / "curve.csv").write_text("\n".join(lines) + "\n")


def test_savings_compare_experiments_with_the_random_workspace(tmp_path):
    git("init", "-q", cwd=tmp_path)
    git("config", "user.email", "t@t", cwd=tmp_path)
    git("config", "user.name", "t", cwd=tmp_path)
    # an experiment commit, kept under refs/exps as `dvc exp run` does
    write_run(tmp_path, "tsp", [(1, 20, 1.0, 0.40), (2, 40, 2.0, 0.70)])
    git("add", "-A", cwd=tmp_path)
    git("commit", "-qm", "tsp", cwd=tmp_path)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    git("update-ref", "refs/exps/ab/cdef/tsp-run", sha, cwd=tmp_path)
    # the workspace ran random: final AP50 0.55 at 60 images, 3 hours
    write_run(tmp_path, "random", [(1, 20, 1.0, 0.40), (2, 40, 2.0, 0.50), (3, 60, 3.0, 0.55)])

    reference, table = savings_table(tmp_path)
    assert reference == WORKSPACE
    tsp = table["tsp-run"]
    # tsp crosses 0.55 half-way between 20 and 40 images: 20 + 20 * (0.15 / 0.30) = 30
    assert tsp["labeled_images"] == pytest.approx(30.0) and tsp["annotation_hours"] == pytest.approx(1.5)
    assert tsp["labels_saved_fraction"] == pytest.approx(0.5) and tsp["sampler"] == "tsp"
    assert table[WORKSPACE]["labeled_images"] == pytest.approx(60.0)


def test_no_random_run_means_nothing_to_compare(tmp_path):
    git("init", "-q", cwd=tmp_path)
    write_run(tmp_path, "tsp", [(1, 20, 1.0, 0.4)])
    assert savings_table(tmp_path) == (None, {})


def test_the_committed_baseline_is_a_run_too(tmp_path):
    git("init", "-q", cwd=tmp_path)
    git("config", "user.email", "t@t", cwd=tmp_path)
    git("config", "user.name", "t", cwd=tmp_path)
    write_run(tmp_path, "random", [(1, 20, 1.0, 0.40), (2, 40, 2.0, 0.50)])
    git("add", "-A", cwd=tmp_path)
    git("commit", "-qm", "baseline", cwd=tmp_path)
    write_run(tmp_path, "tsp", [(1, 20, 1.0, 0.45), (2, 40, 2.0, 0.60)])  # the workspace: an experiment's result
    reference, table = savings_table(tmp_path)
    assert reference == "HEAD"
    assert table[WORKSPACE]["labeled_images"] == pytest.approx(20 + 20 * (0.05 / 0.15))
