"""Annotators' measured times against the cost model (`salis cost`).

Per label type: how many labeled images carry a measured time (Label Studio's lead_time, stored
as `annotation_seconds`), their measured and modelled seconds, and, from enough timed images, the
cost terms the times imply: seconds = per_instance x instances + per_image, fitted by
non-negative least squares (a negative time per instance or per image means nothing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from salis.annotation.cost import CostModel
from salis.annotation.kinds import DEFAULT_KIND
from salis.params import CostParams

MIN_TIMED_IMAGES = 10  # fewer timed images fit two terms too loosely to replace the literature's


@dataclasses.dataclass(frozen=True)
class TypeCost:
    label_type: str
    images: int  # labeled images of this type
    timed: int  # of which carry a measured time
    instances: int  # instances on the timed images
    measured_seconds: float  # on the timed images
    model_seconds: float  # the cost model's price of the same timed images
    fit: tuple[float, float] | None  # (seconds per instance, seconds per image), None below min_images
    why_no_fit: str = ""


def fit_terms(instances: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
    """(per_instance, per_image) minimising the squared error of per_instance x n + per_image, both >= 0."""
    design = np.column_stack([np.asarray(instances, dtype=np.float64), np.ones(len(instances))])
    terms, _ = nnls(design, np.asarray(seconds, dtype=np.float64))
    return float(terms[0]), float(terms[1])


def measured_costs(rows: pd.DataFrame, model_seconds: Callable[[pd.Series], float],
                   min_images: int = MIN_TIMED_IMAGES) -> list[TypeCost]:
    """One TypeCost per label type in `rows` (columns image_id, label_type, instances,
    annotation_seconds: NaN where untimed); model_seconds prices a row by the cost model."""
    out = []
    for label_type, group in rows.groupby("label_type", sort=True):
        timed = group[group["annotation_seconds"].notna()]
        fit, why = None, ""
        if len(timed) < min_images:
            why = f"{len(timed)} timed images, {min_images} needed to fit"
        elif timed["instances"].nunique() < 2:
            why = "every timed image holds the same number of instances: per instance and per image cannot be told apart"
        else:
            fit = fit_terms(timed["instances"].to_numpy(), timed["annotation_seconds"].to_numpy())
        out.append(TypeCost(
            label_type=str(label_type), images=len(group), timed=len(timed), instances=int(timed["instances"].sum()),
            measured_seconds=float(timed["annotation_seconds"].sum()),
            model_seconds=float(sum(model_seconds(r) for _, r in timed.iterrows())), fit=fit, why_no_fit=why,
        ))
    return out


def store_rows(store: dict, counts: Mapping[int, int]) -> pd.DataFrame:
    """One row per labeled image of a label store: image_id, label_type, instances (`counts`, per
    image), annotation_seconds (NaN where untimed), fields (the stored image entry)."""
    rows = pd.DataFrame([{"image_id": int(im["id"]), "label_type": im.get("label_type", DEFAULT_KIND),
                          "instances": counts[int(im["id"])],
                          "annotation_seconds": im.get("annotation_seconds", float("nan")), "fields": im}
                         for im in store["images"]],
                        columns=["image_id", "label_type", "instances", "annotation_seconds", "fields"])
    rows["annotation_seconds"] = pd.to_numeric(rows["annotation_seconds"], errors="coerce")  # null: untimed
    return rows


def fitted_cost_model(params: CostParams, rows: pd.DataFrame) -> CostModel:
    """Each label type's terms fitted to the timed images among `rows` (store_rows), beside the params."""
    costs = measured_costs(rows, lambda r: 0.0, params.measured_min_images)
    return CostModel(params,
                     fitted={c.label_type: c.fit for c in costs if c.fit is not None},
                     unfitted={c.label_type: c.why_no_fit for c in costs if c.fit is None})


def render(costs: list[TypeCost]) -> list[str]:
    lines = [f"{'type':>8} {'images':>6} {'timed':>5} {'measured s/img':>14} {'model s/img':>11} {'measured/model':>14} "
             f"{'s/instance':>10}  fitted terms (s per instance + s per image)"]
    for c in costs:
        per_image = c.measured_seconds / c.timed if c.timed else None
        model = c.model_seconds / c.timed if c.timed else None
        ratio = c.measured_seconds / c.model_seconds if c.timed and c.model_seconds else None
        per_instance = c.measured_seconds / c.instances if c.instances else None
        fit = f"{c.fit[0]:.1f} + {c.fit[1]:.1f}" if c.fit else f"none: {c.why_no_fit}"

        def num(v, fmt):
            return "-" if v is None else format(v, fmt)

        lines.append(f"{c.label_type:>8} {c.images:>6} {c.timed:>5} {num(per_image, '.1f'):>14} {num(model, '.1f'):>11} "
                     f"{num(ratio, '.2f'):>14} {num(per_instance, '.1f'):>10}  {fit}")
    return lines
