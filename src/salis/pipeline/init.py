"""Stage `init`: the random initial batch (request batch 0) and the empty cycle-0 tables."""

from __future__ import annotations

import pandas as pd

from salis.annotation.export import write_request_batch
from salis.artifacts.atomic import write_json
from salis.artifacts.layout import Layout
from salis.artifacts.tables import INSTANCES, LABELED, SELECTED, write_table
from salis.data.prepared import PreparedData
from salis.loop.cycle import check_budget, initial_selection
from salis.loop.labels import empty_store
from salis.params import Params


def stage_init(params: Params, layout: Layout) -> pd.DataFrame:
    """The random initial batch; refuses impossible budgets before any training."""
    prepared = PreparedData(layout.prepared)
    pool_ids = prepared.pool_ids()
    check_budget(len(pool_ids), params.select.initial, params.select.budget, params.num_cycles)
    selected = initial_selection(pool_ids, params.select.initial, params.seed)
    write_table(layout.selected(0), selected, SELECTED)
    write_table(layout.labeled(0), LABELED.empty(), LABELED)
    write_json(layout.annotations(0), empty_store(prepared.categories))
    write_table(layout.instances(0), INSTANCES.empty(), INSTANCES)  # no model has scored anything yet
    write_request_batch(layout.requests(0), prepared, selected["image_id"].tolist(), INSTANCES.empty(), cycle=0)
    return selected
