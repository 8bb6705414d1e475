"""Stage `annotate@k`: labeled@k and its label store, from the simulated oracle or humans."""

from __future__ import annotations

import pandas as pd

from salis.annotation.kinds import label_kind
from salis.artifacts.atomic import write_json
from salis.artifacts.layout import Layout
from salis.artifacts.tables import LABELED, SELECTED, read_table, write_table
from salis.data.prepared import PreparedData
from salis.errors import SalisError
from salis.loop.cycle import add_labeled
from salis.loop.pricing import cost_model
from salis.loop.labels import (
    awaiting_message, extend_store, human_batch, read_pre_annotations, read_store, simulated_batch,
)
from salis.params import Params


def stage_annotate(params: Params, layout: Layout, cycle: int) -> pd.DataFrame:
    """Cycle k-1's labeled set plus the batch selected after it.

    Labels come from the simulated oracle, or from humans through `salis labels import`; until
    those exist this stage stops the pipeline with the command to run.
    """
    prepared = PreparedData(layout.prepared)
    batch_cycle = cycle - 1
    selected = read_table(layout.selected(batch_cycle), SELECTED)
    labeled = read_table(layout.labeled(batch_cycle), LABELED)
    store = read_store(layout.annotations(batch_cycle))
    ids = selected["image_id"].tolist()
    types = selected["label_type"].tolist()
    if params.oracle == "simulated":
        # a kind corrected from the model's masks starts from what its request file offered
        pre = {}
        for kind in {label_kind(t) for t in types}:
            if kind.reads_pre_annotations:
                pre |= read_pre_annotations(layout.requests(batch_cycle) / f"request{kind.suffix}.json")
        batch = simulated_batch(prepared, ids, types, params.annotation.point_placement, params.seed, batch_cycle,
                                pre_annotations=pre, accept_iou=params.annotation.correct_accept_iou,
                                fix_iou=params.annotation.correct_fix_iou)
        source = "simulated_oracle"
    else:
        paths = {t: layout.imported_labels(batch_cycle, suffix=label_kind(t).suffix) for t in set(types)}
        waiting = [awaiting_message(batch_cycle, layout.requests(batch_cycle), paths[t], t)
                   for t in sorted(paths) if not paths[t].is_file()]
        if waiting:
            raise SalisError("; and ".join(waiting))
        batch = human_batch(paths, ids, types, set(prepared.category_ids))
        source = "human"
    infos = [prepared.image_info(i) | batch.fields.get(i, {}) for i in batch.annotations]
    extended = extend_store(store, infos, batch.annotations)
    cost = cost_model(params.cost, extended)  # measured: fitted to the times so far, this batch's included
    categories = len(prepared.categories)
    seconds = {i: cost.image_seconds(batch.instances(i), categories, batch.label_type(i), batch.fields.get(i))
               for i in batch.annotations}
    merged = add_labeled(labeled, selected, set(batch.annotations), seconds, cycle, source)
    write_json(layout.annotations(cycle), extended)
    write_table(layout.labeled(cycle), merged, LABELED)
    note = f"; {len(batch.returned)} returned to the pool unlabeled" if batch.returned else ""
    kinds = pd.Series([batch.label_type(i) for i in batch.annotations]).value_counts().sort_index()
    by_type = ", ".join(f"{n} {t}" for t, n in kinds.items())
    print(f"cycle {cycle}: {len(batch.annotations)} images labeled by {source} ({by_type}){note}; "
          f"{len(merged)} labeled in all")
    return merged
