"""Stage `select@k`: the next batch (request@k writes it out for annotators)."""

from __future__ import annotations

import pandas as pd

from salis.acquisition.samplers import get_sampler
from salis.artifacts.layout import Layout
from salis.artifacts.tables import IMAGES, INSTANCES, LABELED, SELECTED, check_parquet_schema, read_table, write_table
from salis.data.prepared import PreparedData, SimulatedOracle
from salis.loop.budget import CycleBudget
from salis.loop.labels import instance_counts, read_store
from salis.loop.pricing import cost_model
from salis.loop.selection import select_batch
from salis.params import Params


def stage_select(params: Params, layout: Layout, cycle: int) -> pd.DataFrame:
    prepared = PreparedData(layout.prepared)
    sampler = get_sampler(params.sampler, params.select)
    check_parquet_schema(layout.instances(cycle), INSTANCES)
    store = read_store(layout.annotations(cycle))
    counts = list(instance_counts(store).values())
    budget = CycleBudget(
        images=params.select.budget,
        hours=params.select.budget_hours,
        mean_instances=sum(counts) / len(counts) if counts else 0.0,
        num_categories=len(prepared.categories),
        cost=cost_model(params.cost, store),
    )
    selected = select_batch(
        sampler,
        read_table(layout.labeled(cycle), LABELED),
        read_table(layout.images(cycle), IMAGES),
        prepared.pool_ids(),
        budget,
        cycle,
        params.seed,
        len(prepared.categories),
        instances_path=layout.instances(cycle),
        embeddings_path=layout.embeddings(cycle),
        oracle=SimulatedOracle(prepared) if params.oracle == "simulated" else None,
        policy=params.annotation,
        per_hour=params.select.per_hour,
    )
    write_table(layout.selected(cycle), selected, SELECTED)
    return selected
