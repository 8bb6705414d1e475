"""Baselines: random and class entropy."""

from __future__ import annotations

import numpy as np

from salis.acquisition.samplers.aggregate import AggregatingSampler
from salis.acquisition.samplers.base import Sampler, SelectionContext, register


@register("random")
class RandomSampler(Sampler):
    """A seeded random order: the baseline every other sampler must beat."""

    def rank(self, ctx: SelectionContext) -> list[int]:
        ids = ctx.images["image_id"].to_numpy()
        return ids[ctx.rng.permutation(len(ids))].tolist()


@register("entropy")
class ClassEntropySampler(AggregatingSampler):
    """Mean entropy of the detections' class posteriors, highest first.

    The detections' entropies are aggregated by select.aggregation (default: mean). An image
    with no detection at all gets the largest possible entropy, log(C + 1): the model found
    nothing there it is sure of, and on data where every image holds objects, such images
    are exactly the ones it misses.
    """

    highest_first = True

    def score(self, ctx: SelectionContext) -> np.ndarray:
        values = self.image_scores(ctx, "entropy", default="mean", images_column="mean_entropy")
        return np.where(np.isnan(values), np.log(ctx.num_classes + 1), values)
