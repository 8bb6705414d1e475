"""Corrected masks: the annotator gets the model's detections for the image (the request's
pre-annotations) and accepts, fixes, deletes or adds. The stored label is the full mask, as for
drawn masks; what changes is what it costs, which now falls as the model gets better.

The simulated annotator decides per ground-truth instance from the best-matching pre-annotation
(one to one, greedily by mask IoU): accepted (IoU >= annotation.correct_accept_iou and the right
class), fixed (IoU >= annotation.correct_fix_iou, or a right mask with the wrong class), drawn
(no pre-annotation that close), plus a deletion for every pre-annotation matching nothing. Each
outcome is priced by its own `cost:` term (salis.params.CostParams).
"""

from __future__ import annotations

from collections.abc import Mapping
import numpy as np

from salis.annotation.kinds.base import AnnotatorView
from salis.annotation.kinds.mask import MaskKind
from salis.geometry import mask_ious, rle
from salis.params import AnnotationParams, CostParams

OUTCOMES = ("accepted", "fixed", "drawn", "deleted")
# What a human's returned mask says about the pre-annotation it overlaps most: unedited (accepted)
# at mask IoU >= this (a polygon round trip through the tool moves a few border pixels), edited
# from it (fixed) at >= EDITED_IOU, else drawn from scratch. Definitions of what happened, not
# the simulated annotator's decisions (annotation.correct_*_iou), so not params.
UNEDITED_IOU = 0.95
EDITED_IOU = 0.5


class CorrectKind(MaskKind):
    name = "correct"
    task = ("correct the model's masks, one per object: accept a good one, fix a poor one, delete a wrong one, "
            "draw what is missing")
    reads_pre_annotations = True
    outcome_fields = OUTCOMES

    def seconds_per_instance(self, cost: CostParams) -> float:
        """The planning estimate (hour budgets): a fix per instance; the labeled images are priced
        by their outcomes (image_seconds)."""
        return cost.fix_seconds

    def predicted_image_seconds(self, cost: CostParams, instances: float, categories: int,
                                pre_mask_ious: np.ndarray, annotation: AnnotationParams) -> float:
        """Each pre-annotation is expected accepted when its predicted mask IoU reaches
        annotation.correct_accept_iou, fixed when it reaches correct_fix_iou, else deleted; the
        predicted instances no accepted or fixed one covers are drawn. Without predicted mask IoUs
        (no IoU heads) the planning estimate: a fix per instance."""
        ious = np.asarray(pre_mask_ious, dtype=np.float64)
        if not np.isfinite(ious).all():
            return super().image_seconds(cost, instances, categories)
        accepted = int((ious >= annotation.correct_accept_iou).sum())
        fixed = int((ious >= annotation.correct_fix_iou).sum()) - accepted
        outcome = {"accepted": accepted, "fixed": fixed, "deleted": len(ious) - accepted - fixed,
                   "drawn": max(float(instances) - accepted - fixed, 0.0)}
        return self.image_seconds(cost, instances, categories, outcome)

    def image_fields(self, view: AnnotatorView) -> dict:
        return correction_outcome(view.truth, view.pre_annotations, view.height, view.width,
                                  view.accept_iou, view.fix_iou)

    def human_fields(self, instances: list[dict], image: dict, pre_annotations: list[dict]) -> dict:
        """What a human did with the pre-annotations, read from the returned masks (parsed by the
        mask parser: category_id, rle): unedited = accepted, edited = fixed, new = drawn."""
        returned = [{"category_id": a["category_id"], "segmentation": a["rle"]} for a in instances]
        return correction_outcome(returned, pre_annotations, image["height"], image["width"], UNEDITED_IOU, EDITED_IOU)

    def image_seconds(self, cost: CostParams, instances: float, categories: int, fields: Mapping | None) -> float:
        if not fields or any(k not in fields for k in OUTCOMES):
            # no outcome recorded (a human import that did not compare regions): priced as drawn
            return cost.mask_seconds_per_instance * instances + self.seconds_per_category(cost) * categories
        return (cost.accept_seconds * fields["accepted"] + cost.fix_seconds * fields["fixed"]
                + cost.mask_seconds_per_instance * fields["drawn"] + cost.delete_seconds * fields["deleted"]
                + self.seconds_per_category(cost) * categories)


def correction_outcome(truth: list[dict], predictions: list[dict], height: int, width: int,
                       accept_iou: float, fix_iou: float) -> dict[str, int]:
    """{accepted, fixed, drawn, deleted} of one image: ground-truth instances matched one to one to
    pre-annotations, greedily by mask IoU (highest first; ties by order), pairs under fix_iou left
    unmatched. `truth` and `predictions` carry `segmentation` (RLE or polygons) and `category_id`."""
    gt = [rle(a["segmentation"], height, width) for a in truth]
    dt = [rle(p["segmentation"], height, width) for p in predictions]
    ious = mask_ious(dt, gt)
    rows, cols = np.nonzero(ious >= fix_iou)
    order = sorted(zip(-ious[rows, cols], rows.tolist(), cols.tolist()))
    used_dt: set[int] = set()
    used_gt: set[int] = set()
    accepted = fixed = 0
    for negative_iou, d, g in order:
        if d in used_dt or g in used_gt:
            continue
        used_dt.add(d)
        used_gt.add(g)
        same_class = int(predictions[d]["category_id"]) == int(truth[g]["category_id"])
        if -negative_iou >= accept_iou and same_class:
            accepted += 1
        else:
            fixed += 1
    return {"accepted": accepted, "fixed": fixed, "drawn": len(gt) - len(used_gt), "deleted": len(dt) - len(used_dt)}


def outcome_metrics(store: dict, batch_ids: set[int]) -> dict[str, float | int | None]:
    """Correction outcomes of a label store: cumulative counts (correct_accepted, ...), and the
    shares of the instances of `batch_ids` (the images the cycle's labels added) that were
    accepted, fixed or drawn (None when that batch holds no corrected instance)."""
    totals = dict.fromkeys(OUTCOMES, 0)
    batch = dict.fromkeys(OUTCOMES, 0)
    for image in store["images"]:
        if not all(k in image for k in OUTCOMES):
            continue
        for k in OUTCOMES:
            totals[k] += int(image[k])
            if int(image["id"]) in batch_ids:
                batch[k] += int(image[k])
    instances = sum(batch[k] for k in ("accepted", "fixed", "drawn"))
    out: dict[str, float | int | None] = {f"correct_{k}": v for k, v in totals.items()}
    for k in ("accepted", "fixed", "drawn"):
        out[f"correct_batch_{k}_share"] = batch[k] / instances if instances else None
    return out
