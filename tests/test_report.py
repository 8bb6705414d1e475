"""build_report / write_report on three hand-built cycles given out of order."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from salis.errors import InputError
from salis.analysis.report import build_report, write_report


def cycle(k: int, labeled: int, ap50: float, **extra: object) -> dict:
    return {
        "cycle": k,
        "labeled_images": labeled,
        "labeled_instances": 3 * labeled,
        "pseudo_images": 10 * k,
        "pseudo_instances": 25 * k,
        "mask_AP": ap50 / 2,
        "mask_AP50": ap50,
        "mask_AP75": ap50 / 4,
        "box_AP": ap50 / 2 + 0.01,
        "box_AP50": ap50 + 0.02,
        "mask_AR": 0.5,
        **extra,
    }


# Cycle 1 is best on mask_AP50; cycle 2 ends lower. Extra keys: one numeric, one not.
CYCLES = [
    cycle(2, 30, 0.5, num_detections=40, model="maskrcnn"),
    cycle(0, 10, 0.25, num_detections=20, model="maskrcnn"),
    cycle(1, 20, 0.625, num_detections=30, model="maskrcnn"),
]


def write_cycles(folder: Path, cycles: list[dict]) -> Path:
    folder.mkdir()
    for m in cycles:
        (folder / f"{m['cycle']}.json").write_text(json.dumps(m))
    return folder


def test_build_report_sorts_and_summarises() -> None:
    rows, summary = build_report(CYCLES)
    assert [r["cycle"] for r in rows] == [0, 1, 2]
    assert list(rows[0]) == [
        "cycle", "labeled_images", "labeled_instances", "pseudo_images", "pseudo_instances",
        "mask_AP", "mask_AP50", "mask_AP75", "box_AP", "box_AP50", "mask_AR", "num_detections",
    ]  # fmt: skip
    assert "model" not in rows[0]  # not numeric, so not a curve column
    assert summary["cycles"] == 3
    assert summary["best_mask_AP50"] == 0.625
    assert summary["best_mask_AP50_cycle"] == 1
    assert summary["mask_AP50_gain"] == pytest.approx(0.5 - 0.25)
    assert summary["labeled_images_final"] == 30
    last = CYCLES[0]  # cycle 2, the last one
    assert summary["final"] == {k: last[k] for k in ("cycle", "labeled_images", "annotation_hours", "pseudo_images", "mask_AP", "mask_AP50", "mask_AP75", "box_AP") if k in last}


def test_best_cycle_tie_goes_to_earliest() -> None:
    _, summary = build_report([cycle(1, 20, 0.5), cycle(0, 10, 0.5)])
    assert summary["best_mask_AP50_cycle"] == 0
    assert summary["mask_AP50_gain"] == 0.0


def test_build_report_rejects_empty_and_duplicate_cycles() -> None:
    with pytest.raises(ValueError, match="no cycle"):
        build_report([])
    with pytest.raises(ValueError, match=r"\[1\]"):
        build_report([cycle(1, 20, 0.5), cycle(1, 20, 0.5)])


def test_write_report_files(tmp_path: Path) -> None:
    metrics_dir = write_cycles(tmp_path / "metrics", CYCLES)
    curve, summary_path = tmp_path / "out" / "curve.csv", tmp_path / "out" / "summary.json"
    write_report(metrics_dir, curve, summary_path, [0, 1, 2])

    lines = curve.read_text().splitlines()
    assert lines == [
        "cycle,labeled_images,labeled_instances,pseudo_images,pseudo_instances,"
        "mask_AP,mask_AP50,mask_AP75,box_AP,box_AP50,mask_AR,num_detections",
        "0,10,30,0,0,0.125,0.25,0.0625,0.135,0.27,0.5,20",
        "1,20,60,10,25,0.3125,0.625,0.15625,0.3225,0.645,0.5,30",
        "2,30,90,20,50,0.25,0.5,0.125,0.26,0.52,0.5,40",
    ]
    summary = json.loads(summary_path.read_text())
    assert summary["best_mask_AP50_cycle"] == 1
    assert summary["final"]["cycle"] == 2
    # Nothing but the two outputs left behind (no temp files from the atomic writes).
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["curve.csv", "summary.json"]


def test_missing_optional_column_is_an_empty_cell(tmp_path: Path) -> None:
    without_box50 = {k: v for k, v in cycle(0, 10, 0.25).items() if k != "box_AP50"}
    metrics_dir = write_cycles(tmp_path / "metrics", [without_box50])
    write_report(metrics_dir, tmp_path / "curve.csv", tmp_path / "summary.json", [0])
    [row] = list(csv.DictReader((tmp_path / "curve.csv").open()))
    assert row["box_AP50"] == ""
    assert row["mask_AP50"] == "0.25"


def test_corrupt_file_raises_input_error_naming_it(tmp_path: Path) -> None:
    metrics_dir = write_cycles(tmp_path / "metrics", CYCLES[:2])
    (metrics_dir / "7.json").write_text('{"cycle": 7, "mask_AP50": ')
    with pytest.raises(InputError, match="7.json") as info:
        write_report(metrics_dir, tmp_path / "curve.csv", tmp_path / "summary.json", [0, 2, 7])
    assert info.value.path == str(metrics_dir / "7.json")
    assert not (tmp_path / "curve.csv").exists()


def test_file_without_cycle_raises_input_error(tmp_path: Path) -> None:
    no_cycle = {k: v for k, v in cycle(3, 40, 0.5).items() if k != "cycle"}
    metrics_dir = write_cycles(tmp_path / "metrics", CYCLES[:1])
    (metrics_dir / "3.json").write_text(json.dumps(no_cycle))
    with pytest.raises(InputError, match=r"3\.json.*cycle"):
        write_report(metrics_dir, tmp_path / "curve.csv", tmp_path / "summary.json", [2, 3])


def test_a_file_whose_cycle_is_not_its_name_is_refused(tmp_path: Path) -> None:
    metrics_dir = write_cycles(tmp_path / "metrics", CYCLES[:1])
    (metrics_dir / "9.json").write_text(json.dumps(CYCLES[0]))  # says cycle 2
    with pytest.raises(InputError, match=r"9\.json.*reports cycle 2, not 9"):
        write_report(metrics_dir, tmp_path / "curve.csv", tmp_path / "summary.json", [2, 9])


def test_only_the_asked_cycles_enter_the_curve_and_a_missing_one_is_named(tmp_path: Path) -> None:
    # a longer run before left cycles 1 and 2; this run's params hold cycle 0 only
    metrics_dir = write_cycles(tmp_path / "metrics", CYCLES)
    write_report(metrics_dir, tmp_path / "curve.csv", tmp_path / "summary.json", [0])
    assert [row["cycle"] for row in csv.DictReader((tmp_path / "curve.csv").open())] == ["0"]
    assert json.loads((tmp_path / "summary.json").read_text())["final"]["cycle"] == 0
    with pytest.raises(InputError, match=r"5\.json: missing; evaluate@c5 writes it"):
        write_report(metrics_dir, tmp_path / "curve.csv", tmp_path / "summary.json", [0, 5])


def test_empty_metrics_dir_raises_input_error(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    with pytest.raises(InputError, match="missing"):
        write_report(tmp_path / "metrics", tmp_path / "curve.csv", tmp_path / "summary.json", [1])
