"""Stage `select@k`: the next batch (request@k writes it out for annotators)."""

from __future__ import annotations

import pandas as pd

from salis.acquisition.samplers import get_sampler
from salis.artifacts.layout import Layout
from salis.artifacts.tables import IMAGES, INSTANCES, LABELED, SELECTED, check_parquet_schema, read_table, write_table
from salis.data.prepared import PreparedData, SimulatedOracle
from salis.loop.selection import select_batch
from salis.params import Params


def stage_select(params: Params, layout: Layout, cycle: int) -> pd.DataFrame:
    prepared = PreparedData(layout.prepared)
    sampler = get_sampler(params.sampler, params.select)
    check_parquet_schema(layout.instances(cycle), INSTANCES)
    selected = select_batch(
        sampler,
        read_table(layout.labeled(cycle), LABELED),
        read_table(layout.images(cycle), IMAGES),
        prepared.pool_ids(),
        params.select.budget,
        cycle,
        params.seed,
        len(prepared.categories),
        instances_path=layout.instances(cycle),
        embeddings_path=layout.embeddings(cycle),
        oracle=SimulatedOracle(prepared) if params.oracle == "simulated" else None,
    )
    write_table(layout.selected(cycle), selected, SELECTED)
    return selected
