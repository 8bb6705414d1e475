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

SELECTED_COLUMNS = {"image_id": "int64", "cycle": "int64", "sampler": "object", "rank": "int64"}
LABELED_COLUMNS = {
    "image_id": "int64",
    "cycle": "int64",  # the first cycle whose training uses the image
    "source": "object",  # simulated_oracle | human
    "sampler": "object",  # what picked it (initial_random for the initial set)
    "rank": "int64",  # its place in that pick
    "seconds": "float64",  # annotation time, from the cost model
}


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


def selected_frame(ids: Sequence[int], cycle: int, sampler: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": np.asarray(ids, dtype=np.int64),
            "cycle": np.full(len(ids), cycle, dtype=np.int64),
            "sampler": [sampler] * len(ids),
            "rank": np.arange(len(ids), dtype=np.int64),
        }
    ).astype(SELECTED_COLUMNS)


def initial_selection(pool_ids: Sequence[int], initial: int, seed: int) -> pd.DataFrame:
    """The images to label before cycle 1: `initial` pool images at random (no sampler involved)."""
    ids = np.array(sorted(pool_ids), dtype=np.int64)
    chosen = ids[cycle_rng(seed, 0, "initial").permutation(len(ids))[:initial]]
    return selected_frame(chosen.tolist(), cycle=0, sampler="initial_random")


def empty_labeled() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in LABELED_COLUMNS.items()})


def add_labeled(
    labeled: pd.DataFrame,
    selected: pd.DataFrame,
    labeled_ids: set[int],
    seconds: dict[int, float],
    cycle: int,
    source: str,
) -> pd.DataFrame:
    """labeled@cycle: everything labeled before plus the selected images that came back labeled.

    Selected images without labels (a partial import) are not added: they go back to the pool.
    """
    already = set(labeled["image_id"].tolist())
    overlap = already & set(selected["image_id"].tolist())
    if overlap:
        raise SalisError(f"{len(overlap)} selected images were already labeled, e.g. {sorted(overlap)[:5]}")
    new = selected[selected["image_id"].isin(labeled_ids)].copy()
    new["cycle"] = cycle
    new["source"] = source
    new["seconds"] = [float(seconds[int(i)]) for i in new["image_id"]]
    merged = pd.concat([labeled.astype(LABELED_COLUMNS), new[list(LABELED_COLUMNS)].astype(LABELED_COLUMNS)], ignore_index=True)
    assert already <= set(merged["image_id"].tolist()), "a labeled image left the labeled set"
    return merged


def select_batch(
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
    """The `budget` unlabeled pool images the sampler wants labeled after cycle `cycle`."""
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
    return selected_frame(sampler.select(ctx, budget), cycle=cycle, sampler=sampler.name)


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
