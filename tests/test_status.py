"""`salis status`'s table (salis.analysis.status.render_table) from a hand-made LoopStatus: the
per-type columns appear only when the loop uses several label types; a cycle not labeled yet is
a dash. The whole command runs on a real project in tests/test_pipeline.py."""

from __future__ import annotations

from salis.analysis.status import CycleRow, LoopStatus, render_table


def _status(types: list[str], rows: list[CycleRow]) -> LoopStatus:
    return LoopStatus("dataset", "plan", "planned", types, rows, current=None, awaiting=[])


def test_one_label_type_has_no_breakdown_and_unlabeled_cycles_are_dashes():
    rows = [CycleRow(1, labeled=4, images_by_type={"mask": 4}, hours_by_type={"mask": 0.5}, pseudo=(2, 5),
                     unlabeled=20, hours=0.5, mask_ap50=0.1234), CycleRow(2)]
    assert render_table(_status(["mask"], rows)) == [
        "cycle labeled pseudo img pseudo inst unlabeled  hours mask AP50",
        "    1       4          2           5        20   0.50     0.123",
        "    2       -",
    ]


def test_several_label_types_get_image_and_hour_columns_each():
    rows = [CycleRow(1, labeled=7, images_by_type={"mask": 4, "correct": 3}, hours_by_type={"mask": 1.0, "correct": 0.25},
                     pseudo=None, unlabeled=17, hours=1.25, mask_ap50=None)]
    header, row = render_table(_status(["mask", "correct"], rows))
    assert header.split() == ["cycle", "labeled", "mask", "correct", "pseudo", "img", "pseudo", "inst", "unlabeled",
                              "hours", "h", "mask", "h", "correct", "mask", "AP50"]
    assert row.split() == ["1", "7", "4", "3", "-", "-", "17", "1.25", "1.00", "0.25", "-"]
    assert _status(["mask"], rows + [CycleRow(2)]).labeled_now == (7, 1.25)
    assert _status(["mask"], [CycleRow(1)]).labeled_now == (0, 0.0)
