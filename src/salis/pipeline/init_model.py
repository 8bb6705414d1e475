"""Stage `init_model`: the weights every cycle starts from (seeded random init or a local file)."""

from __future__ import annotations

from salis.artifacts.layout import Layout
from salis.data.prepared import PreparedData
from salis.engine.device import configure_runtime
from salis.model.build import seeded_model
from salis.model.checkpoint import load_initial_weights, save_checkpoint
from salis.params import Params


def stage_init_model(params: Params, layout: Layout) -> str:
    configure_runtime(params.runtime)
    prepared = PreparedData(layout.prepared)
    model = seeded_model(params.model, len(prepared.categories), params.seed)
    note = "random init (seed {})".format(params.seed)
    if params.model.weights:
        note = load_initial_weights(model, params.model.weights)
    save_checkpoint(layout.model(0), model, params.model, prepared.categories, {"init": note})
    return note
