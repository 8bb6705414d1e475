"""Stage `report`: the learning curve and summary over all cycles, and the last cycle's
predicted-vs-true mask IoU, as `dvc plots` data and as PNG."""

from __future__ import annotations

import pandas as pd

from salis.analysis.pictures import calibration_scatter, learning_curves
from salis.analysis.report import write_report
from salis.artifacts.atomic import write_text
from salis.artifacts.layout import Layout
from salis.artifacts.tables import IOU_PAIRS, read_table
from salis.errors import InputError
from salis.params import Params


def stage_report(params: Params, layout: Layout) -> None:
    cycles = sorted(c.k for c in params.cycles.values())
    write_report(layout.metrics_dir, layout.curve, layout.summary, cycles)
    last = cycles[-1]
    source = layout.iou_pairs(last)
    if not source.is_file():
        raise InputError(source, f"missing; it is written by evaluate@c{last}")
    write_text(layout.calibration, source.read_text())
    learning_curves(pd.read_csv(layout.curve), layout.curves_png)
    calibration_scatter(read_table(source, IOU_PAIRS), layout.calibration_png, last)
