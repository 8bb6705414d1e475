"""What labels cost: seconds per image from a per-instance / per-category model, hours and money.

Defaults come from the literature, as used by Bellver et al. (CVPR-W 2019, "Budget-aware
semi-supervised semantic and instance segmentation"):

- full mask: 79 s per instance plus 1 s per category checked (Bearman et al., ECCV 2016,
  "What's the point", from the COCO annotation statistics);
- box: 7 s per box (Papadopoulos et al., ICCV 2017, "Extreme clicking");
- point: 2.4 s per clicked point (Bearman et al.);
- image-level label: 1 s per category checked (Bearman et al.), plus 0.8 s per instance counted
  (Bellver et al. measured 20.0 s per PASCAL image for labels, 22.2 s for labels and counts:
  2.2 s more for about 2.7 instances).
- corrected mask (`correct`, the annotator starts from the model's masks): per instance 1.6 s when
  the pre-annotated mask is accepted (a verification, Papadopoulos et al., CVPR 2016, "We don't
  need no bounding-boxes"), 14 s when it is fixed (SAM's model-assisted masks, Kirillov et al.,
  ICCV 2023: 34 s per mask from scratch in their tool, 14 s with the model's), 79 s when drawn, and
  1.6 s per wrong pre-annotation deleted; so a better model makes masks cheaper.

Every label type pays the per-category check: the annotator looks at each category once per
image to decide whether it is present, whatever the count. Each labeled image is priced by its
own label type (a mixed batch holds several).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from salis.annotation.kinds import label_kind
from salis.errors import SalisError
from salis.params import AnnotationParams, CostParams

SECONDS_PER_HOUR = 3600.0


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Annotation time per image, and money at `cost.hourly_rate` currency units per annotator hour,
    from the cost params alone (params.yaml's `cost:`, validated where params are parsed).

    hourly_rate is in whatever currency the user budgets in (0 leaves money out: every money
    figure is then 0).
    """

    params: CostParams = CostParams()
    # cost.source measured: per label type (seconds per instance, seconds per image) fitted to the
    # annotators' times, and why a type has none (salis.analysis.measured_cost builds these)
    fitted: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    unfitted: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_params(cls, params: CostParams) -> "CostModel":
        return cls(params)

    @property
    def measured(self) -> bool:
        return self.params.source == "measured"

    def fitted_seconds(self, label_type: str, num_instances: float) -> float:
        """The fitted terms' price of an image (cost.source: measured); refused for a type without them."""
        if label_type not in self.fitted:
            why = self.unfitted.get(label_type, f"0 timed images, {self.params.measured_min_images} needed to fit")
            raise SalisError(f"cost.source measured: no fitted cost for {label_type} labels ({why}); `salis cost` "
                             f"shows the times so far; cost.source: model prices by the literature's terms until then")
        per_instance, per_image = self.fitted[label_type]
        return per_instance * num_instances + per_image

    def seconds_per_instance(self, label_type: str = "mask") -> float:
        """The per-instance time of a label type (counting, for image-level labels)."""
        return label_kind(label_type).seconds_per_instance(self.params)

    def seconds_per_category(self, label_type: str = "mask") -> float:
        return label_kind(label_type).seconds_per_category(self.params)

    def image_seconds(self, num_instances: float, num_categories: int, label_type: str = "mask",
                      fields: Mapping[str, Any] | None = None) -> float:
        """Seconds to label one image holding num_instances objects, num_categories categories checked;
        `fields`: the image's stored label fields (a corrected image is priced by its outcomes)."""
        if num_instances < 0 or num_categories < 0:
            raise ValueError(f"counts must be non-negative, got {num_instances} instances, {num_categories} categories")
        if self.measured:
            measured = (fields or {}).get("annotation_seconds")
            if isinstance(measured, (int, float)) and not isinstance(measured, bool) and math.isfinite(measured):
                return float(measured)  # the annotator's own time (validated at import)
            return self.fitted_seconds(label_type, num_instances)
        return label_kind(label_type).image_seconds(self.params, num_instances, num_categories, fields)

    def estimated_image_seconds(self, num_instances: float, num_categories: int, label_type: str = "mask") -> float:
        """The planning estimate of an image not labeled yet (hour budgets): the kind's per-instance
        and per-category terms (for corrected masks a fix per instance)."""
        if self.measured:
            return self.fitted_seconds(label_type, num_instances)
        kind = label_kind(label_type)
        return kind.seconds_per_instance(self.params) * num_instances + kind.seconds_per_category(self.params) * num_categories

    def predicted_image_seconds(self, num_instances: float, num_categories: int, label_type: str,
                                pre_mask_ious: np.ndarray, annotation: AnnotationParams) -> float:
        """The forecast of an unlabeled image from the model's detections (value per hour): the
        kind's (corrected masks read the predicted mask IoUs), or the fitted terms when measured."""
        if self.measured:
            return self.fitted_seconds(label_type, num_instances)
        return label_kind(label_type).predicted_image_seconds(self.params, num_instances, num_categories,
                                                              pre_mask_ious, annotation)

    def cost_table(
        self, instances_per_image: Mapping[int, int], num_categories: int, label_types: Mapping[int, str] | None = None
    ) -> pd.DataFrame:
        """One row per image (sorted by id): image_id, label_type, instances, seconds (masks unless
        label_types says otherwise)."""
        ids = sorted(int(i) for i in instances_per_image)
        counts = np.array([int(instances_per_image[i]) for i in ids], dtype=np.int64)
        if (counts < 0).any():
            raise ValueError("instance counts must be non-negative")
        if num_categories < 0:
            raise ValueError(f"num_categories must be non-negative, got {num_categories}")
        types = [str((label_types or {}).get(i, "mask")) for i in ids]
        seconds = [self.image_seconds(int(n), num_categories, t) for n, t in zip(counts, types)]
        return pd.DataFrame(
            {
                "image_id": np.array(ids, dtype=np.int64),
                "label_type": types,
                "instances": counts,
                "seconds": np.array(seconds, dtype=np.float64),
            }
        )

    def money(self, seconds: float) -> float:
        return seconds / SECONDS_PER_HOUR * self.params.hourly_rate

    def cumulative_hours_and_money(self, costs: pd.DataFrame, cycles: Sequence[int] | None = None) -> pd.DataFrame:
        """Per cycle: what that cycle's new labels cost, and the running totals.

        `costs` has one row per labeled image with columns cycle (the cycle whose training
        first uses the image, as in the labeled table) and seconds (from cost_table).
        `cycles` lists every cycle to report, so a cycle that added no labels still gets a
        row carrying the totals forward. Columns: cycle, images, seconds, annotation_hours,
        money, cumulative_annotation_hours, cumulative_money.
        """
        missing = {"cycle", "seconds"} - set(costs.columns)
        if missing:
            raise ValueError(f"costs needs the columns cycle and seconds; missing {sorted(missing)}")
        grouped = costs.groupby("cycle")["seconds"].agg(["count", "sum"])
        wanted = sorted({int(c) for c in (cycles or [])} | {int(c) for c in grouped.index})
        grouped = grouped.reindex(wanted, fill_value=0)
        seconds = grouped["sum"].to_numpy(dtype=np.float64)
        hours = seconds / SECONDS_PER_HOUR
        return pd.DataFrame(
            {
                "cycle": np.array(wanted, dtype=np.int64),
                "images": grouped["count"].to_numpy(dtype=np.int64),
                "seconds": seconds,
                "annotation_hours": hours,
                "money": hours * self.params.hourly_rate,
                "cumulative_annotation_hours": np.cumsum(hours),
                "cumulative_money": np.cumsum(hours) * self.params.hourly_rate,
            }
        )


def instances_per_image(annotations: Iterable[Mapping[str, Any]], image_ids: Iterable[int]) -> dict[int, int]:
    """Instances per image from COCO annotations; every listed image gets a count, 0 included.

    The simulated mode feeds the oracle's ground truth, the human mode the imported labels:
    the cost of an image is what its labels hold, whoever drew them.
    """
    counts = {int(i): 0 for i in image_ids}
    for ann in annotations:
        image_id = int(ann["image_id"])
        if image_id in counts:
            counts[image_id] += 1
    return counts
