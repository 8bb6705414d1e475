"""The cost model a stage prices labels with (`cost.source`): the params' terms, or the annotators'
measured times so far with per-type terms fitted to them (salis.analysis.measured_cost)."""

from __future__ import annotations

from salis.analysis.measured_cost import fitted_cost_model, store_rows
from salis.annotation.cost import CostModel
from salis.loop.labels import instance_counts
from salis.params import CostParams


def cost_model(params: CostParams, store: dict) -> CostModel:
    """cost.source model: CostModel.from_params; measured: fitted to the timed images of `store`
    (the label store so far), each timed image priced by its own time."""
    if params.source != "measured":
        return CostModel.from_params(params)
    return fitted_cost_model(params, store_rows(store, instance_counts(store)))
