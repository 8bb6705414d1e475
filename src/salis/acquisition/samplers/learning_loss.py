"""Learning loss (Yoo & Kweon, CVPR 2019): the images whose predicted detector loss is highest.

The prediction comes from the loss-prediction module trained with the detector
(model.learning_loss: true; salis.model.learning_loss) and is written by infer_score into
images.parquet as `predicted_loss`. An image-level score: no aggregation over detections.
"""

from __future__ import annotations

import numpy as np

from salis.errors import SalisError
from salis.acquisition.samplers.base import ScoreSampler, SelectionContext, register

HOW_TO_ENABLE = "dvc exp run -S sampler=learning_loss -S model.learning_loss=true"


@register("learning_loss")
class LearningLossSampler(ScoreSampler):
    """Loss predicted by the loss-prediction module (Yoo & Kweon), highest first."""

    highest_first = True
    requires = ("model.learning_loss=true",)

    def score(self, ctx: SelectionContext) -> np.ndarray:
        values = (
            ctx.images["predicted_loss"].to_numpy(dtype=np.float64)
            if "predicted_loss" in ctx.images
            else np.full(len(ctx.images), np.nan)
        )
        if np.isnan(values).any():
            raise SalisError(
                "sampler 'learning_loss' needs each image's predicted loss, but the scoring model has no "
                f"loss-prediction module; train with model.learning_loss: true, e.g. `{HOW_TO_ENABLE}`"
            )
        return values
