"""The active-learning bookkeeping of one cycle: initial set, labeled set, pseudo-labels.

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

from salis.artifacts.tables import INSTANCES, LABELED, PSEUDO, PSEUDO_UNCERTAIN, SELECTED
from salis.errors import SalisError
from salis.seeds import derive_rng

def check_budget(pool_size: int, initial: int, budget: int, num_cycles: int) -> None:
    needed = initial + budget * num_cycles
    if needed > pool_size:
        raise SalisError(
            f"the pool holds {pool_size} images but select.initial ({initial}) + "
            f"{num_cycles} cycles x select.budget ({budget}) = {needed}; "
            "lower select.budget or select.initial, or use fewer cycles"
        )


def selected_frame(ids: Sequence[int], cycle: int, sampler: str, label_types: Sequence[str] | None = None,
                   forecast_seconds: Sequence[float] | None = None) -> pd.DataFrame:
    """A selected table: the images in ranking order, each with the label type asked for (masks by
    default) and the seconds it was priced at (NaN: not priced)."""
    if label_types is not None and len(label_types) != len(ids):
        raise ValueError(f"{len(ids)} images but {len(label_types)} label types")
    if forecast_seconds is not None and len(forecast_seconds) != len(ids):
        raise ValueError(f"{len(ids)} images but {len(forecast_seconds)} forecasts")
    return pd.DataFrame(
        {
            "image_id": np.asarray(ids, dtype=np.int64),
            "cycle": np.full(len(ids), cycle, dtype=np.int64),
            "sampler": [sampler] * len(ids),
            "rank": np.arange(len(ids), dtype=np.int64),
            "label_type": list(label_types) if label_types is not None else ["mask"] * len(ids),
            "forecast_seconds": (np.asarray(forecast_seconds, dtype=np.float64) if forecast_seconds is not None
                                 else np.full(len(ids), np.nan)),
        }
    )


def initial_selection(pool_ids: Sequence[int], initial: int, seed: int) -> pd.DataFrame:
    """The images to label before cycle 1: `initial` pool images at random (no sampler involved)."""
    ids = np.array(sorted(pool_ids), dtype=np.int64)
    chosen = ids[derive_rng(seed, 0, "initial").permutation(len(ids))[:initial]]
    return selected_frame(chosen.tolist(), cycle=0, sampler="initial_random")


def empty_labeled() -> pd.DataFrame:
    return LABELED.empty()


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
    columns = LABELED.schema.names
    merged = LABELED.to_arrow(pd.concat([labeled[columns], new[columns]], ignore_index=True)).to_pandas()
    assert already <= set(merged["image_id"].tolist()), "a labeled image left the labeled set"
    return merged


def empty_pseudo() -> pd.DataFrame:
    return PSEUDO.empty()


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
    for batch in INSTANCES.batches(instances_path):
        table = pa.Table.from_batches([batch])
        keep = pc.and_(pc.greater(table["score"], score_thresh), pc.invert(pc.is_in(table["image_id"], excluded)))
        for column, thresh in (("box_iou", box_iou_thresh), ("mask_iou", mask_iou_thresh)):
            passes = pc.or_(pc.is_nan(table[column]), pc.greater(table[column], thresh))
            keep = pc.and_(keep, passes)
        kept = table.filter(keep)
        if kept["rle"].null_count:
            raise SalisError(f"{instances_path}: detections above pseudo.score_thresh {score_thresh} were scored "
                             "without masks (score.mask_min_score above it); re-run infer_score with a lower floor")
        parts.append(kept)
    if not parts:
        return empty_pseudo()
    return pa.concat_tables(parts).cast(PSEUDO.schema).to_pandas()


def uncertain_boxes(instances_path: Path, image_ids: frozenset[int], min_score: float) -> pd.DataFrame:
    """The boxes of every detection of `image_ids` scoring >= min_score (pseudo.background
    confident: a pseudo-labeled image's background is trusted away from them), one row group at a
    time."""
    parts = []
    wanted = pa.array(sorted(image_ids), type=pa.int64())
    columns = PSEUDO_UNCERTAIN.schema.names
    for batch in INSTANCES.batches(instances_path, columns=columns):
        table = pa.Table.from_batches([batch])
        parts.append(table.filter(pc.and_(pc.is_in(table["image_id"], wanted),
                                          pc.greater_equal(table["score"], min_score))))
    if not parts or not image_ids:
        return PSEUDO_UNCERTAIN.empty()
    return pa.concat_tables(parts).cast(PSEUDO_UNCERTAIN.schema).to_pandas()
