"""Samplers of the seed papers: Triplet Scoring Predictions and mask-guided selection.

- `tsp` (Wang et al., BMVC 2020): per detection s = exp(-std(c, b, m)) * mean(c, b, m) from
  the class score c and the predicted box and mask IoUs b, m; per image
  S = exp(-std(s)) * mean(s); the lowest S (least confident) is labeled first. Which of
  c, b, m enter s is `select.tsp_components`, for the paper's ablation.
- `beta_iou` (Bellver et al.): the images whose mean predicted mask IoU is closest to
  `select.beta`.
- `oracle_iou`: the same with the true mask IoU against the pool's ground truth; an
  analysis tool, refused when labels come from humans.

Standard deviations are population ones (ddof = 0): for a single component s = c.
An image with no detection scores S = 0 (nothing confident was found, so it is labeled
first by `tsp`) and mean mask IoU 0 (no mask overlaps anything).

`select.aggregation` replaces the image-level step of each: tsp's S (default tsp, i.e.
exp(-std) * mean) and the mean (predicted or true) mask IoU of beta_iou and oracle_iou.
"""

from __future__ import annotations

import numpy as np

from salis.acquisition.measures import instance_scores
from salis.acquisition.samplers.aggregate import AggregatingSampler, InstanceAggregator, aggregate_instances, resolve
from salis.acquisition.samplers.base import SelectionContext, register
from salis.artifacts.tables import INSTANCES
from salis.errors import SalisError
from salis.geometry import mask_ious, rle, rles_from_counts
from salis.params import SelectParams

COMPONENT_COLUMNS = {"class": "score", "box": "box_iou", "mask": "mask_iou"}


def tsp_image_scores(
    ctx: SelectionContext, components: tuple[str, ...], aggregation: str = "default", min_score: float = 0.0
) -> np.ndarray:
    """S for every row of ctx.images, streamed over the instance table one row group at a time."""
    if not components or any(c not in COMPONENT_COLUMNS for c in components):
        raise SalisError(f"select.tsp_components must name some of {', '.join(COMPONENT_COLUMNS)}, got {components}")
    columns = [COMPONENT_COLUMNS[c] for c in components]
    scores = aggregate_instances(
        ctx.instances_path,
        ctx.images["image_id"].to_numpy(),
        resolve(aggregation, "tsp"),
        columns,
        combine=lambda arrays: instance_scores(np.column_stack(arrays)),
        missing_hint="; the scoring model lacks IoU heads (model.iou_heads: true)",
        min_score=min_score,
    )
    return np.where(np.isnan(scores), 0.0, scores)  # no detection: S = 0


@register("tsp")
class TSPSampler(AggregatingSampler):
    """Triplet Scoring Predictions: lowest image score S = exp(-std(s)) * mean(s) first."""

    highest_first = False

    def __init__(self, aggregation: str = "default", min_score: float = 0.0,
                 components: tuple[str, ...] = ("class", "box", "mask")) -> None:
        super().__init__(aggregation, min_score)
        self.components = tuple(components)

    @classmethod
    def from_params(cls, params: SelectParams) -> "TSPSampler":
        return cls(aggregation=params.aggregation, min_score=params.min_score, components=params.tsp_components)

    def score(self, ctx: SelectionContext) -> np.ndarray:
        return tsp_image_scores(ctx, self.components, self.aggregation, self.min_score)


def _closest_to_beta(mean_iou: np.ndarray, beta: float) -> np.ndarray:
    return np.abs(np.nan_to_num(np.asarray(mean_iou, dtype=np.float64), nan=0.0) - beta)


class _BetaSampler(AggregatingSampler):
    """Mask-guided selection: mean mask IoU closest to select.beta first."""

    highest_first = False

    def __init__(self, aggregation: str = "default", min_score: float = 0.0, beta: float = 0.5) -> None:
        super().__init__(aggregation, min_score)
        self.beta = beta

    @classmethod
    def from_params(cls, params: SelectParams) -> "_BetaSampler":
        return cls(aggregation=params.aggregation, min_score=params.min_score, beta=params.beta)


@register("beta_iou")
class BetaIoUSampler(_BetaSampler):
    """Mask-guided selection: mean predicted mask IoU closest to select.beta first."""

    def score(self, ctx: SelectionContext) -> np.ndarray:
        if "mean_mask_iou" not in ctx.images:
            raise SalisError("sampler 'beta_iou' needs mean_mask_iou from a model with IoU heads")
        values = self.image_scores(ctx, "mask_iou", default="mean", images_column="mean_mask_iou",
                              missing_hint="; the scoring model lacks IoU heads (model.iou_heads: true)")
        return _closest_to_beta(values, self.beta)


def true_mask_ious(rles: list[dict], gt_rles: list[dict]) -> np.ndarray:
    """Each detection's best mask IoU with any ground-truth mask of its image (0 without any)."""
    if not gt_rles:
        return np.zeros(len(rles))
    return mask_ious(rles, gt_rles).max(axis=1)


@register("oracle_iou")
class OracleIoUSampler(_BetaSampler):
    """Mask-guided selection by the true mask IoU (the pool's ground truth: analysis only)."""

    def score(self, ctx: SelectionContext) -> np.ndarray:
        if ctx.oracle is None:
            raise SalisError(
                "sampler 'oracle_iou' reads the pool's ground truth, which does not exist when "
                "labels come from human annotators (oracle: human); use beta_iou"
            )
        wanted = set(ctx.images["image_id"].tolist())
        aggregator = InstanceAggregator()
        columns = ["image_id", "score", "rle", "height", "width"]
        for batch in INSTANCES.batches(ctx.instances_path, columns):
            rows = batch.to_pandas()
            rows = rows[rows["image_id"].isin(wanted) & (rows["score"] >= self.min_score)]
            if rows["rle"].isna().any():
                raise SalisError(f"{ctx.instances_path}: sampler oracle_iou needs the masks of detections scoring "
                                 f">= select.min_score {self.min_score}; score.mask_min_score left them out")
            for image_id, group in rows.groupby("image_id", sort=False):
                rles = rles_from_counts(group["rle"], int(group["height"].iloc[0]), int(group["width"].iloc[0]))
                gt = [rle(a["segmentation"]) for a in ctx.oracle.annotations(int(image_id))]
                aggregator.add(np.full(len(rles), image_id), true_mask_ious(rles, gt))
        values = aggregator.result(ctx.images["image_id"].to_numpy(), resolve(self.aggregation, "mean"))
        return _closest_to_beta(values, self.beta)
