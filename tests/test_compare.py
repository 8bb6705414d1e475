"""salis compare: intervals, areas, crossings and verdicts by hand; runs of different datasets
refused; the report's files; the command's refusals."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from salis.analysis.compare import (
    compare,
    markdown,
    normalized_aulc,
    param_matches,
    reference_arm,
    select_runs,
    t_interval,
    verdict,
    write_report,
)
from salis.analysis.curves import crossing
from salis.analysis.experiments import Run, flatten
from salis.cli import app
from salis.errors import SalisError


def run(sampler: str, seed: int, ap50: list[float], name: str | None = None, **params) -> Run:
    n = len(ap50)
    curve = pd.DataFrame({"cycle": range(1, n + 1), "labeled_images": [20.0 * (k + 1) for k in range(n)],
                          "annotation_hours": [2.0 * (k + 1) for k in range(n)], "mask_AP50": ap50,
                          "mask_AP": [v / 2 for v in ap50]})
    flat = {"sampler": sampler, "seed": seed, "data.source": "synthetic", **params}
    return Run(name or f"cmp-{sampler}-s{seed}", flat, curve)


def test_t_interval_by_hand():
    mean, half, n = t_interval([1.0, 2.0, 3.0])
    # sd 1, t(0.975, 2 dof) = 4.302653: half width 4.302653 / sqrt(3)
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(t_interval([0.4])[1]) and t_interval([0.4])[0] == 0.4
    assert t_interval([]) [2] == 0


def test_area_and_crossing_by_hand():
    curve = run("tsp", 0, [0.2, 0.4, 0.8]).curve  # labeled 20, 40, 60
    # trapezoids (0.2+0.4)/2*20 + (0.4+0.8)/2*20 = 18 over a range of 40
    assert normalized_aulc(curve, "mask_AP50") == pytest.approx(18 / 40)
    curve = curve.to_dict("records")
    # 0.6 lies halfway between 0.4 (40 images, 4 h) and 0.8 (60 images, 6 h)
    assert crossing(curve, "mask_AP50", 0.6) == pytest.approx((50.0, 5.0))
    assert crossing(curve, "mask_AP50", 0.1) == (20.0, 2.0)
    assert all(math.isnan(v) for v in crossing(curve, "mask_AP50", 0.9))


def test_verdicts():
    assert verdict(0.05, 0.02, 3) == "better than random"
    assert verdict(-0.05, 0.02, 3) == "worse than random"
    assert verdict(0.01, 0.02, 3) == "within noise"
    assert verdict(0.05, math.nan, 1) == "one seed: no interval"


def test_paired_differences_labels_to_target_and_missing_seeds():
    runs = [
        run("random", 0, [0.2, 0.4, 0.5]), run("random", 1, [0.3, 0.4, 0.6]),
        run("tsp", 0, [0.2, 0.5, 0.6]), run("tsp", 1, [0.3, 0.6, 0.7]),
        run("entropy", 0, [0.2, 0.3, 0.4]),  # seed 1 missing
    ]
    result = compare(runs)
    tsp = result.per_cycle.set_index(["sampler", "cycle"]).loc[("tsp", 2)]
    assert tsp["mask_AP50_diff_mean"] == pytest.approx(0.15) and tsp["pairs"] == 2  # (0.1 + 0.2) / 2
    # differences 0.1 and 0.2: sd 0.0707, t(0.975, 1) = 12.706: the interval holds 0
    assert tsp["mask_AP50_diff_ci95"] == pytest.approx(12.7062 * 0.070711 / math.sqrt(2), rel=1e-4)
    assert tsp["verdict"] == "within noise"
    summary = result.per_sampler.set_index("sampler")
    # seed 0: random's final 0.5 reached at 40 + 20 * (0.5-0.5)/(0.6-0.5)... = 40 images (0.5 at cycle 2);
    # seed 1: random's final 0.6 reached at cycle 2 exactly: 40 images -> saved 1 - 40/60 both times
    assert summary.loc["tsp", "labels_to_target_mean"] == pytest.approx(40.0)
    assert summary.loc["tsp", "labels_saved_mean"] == pytest.approx(1 / 3)
    assert summary.loc["tsp", "reached_target"] == "2/2"
    assert summary.loc["entropy", "reached_target"] == "0/1"
    assert "missing: entropy seed 1" in result.notes


def test_runs_on_different_datasets_or_settings_are_refused():
    a = run("random", 0, [0.2], **{"data.synthetic.pool_images": 400})
    b = run("tsp", 0, [0.3], **{"data.synthetic.pool_images": 200})
    with pytest.raises(SalisError, match=r"different datasets: data\.synthetic\.pool_images"):
        select_runs([a, b])
    c = run("tsp", 0, [0.3], **{"data.synthetic.pool_images": 400, "train.epochs": 50})
    with pytest.raises(SalisError, match=r"different settings: train\.epochs .*--match"):
        select_runs([a, c])
    kept, _ = select_runs([a, b], match={"data.synthetic.pool_images": "400"})
    assert [r.name for r in kept] == [a.name]


def test_arms_told_apart_by_params_pair_against_a_reference_arm():
    """Label types at equal hours: one sampler, arms by annotation.policy and the hour budget."""
    masks = [run("random", s, ap, **{"annotation.policy": "mask", "select.budget_hours": 0.0})
             for s, ap in ((0, [0.2, 0.4]), (1, [0.3, 0.5]))]
    mixed = [run("random", s, ap, name=f"mixed-s{s}", **{"annotation.policy": "mixed", "select.budget_hours": 1.0})
             for s, ap in ((0, [0.2, 0.6]), (1, [0.3, 0.6]))]
    kept, notes = select_runs(masks + mixed)  # without --by, one run per sampler and seed
    assert [r.name for r in kept] == [r.name for r in masks] and "left out mixed-s0" in notes[0]
    with pytest.raises(SalisError, match="different settings: annotation.policy"):
        select_runs([masks[0], mixed[1]])
    by = ["annotation.policy", "select.budget_hours"]
    kept, _ = select_runs(masks + mixed, by=by)
    assert sorted({r.arm for r in kept}) == ["random policy=mask budget_hours=0.0", "random policy=mixed budget_hours=1.0"]
    ref = reference_arm(kept, "annotation.policy=mask", by)
    assert ref == "random policy=mask budget_hours=0.0"
    with pytest.raises(SalisError, match="matches 2 arms"):
        reference_arm(kept, "sampler=random", by)
    result = compare(kept, reference=ref)
    row = result.per_cycle.set_index(["sampler", "cycle"]).loc[("random policy=mixed budget_hours=1.0", 2)]
    assert row["mask_AP50_diff_mean"] == pytest.approx(0.15)  # (0.2 + 0.1) / 2, paired by seed
    assert row["verdict"] == "within noise" and "− random policy=mask" in markdown(result)


@pytest.mark.parametrize(("value", "text", "expected"), [
    (False, "false", True), (False, "False", True), (True, "false", False), (0, "false", False),
    (300, "300", True), (300, "300.0", True), (0.5, "0.50", True), (1e-4, "0.0001", True), (0.5, "0.6", False),
    ("mask", "mask", True), ("mask", "box", False), (None, "None", True), ("300", "300", True),
])
def test_match_and_reference_values_are_read_as_params_yaml_spells_them(value, text, expected):
    assert param_matches(value, text) is expected


def test_a_reference_spelled_as_in_yaml_finds_its_arm():
    runs = [run("random", 0, [0.2], **{"pretrain.enabled": False}),
            run("random", 0, [0.3], name="pre-s0", **{"pretrain.enabled": True})]
    kept, _ = select_runs(runs, by=["pretrain.enabled"])
    assert reference_arm(kept, "pretrain.enabled=false", ["pretrain.enabled"]) == "random enabled=False"
    kept, _ = select_runs(runs, match={"pretrain.enabled": "true"})
    assert [r.name for r in kept] == ["pre-s0"]


def test_an_experiment_wins_over_the_workspace_copy_of_the_same_run():
    exp, workspace = run("random", 0, [0.2], name="cmp-random-s0"), run("random", 0, [0.2], name="workspace")
    kept, notes = select_runs([exp, workspace])
    assert [r.name for r in kept] == [exp.name] and notes == []


def test_report_files(tmp_path: Path):
    runs = [run("random", s, [0.2 + s / 10, 0.4]) for s in (0, 1)] + [run("tsp", s, [0.2, 0.5]) for s in (0, 1)]
    written = write_report(compare(runs), tmp_path)
    assert {p.name for p in written} == {"summary.csv", "cycles.csv", "runs.csv", "report.md", "dvc.yaml", "curves.png"}
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "report.md").read_text()
    lines = report.splitlines()
    # cycle 2: tsp 0.5 against random 0.4 on both seeds (same hours): better, at zero spread
    assert any(line.startswith("| tsp | 2 | 40 |") and line.endswith("| better than random | 0.100 ± 0.000 | better than random |")
               for line in lines)
    # cycle 1: differences 0 and -0.1, interval 12.706 x 0.05 wide each side
    assert any(line.startswith("| tsp | 1 | 20 |") and "| -0.050 ± 0.635 | within noise |" in line for line in lines)
    assert any(line.startswith("| random | 1 | 20 |") and line.endswith("| reference |") for line in lines)
    cycles = pd.read_csv(tmp_path / "cycles.csv")
    assert {"low", "high", "mask_AP50_mean", "sampler"} <= set(cycles.columns)


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--samplers", "random,tsp2", "--seeds", "0"], "unknown sampler(s) tsp2"),
        (["--samplers", "random", "--seeds", "0,0"], "distinct non-negative"),
        (["--samplers", "random", "--seeds", "a"], "comma-separated integers"),
        (["--samplers", "random"], "needs both --samplers and --seeds"),
        (["--samplers", "random", "--seeds", "0", "-S", "select.budget=500"], "the pool holds 400"),
        (["--samplers", "random", "--seeds", "0", "-S", "train.epochs"], "expected KEY=VALUE"),
    ],
)
def test_the_command_refuses_bad_grids_with_one_line(args, message, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the shipped params.yaml: pool of 400
    result = CliRunner().invoke(app, ["compare", "--no-run", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_a_samplers_own_requirements_may_differ_and_the_grid_adds_them():
    from salis.analysis.experiments import with_requirements

    a = run("random", 0, [0.2], **{"score.mc_passes": 0, "model.learning_loss": False})
    b = run("mc_dropout", 0, [0.3], **{"score.mc_passes": 10, "model.learning_loss": False})
    c = run("learning_loss", 0, [0.3], **{"score.mc_passes": 0, "model.learning_loss": True})
    kept, _ = select_runs([a, b, c])
    assert len(kept) == 3
    assert with_requirements("mc_dropout", ["train.epochs=5"]) == ["train.epochs=5", "score.mc_passes=10"]
    assert with_requirements("mc_dropout", ["score.mc_passes=4"]) == ["score.mc_passes=4"]
    assert with_requirements("tsp", []) == []


def test_saved_runs_load_back_equal_and_a_bad_file_is_refused_by_name(tmp_path: Path):
    from salis.analysis.experiments import load_runs, save_runs

    runs = [run("random", 0, [0.25, 0.5], **{"train.lr_steps": [0.75, 0.9], "model.weights": None}),
            run("tsp", 1, [0.125, 0.75])]
    save_runs(runs, tmp_path / "runs.json")
    back = load_runs(tmp_path / "runs.json")
    assert [(r.name, r.params) for r in back] == [(r.name, r.params) for r in runs]
    for a, b in zip(back, runs):
        pd.testing.assert_frame_equal(a.curve, b.curve, check_dtype=False)
    assert compare(back).per_sampler.equals(compare(runs).per_sampler)
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(SalisError, match=r"bad.json: expected a list of \{name, params, curve\}"):
        load_runs(tmp_path / "bad.json")
    with pytest.raises(SalisError, match="missing.json: no such file"):
        load_runs(tmp_path / "missing.json")


def test_included_runs_join_the_report_and_present_experiments_win(tmp_path: Path, monkeypatch):
    """Grids run in two clones: the report of one includes the other's runs.json."""
    from salis.analysis import experiments

    from salis.analysis.experiments import save_runs

    elsewhere = [run("random", 1, [0.3, 0.6]), run("tsp", 1, [0.3, 0.7]), run("tsp", 0, [0.9, 0.9], name="old-tsp-s0")]
    save_runs(elsewhere, tmp_path / "other.json")
    here = [run("random", 0, [0.2, 0.4]), run("tsp", 0, [0.2, 0.5])]
    monkeypatch.setattr(experiments, "collect_runs", lambda root: list(here))
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["compare", "--no-run", "--include", "other.json", "--out", "rep"])
    assert out.exit_code == 0, out.output
    runs = pd.read_csv(tmp_path / "rep" / "runs.csv")
    assert sorted(set(zip(runs["sampler"], runs["seed"], runs["run"]))) == [
        ("random", 0, "cmp-random-s0"), ("random", 1, "cmp-random-s1"), ("tsp", 0, "cmp-tsp-s0"), ("tsp", 1, "cmp-tsp-s1")]
    assert "kept cmp-tsp-s0, left out old-tsp-s0" in (tmp_path / "rep" / "report.md").read_text()
    assert len(experiments.load_runs(tmp_path / "rep" / "runs.json")) == 4


def test_a_run_of_another_sampler_with_a_requirement_is_refused():
    """entropy that trained a loss-prediction module (inherited from a learning_loss run) is not
    comparable; learning_loss itself and mc_dropout may carry their own requirements."""
    ok = [run("random", 0, [0.2]), run("learning_loss", 0, [0.2], **{"model.learning_loss": True}),
          run("mc_dropout", 0, [0.2], **{"score.mc_passes": 10})]
    assert len(select_runs(ok)[0]) == 3
    bad = ok + [run("entropy", 0, [0.2], **{"model.learning_loss": True})]
    with pytest.raises(SalisError, match=r"model.learning_loss.*cmp-entropy-s0"):
        select_runs(bad)


def test_every_run_of_a_grid_starts_from_heads_params(tmp_path: Path, monkeypatch):
    """`dvc exp run` leaves its -S in params.yaml; the next run of the grid must not inherit it."""
    import subprocess

    from salis.analysis import experiments

    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "params.yaml").write_text("sampler: random\nscore:\n  mc_passes: 0\n")
    git("add", "params.yaml")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "base")
    seen = []
    real_run = subprocess.run

    def fake_dvc(command, cwd, **kw):
        if command[0] == "git":
            return real_run(command, cwd=cwd, **kw)
        seen.append((command, (Path(cwd) / "params.yaml").read_text()))
        (Path(cwd) / "params.yaml").write_text("sampler: mc_dropout\nscore:\n  mc_passes: 10\n")  # what -S left
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(experiments.subprocess, "run", fake_dvc)
    monkeypatch.setattr(experiments, "experiment_refs", lambda root: [])
    experiments.run_grid(["mc_dropout", "entropy"], [0], [], 1, tmp_path, echo=lambda _: None)
    assert [c[0][c[0].index("-n") + 1] for c in seen] == ["cmp-mc_dropout-s0", "cmp-entropy-s0"]
    assert all(text == "sampler: random\nscore:\n  mc_passes: 0\n" for _, text in seen)
    assert "score.mc_passes=10" in seen[0][0] and not any("mc_passes" in a for a in seen[1][0])
    (tmp_path / "params.yaml").write_text("sampler: tsp\n")
    with pytest.raises(SalisError, match="params.yaml differs from the committed one"):
        experiments.run_grid(["tsp"], [0], [], 1, tmp_path, echo=lambda _: None)


def test_a_run_recorded_before_a_param_existed_reads_as_its_default():
    """Runs from older code lack newer keys (annotation.*) and keep removed ones (cost.kind): they
    compare as the current code reads them, so an old run is a `mask` run, not a refused one."""
    old = run("random", 0, [0.2, 0.4], **{"cost.kind": "mask"})  # before the annotation group
    new = run("tsp", 0, [0.3, 0.5], **{"annotation.policy": "mask", "annotation.mask_share": 0.5})
    kept, _ = select_runs([old, new])
    assert sorted(r.sampler for r in kept) == ["random", "tsp"]
    assert {r.params["annotation.policy"] for r in kept} == {"mask"} and all("cost.kind" not in r.params for r in kept)
    mixed = run("tsp", 0, [0.3, 0.5], **{"annotation.policy": "mixed"})
    with pytest.raises(SalisError, match=r"annotation\.policy \('mask' in cmp-random-s0, 'mixed' in cmp-tsp-s0\)"):
        select_runs([old, mixed])
    kept, _ = select_runs([old, mixed], match={"annotation.policy": "mask"})
    assert [r.name for r in kept] == ["cmp-random-s0"]


def test_params_of_a_switched_off_part_do_not_tell_runs_apart():
    """Pretraining off: its knobs change nothing, and a run from before the pretrain group compares
    with one whose params.yaml sets pretrain.vflip 0.5; switched on, the knobs count again."""
    old = run("random", 0, [0.2, 0.4])  # no pretrain keys at all
    off = run("tsp", 0, [0.3, 0.5], **{"pretrain.enabled": False, "pretrain.vflip": 0.5, "pretrain.rot90": 0.5})
    kept, _ = select_runs([old, off])
    assert [r.params["pretrain.vflip"] for r in kept] == [0.0, 0.0]
    on = run("tsp", 0, [0.3, 0.5], **{"pretrain.enabled": True, "pretrain.vflip": 0.5})
    with pytest.raises(SalisError, match=r"different settings: pretrain\.enabled \(False in cmp-random-s0, True in "
                                         r"cmp-tsp-s0\); compare"):  # vflip is inert in one of them
        select_runs([old, on])
    flipped = run("random", 0, [0.3, 0.5], **{"pretrain.enabled": True, "pretrain.vflip": 0.0})
    with pytest.raises(SalisError, match=r"pretrain\.vflip \(0\.5 in cmp-tsp-s0, 0\.0 in cmp-random-s0\)"):
        select_runs([on, flipped])  # both pretrained: the knob counts
    cycle = run("random", 1, [0.2, 0.4], **{"pseudo.mode": "cycle", "pseudo.ema_decay": 0.9})
    teacher = run("tsp", 1, [0.2, 0.4], **{"pseudo.mode": "teacher", "pseudo.ema_decay": 0.9})
    kept, _ = select_runs([cycle, teacher], by=["pseudo.mode"])
    assert sorted(r.params["pseudo.ema_decay"] for r in kept) == [0.9, 0.99]  # the default where inert
    ignored = run("random", 2, [0.2, 0.4], **{"pseudo.background": "ignore", "pseudo.background_score": 0.3})
    confident = run("tsp", 2, [0.2, 0.4], **{"pseudo.background": "confident", "pseudo.background_score": 0.3})
    kept, _ = select_runs([ignored, confident], by=["pseudo.background"])
    assert sorted(r.params["pseudo.background_score"] for r in kept) == [0.05, 0.3]


def test_boxinst_weights_count_only_where_boxes_are_labeled_and_old_runs_had_no_warmup():
    """train.box_pairwise_warmup came with default 0.5; runs recorded before it ran at 0 (the
    pairwise term at full weight). Without box labels the BoxInst knobs change nothing."""
    old_masks = run("random", 0, [0.2, 0.4])  # no warm-up key, mask labels
    new_masks = run("tsp", 0, [0.3, 0.5], **{"train.box_pairwise_warmup": 0.5})
    kept, _ = select_runs([old_masks, new_masks])
    assert [r.params["train.box_pairwise_warmup"] for r in kept] == [0.5, 0.5]  # inert: today's default
    old_boxes = run("random", 1, [0.0, 0.3], **{"select.initial_label": "box"})
    new_boxes = run("random", 1, [0.3, 0.4], **{"select.initial_label": "box", "train.box_pairwise_warmup": 0.5})
    kept, _ = select_runs([old_boxes, new_boxes], by=["train.box_pairwise_warmup"])
    assert sorted(r.params["train.box_pairwise_warmup"] for r in kept) == [0.0, 0.5]  # what each ran
    with pytest.raises(SalisError, match=r"train\.box_pairwise_warmup \(0\.0 in cmp-random-s1, 0\.5 in"):
        select_runs([old_boxes, run("tsp", 1, [0.3, 0.4], **{"select.initial_label": "box", "train.box_pairwise_warmup": 0.5})])
    mixed = run("tsp", 2, [0.3, 0.4], **{"annotation.policy": "mixed", "annotation.cheap": "box",
                                          "train.box_pairwise_weight": 2.0})
    points = run("random", 2, [0.3, 0.4], **{"annotation.policy": "mixed", "annotation.cheap": "point",
                                             "train.box_pairwise_weight": 2.0})
    kept, _ = select_runs([mixed, points], by=["annotation.cheap"])
    assert sorted(r.params["train.box_pairwise_weight"] for r in kept) == [1.0, 2.0]  # counts with boxes only


def test_arms_that_spend_other_hours_are_compared_at_equal_hours():
    """Reference: hours 2, 4, 6 -> AP50 0.2, 0.4, 0.6 (both seeds). The cheap arm spends 3, 5, 7 h:
    at 3 h the reference is at 0.3, at 5 h at 0.5, at 7 h beyond what it spans (no pair)."""
    def curve_run(name, seed, hours, ap, policy):
        r = run("random", seed, ap, name=name, **{"annotation.policy": policy})
        return dataclasses.replace(r, curve=r.curve.assign(annotation_hours=hours))
    refs = [curve_run(f"mask-s{s}", s, [2.0, 4.0, 6.0], [0.2, 0.4, 0.6], "mask") for s in (0, 1)]
    cheap = [curve_run("point-s0", 0, [3.0, 5.0, 7.0], [0.35, 0.52, 0.6], "point"),
             curve_run("point-s1", 1, [3.0, 5.0, 7.0], [0.351, 0.54, 0.6], "point")]
    kept, _ = select_runs(refs + cheap, by=["annotation.policy"])
    result = compare(kept, reference="random policy=mask")
    rows = result.per_cycle.set_index(["sampler", "cycle"])
    one, two = rows.loc[("random policy=point", 1)], rows.loc[("random policy=point", 2)]
    assert one["mask_AP50_hours_diff_mean"] == pytest.approx(0.0505)  # (0.05 + 0.051) / 2
    assert one["mask_AP50_hours_diff_ci95"] == pytest.approx(12.7062 * 0.0005, rel=1e-4)  # t(0.975, 1) x sd / sqrt(2)
    assert one["hours_verdict"] == "better than random policy=mask"
    assert two["mask_AP50_hours_diff_mean"] == pytest.approx(0.03)  # (0.02 + 0.04) / 2; half width 0.127
    assert two["hours_verdict"] == "within noise"  # while cycle by cycle (0.12, 0.14) it looks better
    assert two["verdict"] == "better than random policy=mask"
    assert rows.loc[("random policy=point", 3), "hours_pairs"] == 0
    final = result.per_sampler.set_index("sampler").loc["random policy=point"]
    assert math.isnan(final["final_mask_AP50_hours_diff_mean"]) and final["final_hours_verdict"] == "no pair"
    assert "at equal hours" in markdown(result)
