"""The selection step of a cycle: the unlabeled pool images a sampler wants labeled next.

Invariants enforced here: only unlabeled pool images are ranked (never a labeled or a test
image), and the sampler sees data only (its knobs are its own: Sampler.from_params).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from salis.acquisition.samplers.base import Sampler, SelectionContext
from salis.errors import SalisError
from salis.loop.budget import CycleBudget, assign_label_types, ranking_depth, spend_forecast_hours
from salis.loop.cycle import selected_frame
from salis.loop.value_per_hour import DetectionForecast, per_hour_order, predicted_seconds
from salis.params import AnnotationParams
from salis.seeds import derive_rng


def select_batch(
    sampler: Sampler,
    labeled: pd.DataFrame,
    images: pd.DataFrame,
    pool_ids: Sequence[int],
    budget: CycleBudget,
    cycle: int,
    seed: int,
    num_classes: int,
    instances_path: Path | None = None,
    embeddings_path: Path | None = None,
    oracle: object | None = None,
    policy: AnnotationParams | None = None,
    per_hour: bool = False,
) -> pd.DataFrame:
    """The unlabeled pool images the sampler wants labeled after cycle `cycle`, each with the label
    type the policy asks for: what the CycleBudget buys (built by the caller, with its cost model).
    per_hour: the ranking re-ordered by value per predicted annotation second (needs instances_path)."""
    policy = policy or AnnotationParams()
    pool = set(int(i) for i in pool_ids)
    already = frozenset(int(i) for i in labeled["image_id"])
    if not already <= pool:
        raise SalisError(f"labeled table holds {len(already - pool)} images that are not in the pool")
    unlabeled = images[~images["image_id"].isin(already)].sort_values("image_id").reset_index(drop=True)
    if not set(unlabeled["image_id"].tolist()) <= pool:
        raise SalisError("the score table holds images outside the pool (a test image must never be scored)")
    if unlabeled.empty:  # an hour budget can buy the whole pool before the last cycle
        warnings.warn(f"cycle {cycle}: every pool image is labeled; the batch is empty", UserWarning, stacklevel=2)
        return selected_frame([], cycle=cycle, sampler=sampler.name)
    if not budget.hours and len(unlabeled) < budget.images:
        raise SalisError(f"cycle {cycle}: only {len(unlabeled)} unlabeled images are left for a budget of {budget.images}")
    ctx = SelectionContext(
        images=unlabeled,
        instances_path=instances_path,
        labeled_ids=already,
        rng=derive_rng(seed, cycle, "select"),
        num_classes=num_classes,
        oracle=oracle,
        embeddings_path=embeddings_path,
    )
    ious = dict(zip(unlabeled["image_id"].astype(int), unlabeled["mean_mask_iou"])) if "mean_mask_iou" in unlabeled else {}
    if per_hour:
        ranked = sampler.select(ctx, len(unlabeled))
        seconds = _forecast_seconds(instances_path, ranked, budget, policy, num_classes)
        ranked = per_hour_order(ranked, seconds(policy.mixed_masks if policy.policy == "mixed" else policy.policy))
        chosen = (spend_forecast_hours(ranked, policy, budget, seconds, ious) if budget.hours
                  else assign_label_types(ranked, policy, budget, ious))
        forecast = [seconds(label_type)[image_id] for image_id, label_type in chosen]
    else:
        ranked = sampler.select(ctx, ranking_depth(policy, budget, len(unlabeled)))
        chosen = assign_label_types(ranked, policy, budget, ious)
        # the planning estimate from the labeled images' mean (none without a labeled mean to go on)
        forecast = [budget.seconds(label_type) if budget.mean_instances > 0 else float("nan") for _, label_type in chosen]
    if not chosen:
        cheapest = policy.cheap if policy.policy == "mixed" else policy.policy
        raise SalisError(f"cycle {cycle}: the budget buys no image (select.budget_hours {budget.hours} h; an image "
                         f"is estimated at {budget.seconds(cheapest) / 3600:.3f} h with {cheapest} labels)")
    ids, types = zip(*chosen)
    return selected_frame(ids, cycle=cycle, sampler=sampler.name, label_types=types, forecast_seconds=forecast)


def _forecast_seconds(instances_path: Path | None, image_ids: Sequence[int], budget: CycleBudget,
                      policy: AnnotationParams, num_categories: int) -> Callable[[str], dict[int, float]]:
    """label type -> each image's predicted seconds (computed once per type asked for)."""
    if instances_path is None:
        raise SalisError("select.per_hour needs the cycle's detections (instances.parquet) to forecast annotation time")
    forecast = DetectionForecast.read(instances_path, image_ids, policy.pre_annotation_score)
    cache: dict[str, dict[int, float]] = {}

    def seconds(label_type: str) -> dict[int, float]:
        if label_type not in cache:
            cache[label_type] = predicted_seconds(forecast, label_type, budget.mean_instances, num_categories,
                                                  budget.cost, policy)
            if min(cache[label_type].values(), default=1.0) <= 0.0:
                raise SalisError(f"select.per_hour: an image is forecast at 0 s with {label_type} labels; "
                                 "value per hour needs `cost:` terms that price every image above 0 s")
        return cache[label_type]

    return seconds
