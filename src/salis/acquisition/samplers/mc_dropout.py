"""MC dropout (Gal & Ghahramani 2016; for instance segmentation as in MaskAL, Blok et al. 2022).

infer_score with score.mc_passes = T > 0 runs the box and mask predictors T more times per
image with dropout (score.mc_dropout_p) on their input features, on the deterministic
detections (salis.model.mc_dropout), and writes per detection the disagreement of the passes:
class posterior variance, 1 - mean box IoU, 1 - mean mask IoU, and their combination
mc_disagreement = 1 - (1 - var)(1 - box)(1 - mask) (salis.acquisition.scoring.mc_columns). The sampler
aggregates mc_disagreement per image (select.aggregation, default mean) and labels the
highest first.
"""

from __future__ import annotations

import numpy as np

from salis.errors import SalisError
from salis.acquisition.samplers.aggregate import AggregatingSampler
from salis.acquisition.samplers.base import SelectionContext, register

HOW_TO_ENABLE = "dvc exp run -S sampler=mc_dropout -S score.mc_passes=10"


@register("mc_dropout")
class MCDropoutSampler(AggregatingSampler):
    """MC-dropout disagreement of the detections (class, box, mask), highest first."""

    highest_first = True
    requires = ("score.mc_passes=10",)

    def score(self, ctx: SelectionContext) -> np.ndarray:
        passes = ctx.images["mc_passes"] if "mc_passes" in ctx.images else None
        if passes is None or (passes.to_numpy() <= 0).any():
            raise SalisError(
                "sampler 'mc_dropout' needs MC-dropout scores, but the pool was scored with "
                f"score.mc_passes = 0; set it to the number of passes T, e.g. `{HOW_TO_ENABLE}`"
            )
        values = self.image_scores(ctx, "mc_disagreement", default="mean", images_column="mc_disagreement",
                              missing_hint=f"; score the pool with MC passes (`{HOW_TO_ENABLE}`)")
        # an image without detections: nothing could be compared; counted as maximally uncertain,
        # as by `entropy`, since on data where every image holds objects these are the misses
        return np.where(np.isnan(values), 1.0, values)
