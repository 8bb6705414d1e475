"""What a cycle buys: how many of the sampler's ranked images, and which label type each gets.

With `select.budget_hours` = 0 a cycle labels `select.budget` images, all with the policy's label
type. With hours, each label type's cost per image is estimated before labeling from the
labeled images' mean instance count (the pool's ground truth is never looked at), and images are
taken down the ranking while the hours last. `mixed` splits the hours: `mask_share` of them buys
full masks, the rest cheap labels; the order decides which images get which (see AnnotationParams).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from salis.annotation.cost import CostModel
from salis.errors import SalisError
from salis.params import AnnotationParams

# the mask-IoU walk looks this many times the affordable number of images down the ranking
WALK_DEPTH = 4


@dataclasses.dataclass(frozen=True)
class CycleBudget:
    """What one cycle may spend: `images` (hours 0) or `hours`."""

    images: int
    hours: float
    mean_instances: float  # the estimate of instances per image (labeled images' mean)
    num_categories: int
    cost: CostModel

    @classmethod
    def of_images(cls, images: int, num_categories: int, cost: CostModel) -> "CycleBudget":
        """`images` images a cycle (no hour budget)."""
        return cls(images=images, hours=0.0, mean_instances=0.0, num_categories=num_categories, cost=cost)

    def seconds(self, label_type: str) -> float:
        """The estimated cost of one image with this label type."""
        return self.cost.estimated_image_seconds(self.mean_instances, self.num_categories, label_type)

    def affordable(self, label_type: str, hours: float) -> int:
        """How many images of this label type `hours` buy (by the estimate)."""
        each = self.seconds(label_type)
        if each <= 0:
            raise SalisError(f"label type {label_type} costs nothing in `cost:`: an hour budget cannot bound it")
        return int(math.floor(hours * 3600.0 / each + 1e-9))


def planned_types(policy: AnnotationParams, budget: CycleBudget) -> dict[str, int]:
    """Images per label type the cycle can afford, before looking at the ranking."""
    if not budget.hours:
        return {policy.policy: budget.images} if policy.policy != "mixed" else {}
    if policy.policy != "mixed":
        return {policy.policy: budget.affordable(policy.policy, budget.hours)}
    mask_hours = budget.hours * policy.mask_share
    return {
        policy.mixed_masks: budget.affordable(policy.mixed_masks, mask_hours),
        policy.cheap: budget.affordable(policy.cheap, budget.hours - mask_hours),
    }


def ranking_depth(policy: AnnotationParams, budget: CycleBudget, unlabeled: int) -> int:
    """How many ranked images the sampler must deliver for this cycle's plan."""
    wanted = sum(planned_types(policy, budget).values())
    if policy.policy == "mixed" and policy.mixed_order == "mask_iou":
        wanted *= WALK_DEPTH
    return min(unlabeled, wanted)


def assign_label_types(
    ranked: Sequence[int], policy: AnnotationParams, budget: CycleBudget, mean_mask_iou: dict[int, float]
) -> list[tuple[int, str]]:
    """(image id, label type) for the images this cycle labels, in ranking order.

    mean_mask_iou: per image, the mean predicted mask IoU of its detections (mask_iou order only;
    an image without one gets a full mask).
    """
    plan = planned_types(policy, budget)
    if policy.policy != "mixed":
        (label_type, count), = plan.items()
        return [(int(i), label_type) for i in ranked[:count]]
    full = policy.mixed_masks
    if policy.mixed_order == "rank":
        masks, cheap = plan[full], plan[policy.cheap]
        return [(int(i), full) for i in ranked[:masks]] + [(int(i), policy.cheap) for i in ranked[masks : masks + cheap]]
    left = dict(plan)
    out = []
    for image_id in ranked:
        if not any(left.values()):
            break
        iou = mean_mask_iou.get(int(image_id), float("nan"))
        wants = policy.cheap if np.isfinite(iou) and iou >= policy.cheap_above else full
        if left[wants]:
            left[wants] -= 1
            out.append((int(image_id), wants))
    return out


def spend_forecast_hours(
    ranked: Sequence[int], policy: AnnotationParams, budget: CycleBudget,
    seconds: Callable[[str], Mapping[int, float]], mean_mask_iou: dict[int, float],
) -> list[tuple[int, str]]:
    """(image id, label type) down the ranking while the hours last, each image priced by its own
    forecast (`seconds(label_type)`: predicted seconds per image; value-per-hour selection) instead
    of the labeled images' mean. The walk stops at the first image that no longer fits (`mixed`,
    rank order: full masks until then, then the cheap type); mask_iou order skips what does not fit."""
    full = policy.mixed_masks if policy.policy == "mixed" else policy.policy
    if policy.policy != "mixed":
        left = {full: budget.hours * 3600.0}
    else:
        left = {full: budget.hours * policy.mask_share * 3600.0,
                policy.cheap: budget.hours * (1.0 - policy.mask_share) * 3600.0}
    out: list[tuple[int, str]] = []
    current = full
    for image_id in ranked:
        image_id = int(image_id)
        if policy.policy == "mixed" and policy.mixed_order == "mask_iou":
            iou = mean_mask_iou.get(image_id, float("nan"))
            wants = policy.cheap if np.isfinite(iou) and iou >= policy.cheap_above else full
            if seconds(wants)[image_id] <= left[wants]:
                left[wants] -= seconds(wants)[image_id]
                out.append((image_id, wants))
            continue
        if seconds(current)[image_id] > left[current]:
            if policy.policy != "mixed" or current != full:
                break
            current = policy.cheap
            if seconds(current)[image_id] > left[current]:
                break
        left[current] -= seconds(current)[image_id]
        out.append((image_id, current))
    return out


def batch_forecast(labeled: pd.DataFrame, cycle: int) -> dict[str, float | None]:
    """The batch first trained on at `cycle`: its annotation hours against the hours the selection
    priced it at (None where it priced nothing: the initial set, or no batch)."""
    batch = labeled[labeled["cycle"] == cycle]
    hours = float(batch["seconds"].sum()) / 3600.0
    forecast = batch["forecast_seconds"]
    if batch.empty or forecast.isna().any():
        return {"batch_hours": hours, "batch_forecast_hours": None, "batch_hours_over_forecast": None}
    forecast_hours = float(forecast.sum()) / 3600.0
    return {"batch_hours": hours, "batch_forecast_hours": forecast_hours,
            "batch_hours_over_forecast": hours / forecast_hours if forecast_hours > 0 else None}
