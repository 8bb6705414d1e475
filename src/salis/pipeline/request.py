"""Stage `request@k`: the request batch of the images select@k picked, for annotators.

It runs after evaluate@k (it reads cycle k's test metrics, only to tell the annotators how good
the model that chose the batch is), and annotate@k+1 depends on it, so in human mode `dvc repro`
evaluates the current model before it stops to wait for labels. The selection itself never sees
the test split: select@k has already written selected.parquet when this stage starts.
"""

from __future__ import annotations

import json

import pandas as pd

from salis.annotation.export import write_request_batch
from salis.artifacts.layout import Layout
from salis.artifacts.tables import INSTANCES, SELECTED, check_parquet_schema, read_table
from salis.data.prepared import PreparedData
from salis.params import Params


def model_summary(layout: Layout, cycle: int) -> str:
    """One line on the model whose predictions come with batch `cycle`."""
    metrics = json.loads(layout.metrics(cycle).read_text())
    return (
        f"The model that chose this batch (cycle {cycle}, trained on {metrics['labeled_images']} labeled images) "
        f"scores mask AP50 {metrics['mask_AP50']:.3f} on the test split."
    )


def stage_request(params: Params, layout: Layout, cycle: int) -> dict:
    prepared = PreparedData(layout.prepared)
    selected = read_table(layout.selected(cycle), SELECTED)
    ids = selected["image_id"].tolist()
    check_parquet_schema(layout.instances(cycle), INSTANCES)
    predictions = INSTANCES.read_rows(layout.instances(cycle), filters=[("image_id", "in", ids)]) if ids else INSTANCES.empty()
    summary = write_request_batch(
        layout.requests(cycle), prepared, ids, predictions, cycle=cycle, model_note=model_summary(layout, cycle),
        min_score=params.annotation.pre_annotation_score, label_types=selected["label_type"].tolist(),
    )
    kinds = ", ".join(f"{v['images']} {t}" for t, v in summary["by_type"].items())
    print(f"cycle {cycle}: request batch of {summary['images']} images ({kinds}) with {summary['pre_annotations']} "
          f"pre-annotations ({summary['below_min_score']} detections under annotation.pre_annotation_score "
          f"{params.annotation.pre_annotation_score} left out) -> {summary['out_dir']}")
    return summary
