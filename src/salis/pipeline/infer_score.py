"""Stage `infer_score@k`: score every unlabeled pool image (never a test image) with cycle k's
model; embed every pool image, labeled ones included (core-set measures distances to them)."""

from __future__ import annotations

import pandas as pd

from salis.acquisition.embeddings import write_embeddings
from salis.acquisition.scoring import write_score_tables
from salis.artifacts.layout import Layout
from salis.artifacts.tables import LABELED, read_table
from salis.data.prepared import PreparedData
from salis.engine.device import configure_runtime, pick_device
from salis.engine.inference import embed, predict
from salis.model.checkpoint import load_model
from salis.params import Params
from salis.seeds import derive_seed


def stage_infer_score(params: Params, layout: Layout, cycle: int) -> pd.DataFrame:
    configure_runtime(params.runtime)
    prepared = PreparedData(layout.prepared)
    labeled = set(read_table(layout.labeled(cycle), LABELED)["image_id"].tolist())
    pool = prepared.pool_ids()
    unlabeled = [i for i in pool if i not in labeled]
    labeled_pool = [i for i in pool if i in labeled]
    assert not set(pool) & set(prepared.test_ids()), "test images must never be scored or embedded"
    model, _ = load_model(layout.model(cycle))
    device = pick_device(params.runtime.device)
    size, amp = params.score.batch_size, params.runtime.amp
    preds = predict(
        model, prepared, unlabeled, size, device, amp, "score pool",
        mc_passes=params.score.mc_passes, mc_dropout_p=params.score.mc_dropout_p, seed=derive_seed(params.seed, cycle, "mc_dropout"),
    )
    with write_embeddings(layout.embeddings(cycle), len(pool)) as embeddings:
        images = write_score_tables(embeddings.tap(preds), layout.instances(cycle), layout.images(cycle))
        for image_id, vector in embed(model, prepared, labeled_pool, size, device, amp, "embed labeled"):
            embeddings.add(image_id, vector)
    return images
