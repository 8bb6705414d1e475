"""Stage `init`: the initial batch (request batch 0: random, or typical images of the cycle-0
model's embeddings; full masks, or boxes with select.initial_label) and the empty cycle-0 tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from salis.annotation.export import write_request_batch
from salis.artifacts.atomic import write_json
from salis.artifacts.layout import Layout
from salis.artifacts.tables import INSTANCES, LABELED, SELECTED, write_table
from salis.data.prepared import PreparedData
from salis.loop.cycle import check_budget, initial_selection, selected_frame
from salis.loop.labels import empty_store
from salis.params import Params
from salis.seeds import derive_rng


def stage_init(params: Params, layout: Layout) -> pd.DataFrame:
    """The initial batch; refuses impossible budgets before any training."""
    prepared = PreparedData(layout.prepared)
    pool_ids = prepared.pool_ids()
    check_budget(len(pool_ids), params.select.initial, params.select.budget, params.num_cycles)
    if params.select.initial_strategy == "typical":
        selected = _typical_initial(params, layout, prepared, pool_ids)
    else:
        selected = initial_selection(pool_ids, params.select.initial, params.seed)
    selected["label_type"] = params.select.initial_label
    write_table(layout.selected(0), selected, SELECTED)
    write_table(layout.labeled(0), LABELED.empty(), LABELED)
    write_json(layout.annotations(0), empty_store(prepared.categories))
    write_table(layout.instances(0), INSTANCES.empty(), INSTANCES)  # no model has scored anything yet
    write_request_batch(layout.requests(0), prepared, selected["image_id"].tolist(), INSTANCES.empty(), cycle=0,
                        label_types=selected["label_type"].tolist())
    return selected


def _typical_initial(params: Params, layout: Layout, prepared: PreparedData, pool_ids: list[int]) -> pd.DataFrame:
    """TypiClust on the cycle-0 model's embeddings of the pool (salis.acquisition.typical): pretrained
    features when model.weights names a file, a random network's otherwise."""
    from salis.acquisition.typical import typical_selection
    from salis.engine.device import configure_runtime, pick_device
    from salis.engine.inference import embed
    from salis.model.checkpoint import load_model

    configure_runtime(params.runtime)
    model, _ = load_model(layout.model(0))
    ids = sorted(int(i) for i in pool_ids)
    vectors = dict(embed(model, prepared, ids, params.score.batch_size, pick_device(params.runtime.device),
                         params.runtime.amp, desc="embed pool", workers=params.runtime.workers))
    chosen = typical_selection(np.stack([vectors[i] for i in ids]), ids, params.select.initial,
                               derive_rng(params.seed, 0, "initial typical"))
    return selected_frame(chosen, cycle=0, sampler="initial_typical")
