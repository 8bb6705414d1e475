"""Stage `weak_label@k`: training targets for cycle k from the point- and image-labeled images,
made with the latest model (cycle k-1's): point-guided pseudo-labels and image-label-filtered
detections (salis.loop.weak). Box-labeled images need no model: train@k reads their boxes."""

from __future__ import annotations

import dataclasses

import pandas as pd

from salis.artifacts.atomic import write_json
from salis.artifacts.layout import Layout
from salis.artifacts.tables import WEAK, write_table
from salis.annotation.kinds import label_kind
from salis.data.prepared import PreparedData
from salis.loop.labels import label_types_of, read_store
from salis.params import Params


def stage_weak_label(params: Params, layout: Layout, cycle: int) -> pd.DataFrame:
    prepared = PreparedData(layout.prepared)
    store = read_store(layout.annotations(cycle))
    weak_ids = sorted(i for i, t in label_types_of(store).items() if label_kind(t).training == "weak")
    # torch and the model load only when there are weak labels: with full masks this stage is a no-op
    from salis.loop.weak import WeakSummary, weak_targets

    if not weak_ids:
        write_table(layout.weak(cycle), WEAK.empty(), WEAK)
        write_json(layout.weak_summary(cycle), WeakSummary().as_dict())
        return WEAK.empty()
    from salis.engine.device import configure_runtime, pick_device
    from salis.engine.inference import masks_at_boxes, predict
    from salis.model.checkpoint import load_model

    configure_runtime(params.runtime)
    model, _ = load_model(layout.model(cycle - 1))
    device, amp = pick_device(params.runtime.device), params.runtime.amp

    def refine(image_id, boxes, categories):
        return masks_at_boxes(model, prepared, image_id, boxes, categories, device, amp)

    predictions = predict(model, prepared, weak_ids, params.score.batch_size, device, amp, "weak labels")
    first = prepared.image_info(weak_ids[0])
    fallback = min(first["height"], first["width"]) / 8.0  # no labeled box to size a refinement by
    table, summary = weak_targets(predictions, store, params.weak, refine, fallback)
    write_table(layout.weak(cycle), table, WEAK)
    write_json(layout.weak_summary(cycle), summary.as_dict())
    s = dataclasses.asdict(summary)
    print(f"cycle {cycle}: weak labels of {len(weak_ids)} images -> {len(table)} targets; points: "
          f"{s['points_claimed']} claimed a detection, {s['points_refined']} refined, {s['points_failed']} without a mask "
          f"of {s['points']}; image labels: {s['image_label_kept']} of {s['counted_instances']} counted instances found; "
          f"{s['complete_images']} images complete")
    return table
