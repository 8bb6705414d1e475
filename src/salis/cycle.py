"""The active-learning bookkeeping of one cycle: initial set, selection, pseudo-labels.

Invariants enforced here: a labeled image never leaves the labeled set; only pool images are
ever labeled, scored or pseudo-labeled (the test split lives in another file and never
reaches these functions); the same params give the same tables, byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from salis.errors import SalisError
from salis.samplers import SelectionContext, get_sampler
from salis.tables import INSTANCE_SCHEMA

LABELED_COLUMNS = {"image_id": "int64", "cycle": "int64", "source": "object", "sampler": "object", "rank": "int64"}


def cycle_rng(seed: int, cycle: int, purpose: str) -> np.random.Generator:
    """Independent, reproducible streams per (seed, cycle, purpose)."""
    return np.random.default_rng([seed, cycle, sum(purpose.encode())])


def check_budget(pool_size: int, initial: int, budget: int, num_cycles: int) -> None:
    needed = initial + budget * num_cycles
    if needed > pool_size:
        raise SalisError(
            f"the pool holds {pool_size} images but select.initial ({initial}) + "
            f"{num_cycles} cycles x select.budget ({budget}) = {needed}; "
            "lower select.budget or select.initial, or use fewer cycles"
        )


def initial_labeled(pool_ids: Sequence[int], initial: int, seed: int) -> pd.DataFrame:
    """Cycle 1's labeled set: `initial` pool images drawn at random (no sampler involved)."""
    ids = np.array(sorted(pool_ids), dtype=np.int64)
    chosen = ids[cycle_rng(seed, 0, "initial").permutation(len(ids))[:initial]]
    return labeled_frame(chosen.tolist(), cycle=1, source="simulated_oracle", sampler="initial_random")


def labeled_frame(ids: Sequence[int], cycle: int, source: str, sampler: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": np.asarray(ids, dtype=np.int64),
            "cycle": np.full(len(ids), cycle, dtype=np.int64),
            "source": [source] * len(ids),
            "sampler": [sampler] * len(ids),
            "rank": np.arange(len(ids), dtype=np.int64),
        }
    ).astype(LABELED_COLUMNS)


def select_next(
    labeled: pd.DataFrame,
    images: pd.DataFrame,
    instances_path: Path | None,
    pool_ids: Sequence[int],
    sampler_name: str,
    budget: int,
    cycle: int,
    seed: int,
    num_classes: int,
    beta: float = 0.5,
    tsp_components: tuple[str, ...] = ("class", "box", "mask"),
    oracle: object | None = None,
    aggregation: str = "default",
    embeddings_path: Path | None = None,
) -> pd.DataFrame:
    """Cycle k+1's labeled table: everything labeled so far plus `budget` images the sampler picks."""
    sampler = get_sampler(sampler_name)
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
        rng=cycle_rng(seed, cycle, "select"),
        num_classes=num_classes,
        beta=beta,
        tsp_components=tsp_components,
        oracle=oracle,
        aggregation=aggregation,
        embeddings_path=embeddings_path,
    )
    chosen = sampler.select(ctx, budget)
    new = labeled_frame(chosen, cycle=cycle + 1, source="simulated_oracle", sampler=sampler.name)
    merged = pd.concat([labeled.astype(LABELED_COLUMNS), new], ignore_index=True)
    assert already <= set(merged["image_id"].tolist()), "a labeled image left the labeled set"
    return merged


def empty_pseudo() -> pd.DataFrame:
    return INSTANCE_SCHEMA.empty_table().to_pandas()


def pseudo_labels(
    instances_path: Path,
    labeled_ids: frozenset[int],
    score_thresh: float,
    box_iou_thresh: float = 0.0,
    mask_iou_thresh: float = 0.0,
) -> pd.DataFrame:
    """Detections of still-unlabeled images with c > score_thresh, b > box_iou_thresh and
    m > mask_iou_thresh (TSP's triplet). A model without IoU heads has NaN b and m: then
    only the class score decides, and the select stage says so.

    Read one row group at a time, so the full instance table never sits in memory.
    """
    parts = []
    excluded = pa.array(sorted(labeled_ids), type=pa.int64())
    for batch in pq.ParquetFile(instances_path).iter_batches():
        table = pa.Table.from_batches([batch])
        keep = pc.and_(pc.greater(table["score"], score_thresh), pc.invert(pc.is_in(table["image_id"], excluded)))
        for column, thresh in (("box_iou", box_iou_thresh), ("mask_iou", mask_iou_thresh)):
            passes = pc.or_(pc.is_nan(table[column]), pc.greater(table[column], thresh))
            keep = pc.and_(keep, passes)
        parts.append(table.filter(keep))
    if not parts:
        return empty_pseudo()
    return pa.concat_tables(parts).cast(INSTANCE_SCHEMA).to_pandas()
