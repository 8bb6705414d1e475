"""Detections -> one score per image (`select.aggregation`), for every instance-level sampler.

  mean, min, max   of the image's detection values
  tsp              exp(-std) * mean (TSP's image score S; population std)
  default          each sampler's own choice: tsp for `tsp`, mean for the others

instances.parquet is read one row group at a time and only a count, sum, sum of squares,
minimum and maximum are kept per image, so memory is O(images), not O(detections).
An image without detections gets NaN here; each sampler says what that means for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from salis.acquisition.measures import confidence_spread
from salis.artifacts.tables import INSTANCES
from salis.errors import SalisError
from salis.acquisition.samplers.base import ScoreSampler, SelectionContext
from salis.params import SelectParams

AGGREGATIONS = ("mean", "min", "max", "tsp")
_STATS = {"n": "sum", "sum": "sum", "squares": "sum", "min": "min", "max": "max"}
_MERGE_EVERY = 32  # partial tables kept before they are merged (bounds memory between merges)


def resolve(aggregation: str, default: str) -> str:
    how = default if aggregation == "default" else aggregation
    if how not in AGGREGATIONS:
        raise SalisError(f"select.aggregation must be default or one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    return how


class InstanceAggregator:
    """Per-image count, sum, sum of squares, min and max, fed one batch of detections at a time."""

    def __init__(self) -> None:
        self._parts: list[pd.DataFrame] = []

    def add(self, image_ids: np.ndarray, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        frame = pd.DataFrame(
            {"image_id": np.asarray(image_ids, dtype=np.int64), "n": 1, "sum": values,
             "squares": values * values, "min": values, "max": values}
        )
        self._parts.append(frame.groupby("image_id").agg(_STATS))
        if len(self._parts) >= _MERGE_EVERY:
            self._parts = [self._merged()]

    def _merged(self) -> pd.DataFrame:
        if not self._parts:
            return pd.DataFrame({name: pd.Series(dtype="float64") for name in _STATS})
        if len(self._parts) == 1:
            return self._parts[0]
        return pd.concat(self._parts).groupby(level=0).agg(_STATS)

    def result(self, image_ids: Sequence[int] | np.ndarray, how: str) -> np.ndarray:
        stats = self._merged().reindex(np.asarray(image_ids, dtype=np.int64))
        n = stats["n"].to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = stats["sum"].to_numpy(dtype=np.float64) / n
            if how == "mean":
                return mean
            if how in ("min", "max"):
                return stats[how].to_numpy(dtype=np.float64)
            if how == "tsp":
                variance = np.maximum(stats["squares"].to_numpy(dtype=np.float64) / n - mean * mean, 0.0)
                return confidence_spread(mean, np.sqrt(variance))
        raise ValueError(f"unknown aggregation {how!r}")


def aggregate_instances(
    path: Path,
    image_ids: Sequence[int] | np.ndarray,
    how: str,
    columns: Sequence[str],
    combine: Callable[[list[np.ndarray]], np.ndarray] | None = None,
    missing_hint: str = "",
    min_score: float = 0.0,
) -> np.ndarray:
    """Aggregate a column of instances.parquet (or `combine` of several) per image, streamed;
    only detections whose class score is at least `min_score` count (select.min_score)."""
    try:
        names = set(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as err:
        raise INSTANCES.unreadable(path, err) from None
    absent = [c for c in columns if c not in names]
    if absent:
        raise SalisError(f"{path} lacks the columns {absent}{missing_hint}")
    aggregator = InstanceAggregator()
    read = ["image_id", *dict.fromkeys([*columns, "score"])]
    for batch in INSTANCES.batches(path, read):
        keep = batch.column("score").to_numpy(zero_copy_only=False) >= min_score
        arrays = [batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64)[keep] for c in columns]
        values = combine(arrays) if combine is not None else arrays[0]
        if np.isnan(values).any():
            raise SalisError(f"{path}: NaN in {list(columns)}{missing_hint}")
        aggregator.add(batch.column("image_id").to_numpy()[keep], values)
    return aggregator.result(image_ids, how)


def image_scores(
    ctx: SelectionContext, aggregation: str, column: str, default: str, images_column: str | None = None,
    missing_hint: str = "", min_score: float = 0.0,
) -> np.ndarray:
    """One aggregated score per row of ctx.images (NaN for images without detections);
    `aggregation` is select.aggregation, `default` the sampler's own choice.

    The mean is read from images.parquet when infer_score wrote it there (`images_column`),
    so samplers whose default is the mean need no pass over the instance table.
    """
    how = resolve(aggregation, default)
    if how == "mean" and images_column is not None and images_column in ctx.images and min_score <= 0:
        return ctx.images[images_column].to_numpy(dtype=np.float64)
    if ctx.instances_path is None:
        raise SalisError(f"select.aggregation {how!r} needs the instance table of the cycle")
    return aggregate_instances(ctx.instances_path, ctx.images["image_id"].to_numpy(), how, [column],
                               missing_hint=missing_hint, min_score=min_score)


class AggregatingSampler(ScoreSampler):
    """A score sampler whose image score aggregates detection values by select.aggregation,
    over the detections whose class score is at least select.min_score."""

    def __init__(self, aggregation: str = "default", min_score: float = 0.0) -> None:
        self.aggregation = aggregation
        self.min_score = min_score

    @classmethod
    def from_params(cls, params: SelectParams) -> "AggregatingSampler":
        return cls(aggregation=params.aggregation, min_score=params.min_score)

    def image_scores(self, ctx: SelectionContext, column: str, default: str, images_column: str | None = None,
                     missing_hint: str = "") -> np.ndarray:
        return image_scores(ctx, self.aggregation, column, default, images_column, missing_hint, self.min_score)
