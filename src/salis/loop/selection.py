"""The selection step of a cycle: the unlabeled pool images a sampler wants labeled next.

Invariants enforced here: only unlabeled pool images are ranked (never a labeled or a test
image), and the sampler sees data only (its knobs are its own: Sampler.from_params).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from salis.acquisition.samplers.base import Sampler, SelectionContext
from salis.errors import SalisError
from salis.loop.cycle import selected_frame
from salis.seeds import derive_rng


def select_batch(
    sampler: Sampler,
    labeled: pd.DataFrame,
    images: pd.DataFrame,
    pool_ids: Sequence[int],
    budget: int,
    cycle: int,
    seed: int,
    num_classes: int,
    instances_path: Path | None = None,
    embeddings_path: Path | None = None,
    oracle: object | None = None,
) -> pd.DataFrame:
    """The `budget` unlabeled pool images the sampler wants labeled after cycle `cycle`."""
    pool = set(int(i) for i in pool_ids)
    already = frozenset(int(i) for i in labeled["image_id"])
    if not already <= pool:
        raise SalisError(f"labeled table holds {len(already - pool)} images that are not in the pool")
    unlabeled = images[~images["image_id"].isin(already)].sort_values("image_id").reset_index(drop=True)
    if not set(unlabeled["image_id"].tolist()) <= pool:
        raise SalisError("the score table holds images outside the pool (a test image must never be scored)")
    if len(unlabeled) < budget:
        raise SalisError(f"cycle {cycle}: only {len(unlabeled)} unlabeled images are left for a budget of {budget}")
    ctx = SelectionContext(
        images=unlabeled,
        instances_path=instances_path,
        labeled_ids=already,
        rng=derive_rng(seed, cycle, "select"),
        num_classes=num_classes,
        oracle=oracle,
        embeddings_path=embeddings_path,
    )
    return selected_frame(sampler.select(ctx, budget), cycle=cycle, sampler=sampler.name)
