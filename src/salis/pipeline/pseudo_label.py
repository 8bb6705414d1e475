"""Stage `pseudo_label@k`: the pseudo-labels cycle k trains on: model k-1's confident detections
(instances@k-1) of images still unlabeled, through the gate (salis.loop.gate), and with
pseudo.background confident the boxes near which those images' background stays untrusted.

It runs after annotate@k: a calibrated gate learns its thresholds from model k-1's detections on
batch k-1 (the images it selected) against the masks that batch was just labeled with, which
model k-1 never trained on. Cycle 1 has no scores yet (init writes an empty instances@0).
"""

from __future__ import annotations

import pandas as pd

from salis.annotation.kinds import kinds_training
from salis.artifacts.atomic import write_json
from salis.artifacts.layout import Layout
from salis.artifacts.tables import (INSTANCES, LABELED, PSEUDO, PSEUDO_UNCERTAIN, SELECTED, check_parquet_schema, read_table,
                                   write_table)
from salis.loop.cycle import pseudo_labels, uncertain_boxes
from salis.loop.gate import GateReport, calibrated_gate, fixed_gate
from salis.loop.labels import read_store
from salis.params import Params


def stage_pseudo_label(params: Params, layout: Layout, cycle: int) -> pd.DataFrame:
    scored = layout.instances(cycle - 1)
    check_parquet_schema(scored, INSTANCES)
    labeled = read_table(layout.labeled(cycle), LABELED)
    batch = read_table(layout.selected(cycle - 1), SELECTED)["image_id"].tolist()
    # images labeled or requested (an annotator may not have returned them yet) never get pseudo-labels
    excluded = frozenset(labeled["image_id"].tolist() + batch)
    report = _gate(params, layout, cycle, scored, labeled, batch)
    if report.gate is None or params.pseudo.mode == "teacher":  # a teacher labels during training instead
        table = PSEUDO.empty()
    else:
        g = report.gate
        table = pseudo_labels(scored, excluded, g.score, g.box_iou, g.mask_iou)
    if len(table) and table["mask_iou"].isna().all():
        print("pseudo_label: the scoring model has no IoU heads; only the class score was gated")
    print(f"cycle {cycle}: gate {report.reason}")
    if params.pseudo.mode == "teacher":
        print(f"cycle {cycle}: pseudo.mode teacher: train@{cycle}'s EMA teacher makes the pseudo-labels, through this gate")
    print(f"cycle {cycle}: {len(table)} pseudo-labels on {table['image_id'].nunique()} images")
    write_table(layout.pseudo(cycle), table, PSEUDO)
    uncertain = PSEUDO_UNCERTAIN.empty()
    if params.pseudo.background == "confident" and len(table):
        uncertain = uncertain_boxes(scored, frozenset(table["image_id"].tolist()), params.pseudo.background_score)
        print(f"cycle {cycle}: pseudo-labeled images learn background away from {len(uncertain)} detections of "
              f"model {cycle - 1} scoring >= {params.pseudo.background_score}")
    write_table(layout.pseudo_uncertain(cycle), uncertain, PSEUDO_UNCERTAIN)
    write_json(layout.pseudo_gate(cycle), report.as_json() | {"pseudo_labels": len(table),
                                                               "pseudo_images": int(table["image_id"].nunique())})
    return table


def _gate(params: Params, layout: Layout, cycle: int, scored, labeled: pd.DataFrame, batch: list[int]) -> GateReport:
    p = params.pseudo
    if p.gate == "fixed":
        return fixed_gate(p.score_thresh, p.box_iou_thresh, p.mask_iou_thresh)
    if cycle == 1:  # instances@0 is init's empty table
        return GateReport(mode="calibrated", gate=None, reason="closed: cycle 1, no model has scored the pool yet")
    # calibration images: batch k-1's images that came back with full masks
    full = [k.name for k in kinds_training("full")]
    masks = labeled[labeled["label_type"].isin(full) & labeled["image_id"].isin(batch)]["image_id"]
    ids = set(masks.tolist())
    truth: dict[int, list[dict]] = {i: [] for i in ids}
    if ids:
        for ann in read_store(layout.annotations(cycle))["annotations"]:
            if int(ann["image_id"]) in ids:
                truth[int(ann["image_id"])].append(ann)
    detections = INSTANCES.read_rows(scored, filters=[("image_id", "in", sorted(ids))]) if ids else INSTANCES.empty()
    return calibrated_gate(detections, truth.__getitem__, p.target_precision, params.score.mask_min_score, len(ids),
                           p.calibration_unit)
