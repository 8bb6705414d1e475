import math
import subprocess

import pandas as pd
import pytest
import yaml

from salis.analysis.savings import WORKSPACE, label_savings, savings_table


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

# --- label savings (moved from test_annotation_cost with the function) -------------------------------------------------------------------------


def _curve(*rows):
    return [{"labeled_images": n, "annotation_hours": h, "mask_AP50": ap} for n, h, ap in rows]


CURVES = {
    "random": _curve((10, 1.0, 0.2), (20, 2.0, 0.3), (30, 3.0, 0.4)),
    "entropy": _curve((10, 1.1, 0.25), (20, 2.2, 0.35), (30, 3.3, 0.45)),
    "lucky": _curve((10, 0.5, 0.5), (20, 1.0, 0.6)),
    "never": _curve((10, 1.0, 0.1), (20, 2.0, float("nan")), (30, 3.0, 0.39)),
}


def test_label_savings_interpolates_between_cycles():
    out = label_savings(CURVES)["entropy"]
    # 0.4 lies halfway between 0.35 (20 images, 2.2 h) and 0.45 (30 images, 3.3 h).
    assert out["target"] == pytest.approx(0.4)
    assert out["reached"] is True
    assert out["labeled_images"] == pytest.approx(25.0)
    assert out["annotation_hours"] == pytest.approx(2.75)
    assert out["labels_saved"] == pytest.approx(5.0)
    assert out["labels_saved_fraction"] == pytest.approx(5 / 30)
    assert out["hours_saved"] == pytest.approx(0.25)
    assert out["hours_saved_fraction"] == pytest.approx(0.25 / 3.0)
    assert out["reference_labeled_images"] == 30.0


def test_label_savings_first_cycle_reaching_the_target_counts_as_is():
    out = label_savings(CURVES)["lucky"]
    assert (out["labeled_images"], out["annotation_hours"]) == (10.0, 0.5)
    assert out["labels_saved"] == 20.0


def test_label_savings_reference_against_itself_saves_nothing():
    out = label_savings(CURVES)["random"]
    assert (out["labeled_images"], out["labels_saved"], out["hours_saved"]) == (30.0, 0.0, 0.0)


def test_label_savings_never_reached_is_none():
    out = label_savings(CURVES)["never"]  # the NaN row is skipped, 0.39 < 0.4
    assert out["reached"] is False
    assert out["labeled_images"] is None and out["annotation_hours"] is None
    assert out["labels_saved"] is None and out["hours_saved_fraction"] is None


def test_label_savings_without_hours_reports_labels_only():
    curves = {"random": [{"labeled_images": 10, "mask_AP50": 0.3}], "b": [{"labeled_images": 5, "mask_AP50": 0.3}]}
    out = label_savings(curves)["b"]
    assert out["labeled_images"] == 5.0 and out["annotation_hours"] is None and out["hours_saved"] is None


def test_label_savings_needs_a_reference_run():
    assert label_savings({"entropy": CURVES["entropy"]}) == {}
    assert label_savings({"random": [{"labeled_images": 10, "mask_AP50": math.nan}]}) == {}


def test_label_savings_other_metric_and_reference():
    curves = {
        "base": [{"labeled_images": 10, "box_AP": 0.2}, {"labeled_images": 20, "box_AP": 0.4}],
        "new": [{"labeled_images": 10, "box_AP": 0.3}, {"labeled_images": 20, "box_AP": 0.5}],
    }
    out = label_savings(curves, reference="base", metric="box_AP")["new"]
    assert out["labeled_images"] == pytest.approx(15.0)


def test_savings_and_compare_give_the_same_numbers_on_the_same_runs():
    """One crossing for both commands: a curve with a NaN cycle and one reaching the target in
    its first cycle get the same labels and hours from `salis savings` and `salis compare`."""
    from salis.analysis.compare import compare, sampler_table
    from salis.analysis.experiments import Run

    def run(sampler, rows):
        curve = pd.DataFrame(rows, columns=["cycle", "labeled_images", "annotation_hours", "mask_AP50"])
        return Run(f"cmp-{sampler}-s0", {"sampler": sampler, "seed": 0, "data.source": "synthetic"}, curve)

    runs = [run("random", [(1, 10, 1.0, 0.2), (2, 20, 2.0, 0.3), (3, 30, 3.0, 0.4)]),
            run("entropy", [(1, 10, 1.1, 0.25), (2, 20, 2.2, float("nan")), (3, 30, 3.3, 0.45)]),
            run("tsp", [(1, 10, 0.5, 0.5), (2, 20, 1.0, 0.6), (3, 30, 1.5, 0.7)])]
    savings = label_savings({r.sampler: r.curve.to_dict("records") for r in runs})
    per_sampler = compare(runs).per_sampler.set_index("sampler")
    for sampler in ("entropy", "tsp"):
        row = per_sampler.loc[sampler]
        assert row["labels_to_target_mean"] == pytest.approx(savings[sampler]["labeled_images"])
        assert row["hours_to_target_mean"] == pytest.approx(savings[sampler]["annotation_hours"])
    # entropy: the NaN cycle is skipped, 0.4 lies 0.15/0.2 of the way from 10 to 30 images
    assert savings["entropy"]["labeled_images"] == pytest.approx(10 + 20 * 0.75)
    # the share of random's final hours (3.0): entropy 1.1 + 0.75 * 2.2 = 2.75 h, tsp 0.5 h at cycle 1
    assert per_sampler.loc["entropy", "hours_fraction_mean"] == pytest.approx(2.75 / 3.0)
    assert per_sampler.loc["tsp", "hours_fraction_mean"] == pytest.approx(0.5 / 3.0)
    table = "\n".join(sampler_table(compare(runs)))
    assert "| 0.50 (0.17x) |" in table and "| 2.75 (0.92x) |" in table
    assert savings["tsp"]["labeled_images"] == 10.0 and not math.isnan(per_sampler.loc["tsp", "labels_to_target_mean"])
