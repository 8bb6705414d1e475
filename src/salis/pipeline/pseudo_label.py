"""Stage `pseudo_label@k`: confident detections of still-unlabeled images, for cycle k+1."""

from __future__ import annotations

import pandas as pd

from salis.artifacts.layout import Layout
from salis.artifacts.tables import INSTANCES, LABELED, PSEUDO, SELECTED, check_parquet_schema, read_table, write_table
from salis.loop.cycle import pseudo_labels
from salis.params import Params


def stage_pseudo_label(params: Params, layout: Layout, cycle: int) -> pd.DataFrame:
    # images labeled or about to be labeled never get pseudo-labels
    labeled = read_table(layout.labeled(cycle), LABELED)["image_id"].tolist()
    next_labeled = frozenset(labeled + read_table(layout.selected(cycle), SELECTED)["image_id"].tolist())
    check_parquet_schema(layout.instances(cycle), INSTANCES)
    p = params.pseudo
    table = pseudo_labels(layout.instances(cycle), next_labeled, p.score_thresh, p.box_iou_thresh, p.mask_iou_thresh)
    if len(table) and table["mask_iou"].isna().all():
        print("pseudo_label: the scoring model has no IoU heads; only pseudo.score_thresh was applied")
    print(f"cycle {cycle}: {len(table)} pseudo-labels on {table['image_id'].nunique()} images for cycle {cycle + 1}")
    write_table(layout.pseudo(cycle + 1), table, PSEUDO)
    return table
