"""Stage `pictures@k`: cycle k's galleries for a reviewer (salis.analysis.pictures), from the
tables the other stages wrote: the selected batch and the pool's highest- and lowest-ranked
images, pseudo-labels and targets from weak labels (the hidden truth beside them in simulated
mode), and the worst test images. `dvc plots show` renders them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from salis.analysis.pictures import Panel, SAMPLER_SCORES, draw_grid, instance_panels, ranked_by_sampler, truth_panel
from salis.artifacts.layout import Layout
from salis.artifacts.tables import IMAGES, INSTANCES, PSEUDO, SELECTED, TEACHER_PSEUDO, TEST_DETECTIONS, TEST_IMAGES, WEAK, read_table
from salis.data.prepared import PreparedData, SimulatedOracle
from salis.params import Params

DISPLAY_SCORE = 0.3  # detections drawn: class score at least this (the sampler may see more)


def evenly(ids: list[int], n: int) -> list[int]:
    """n ids spread over a sorted list (all of them when there are fewer)."""
    if len(ids) <= n:
        return ids
    return [ids[int(i)] for i in np.linspace(0, len(ids) - 1, n).round()]


def stage_pictures(params: Params, layout: Layout, cycle: int) -> list:
    prepared = PreparedData(layout.prepared)
    n = params.pictures.images
    out = layout.pictures(cycle)
    oracle = SimulatedOracle(prepared) if params.oracle == "simulated" else None
    written = [selection_gallery(params, layout, prepared, cycle, n, out / "selection.jpg")]
    written.append(pseudo_gallery(layout, prepared, oracle, cycle, n, out / "pseudo.jpg"))
    written.append(worst_test_gallery(layout, prepared, cycle, n, out / "worst_test.jpg"))
    return written


def _detections(layout: Layout, cycle: int, ids: list[int]) -> dict[int, pd.DataFrame]:
    if not ids:
        return {}
    rows = INSTANCES.read_rows(layout.instances(cycle), filters=[("image_id", "in", ids)])
    rows = rows[(rows["score"] >= DISPLAY_SCORE) & rows["rle"].notna()]  # no mask below score.mask_min_score
    return {i: rows[rows["image_id"] == i] for i in ids}


def selection_gallery(params: Params, layout: Layout, prepared: PreparedData, cycle: int, n: int, path):
    selected = read_table(layout.selected(cycle), SELECTED)
    images = read_table(layout.images(cycle), IMAGES)
    read_table(layout.instances(cycle), INSTANCES, columns=["image_id"])  # refuses a missing or foreign table
    column, _, instance_column = SAMPLER_SCORES.get(params.sampler, (None, True, "score"))
    score_of = dict(zip(images["image_id"], images[column])) if column else {}
    ranked = ranked_by_sampler(images, params.sampler, params.select.beta)
    rows, labels = [], []
    groups = [("selected", selected["image_id"].tolist()[:n], dict(zip(selected["image_id"], selected["label_type"])))]
    if ranked is not None:
        groups += [("highest ranked", ranked["image_id"].tolist()[:n], {}),
                   ("lowest ranked", ranked["image_id"].tolist()[::-1][:n], {})]
    for label, ids, types in groups:
        dets = _detections(layout, cycle, ids)
        row = []
        for i in ids:
            score = score_of.get(i)
            title = f"#{i}" + (f" {types[i]}" if i in types else "") + (
                f"\n{column} {score:.3f}" if score is not None and np.isfinite(score) else "")
            row.append(instance_panels(prepared.load_image(i), dets[i], instance_column, title))
        rows.append(row)
        labels.append(label)
    what = f"coloured by {instance_column}" if instance_column != "score" else "coloured by class score"
    return draw_grid(rows, path, f"cycle {cycle}: batch picked by {params.sampler} (detections with score >= "
                                 f"{DISPLAY_SCORE}, {what}; dark = low)", labels)


def pseudo_gallery(layout: Layout, prepared: PreparedData, oracle, cycle: int, n: int, path):
    pseudo = read_table(layout.pseudo(cycle), PSEUDO)  # what cycle k trained on besides full labels
    teacher = read_table(layout.teacher_pseudo(cycle), TEACHER_PSEUDO)  # pseudo.mode teacher: as last labeled
    weak = read_table(layout.weak(cycle), WEAK)
    rows, labels = [], []
    store_points = _points(layout, cycle)
    for name, table in (("pseudo-labels", pseudo), ("teacher's labels", teacher), ("from weak labels", weak)):
        ids = evenly(sorted(set(table["image_id"].tolist())), n)
        if not ids:
            continue
        row, truth = [], []
        for i in ids:
            image = prepared.load_image(i)
            panel = instance_panels(image, table[table["image_id"] == i], "score", f"#{i} {name}")
            panel.points = store_points.get(i, ())
            row.append(panel)
            if oracle is not None:
                truth.append(truth_panel(image, oracle.annotations(i), f"#{i} hidden truth"))
        rows.append(row)
        labels.append(name)
        if truth:
            rows.append(truth)
            labels.append("truth")
    title = (f"cycle {cycle}: the pseudo-labels and targets from weak labels it trained on (points: red x)"
             if rows else f"cycle {cycle}: no pseudo-labels and no weak labels this cycle")
    return draw_grid(rows, path, title, labels)


def _points(layout: Layout, cycle: int) -> dict[int, list[tuple[float, float]]]:
    import json

    store = json.loads(layout.annotations(cycle).read_text())
    out: dict[int, list[tuple[float, float]]] = {}
    for ann in store["annotations"]:
        if "point" in ann:
            out.setdefault(int(ann["image_id"]), []).append(tuple(ann["point"]))
    return out


def worst_test_gallery(layout: Layout, prepared: PreparedData, cycle: int, n: int, path):
    per_image = read_table(layout.test_images(cycle), TEST_IMAGES)
    worst = per_image.sort_values(["mask_AP50", "image_id"]).head(n)
    dets = read_table(layout.test_detections(cycle), TEST_DETECTIONS)
    dets = dets[dets["score"] >= DISPLAY_SCORE]
    truth = {}
    for ann in prepared.test_coco()["annotations"]:
        truth.setdefault(int(ann["image_id"]), []).append(ann)
    predicted, actual = [], []
    for row in worst.itertuples(index=False):
        image = prepared.load_image(int(row.image_id))
        predicted.append(instance_panels(image, dets[dets["image_id"] == row.image_id], "score",
                                         f"#{row.image_id} AP50 {row.mask_AP50:.2f}"))
        actual.append(truth_panel(image, truth.get(int(row.image_id), []), f"{row.instances} instances"))
    return draw_grid([predicted, actual], path, f"cycle {cycle}: the test images the model does worst on "
                                                f"(per-image mask AP50)", ["predicted", "truth"])
