"""The pseudo-label gate: which detections of still-unlabeled images become pseudo-labels.

A detection passes when its class score c, predicted box IoU b and predicted mask IoU m are all
above the gate's thresholds (TSP's triplet). Two ways to set them (`pseudo.gate`):

- fixed: pseudo.score_thresh, box_iou_thresh, mask_iou_thresh (TSP's 0.9, 0.9, 0.8). Those came
  from a fully trained ResNet-50; on a model early in training they mean something else (on
  DSB2018 no detection ever passed them).
- calibrated: chosen each cycle from data the model has not trained on: its detections on the
  batch it selected, against the masks that batch was labeled with. A detection is correct when
  its best mask IoU with a ground-truth instance of its class is >= 0.5 (what pseudo_precision
  measures against the hidden truth). Of the threshold triplets on a 0.05 grid, the gate is the
  one that lets the most calibration detections through while the one-sided 95% Wilson lower
  bound of their precision stays >= pseudo.target_precision; none reaching it closes the gate.
  `pseudo.calibration_unit: image` widens each region's bound by its design effect: a model is
  right or wrong on one image's detections together (one kind of slide, one stain), so 20
  images' 500 detections tell less than 500 independent ones would. The design effect is the
  region's cluster-robust (by image) variance of its precision over the binomial variance;
  dividing the counts by it (an effective sample size) is a Wilson bound with z scaled by its root.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from salis.geometry import mask_ious, rle, rles_from_counts

CORRECT_MASK_IOU = 0.5
Z_ONE_SIDED_95 = 1.6448536269514722
IOU_GRID = np.round(np.arange(0.0, 1.0, 0.05), 2)  # b and m thresholds: 0, 0.05, ..., 0.95


@dataclasses.dataclass(frozen=True)
class Gate:
    """Pass when c > score, b > box_iou and m > mask_iou (a NaN b or m, no IoU heads, passes)."""

    score: float
    box_iou: float
    mask_iou: float

    def passes(self, c: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
        return (c > self.score) & (np.isnan(b) | (b > self.box_iou)) & (np.isnan(m) | (m > self.mask_iou))


@dataclasses.dataclass(frozen=True)
class GateReport:
    """Which gate a cycle used and why: written beside the pseudo-labels, merged into the metrics."""

    mode: str  # fixed | calibrated
    gate: Gate | None  # None: closed, no pseudo-labels
    reason: str
    calibration_images: int = 0
    calibration_detections: int = 0  # with a mask, i.e. class score >= score.mask_min_score
    calibration_passing: int = 0
    calibration_precision: float | None = None  # of the passing calibration detections
    calibration_precision_lower: float | None = None  # its one-sided 95% Wilson lower bound
    calibration_design_effect: float = 1.0  # the bound's widening (1: detections counted as independent)

    def as_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["gate"] = dataclasses.asdict(self.gate) if self.gate else None
        return out

    @classmethod
    def from_json(cls, data: dict) -> GateReport:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["gate"] = Gate(**data["gate"]) if data.get("gate") else None
        return cls(**values)

    def metrics(self) -> dict[str, float | int | None]:
        """The numeric part, under pseudo_gate_* keys (the reason stays in the JSON)."""
        gate = self.gate
        return {
            "pseudo_gate_open": int(gate is not None),
            "pseudo_gate_score": gate.score if gate else None,
            "pseudo_gate_box_iou": gate.box_iou if gate else None,
            "pseudo_gate_mask_iou": gate.mask_iou if gate else None,
            "pseudo_gate_calibration_images": self.calibration_images,
            "pseudo_gate_calibration_detections": self.calibration_detections,
            "pseudo_gate_calibration_passing": self.calibration_passing,
            "pseudo_gate_calibration_precision": self.calibration_precision,
            "pseudo_gate_calibration_precision_lower": self.calibration_precision_lower,
            "pseudo_gate_calibration_design_effect": self.calibration_design_effect,
        }


def wilson_lower(correct: np.ndarray, total: np.ndarray, z: float = Z_ONE_SIDED_95) -> np.ndarray:
    """Lower bound of the Wilson score interval for correct / total (0 where total is 0)."""
    total = np.asarray(total, dtype=np.float64)
    n = np.maximum(total, 1.0)
    p = np.asarray(correct, dtype=np.float64) / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.where(total > 0, (centre - spread) / (1 + z * z / n), 0.0)


def design_effects(per_image: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per row (a set of detections, counted per image in the columns: how many, how many right),
    how many detections count as one independent one for the set's precision: the cluster-robust
    variance of the ratio estimator over the images (m/(m-1) sum_i (r_i - p n_i)^2 / n^2) over the
    binomial p(1-p)/n, at least 1. At p 0 or 1 there is no variance to compare: 1. With one image
    it is n (its detections are one draw)."""
    per_image, right = np.atleast_2d(per_image).astype(np.float64), np.atleast_2d(right).astype(np.float64)
    n = per_image.sum(axis=1)
    p = np.divide(right.sum(axis=1), n, out=np.zeros_like(n), where=n > 0)
    images = per_image.shape[1]
    if images < 2:
        return np.maximum(n, 1.0)
    spread = ((right - p[:, None] * per_image) ** 2).sum(axis=1)
    clustered = images / (images - 1) * spread / np.maximum(n * n, 1.0)
    binomial = p * (1 - p) / np.maximum(n, 1.0)
    ratio = np.divide(clustered, binomial, out=np.ones_like(n), where=binomial > 0)
    return np.maximum(ratio, 1.0)


def design_effect(image_ids: np.ndarray, correct: np.ndarray) -> float:
    """design_effects of one set of detections, given each one's image and whether it is right."""
    correct = np.asarray(correct, dtype=bool)
    if len(correct) == 0:
        return 1.0
    _, at = np.unique(np.asarray(image_ids), return_inverse=True)
    images = int(at.max()) + 1
    per_image = np.bincount(at, minlength=images)
    right = np.bincount(at[correct], minlength=images)
    return float(design_effects(per_image, right)[0])


def correct_detections(detections: pd.DataFrame, truth_of) -> np.ndarray:
    """Per detection (rows of an instance table with masks): best mask IoU with a ground-truth
    instance of its category (truth_of(image_id): COCO annotations) >= CORRECT_MASK_IOU."""
    correct = np.zeros(len(detections), dtype=bool)
    positions = np.arange(len(detections))
    for image_id, rows in detections.assign(_at=positions).groupby("image_id", sort=True):
        gt = truth_of(int(image_id))
        if not gt:
            continue
        height, width = int(rows["height"].iloc[0]), int(rows["width"].iloc[0])
        ious = mask_ious(rles_from_counts(rows["rle"], height, width), [rle(a["segmentation"]) for a in gt])
        same = rows["category_id"].to_numpy()[:, None] == np.array([a["category_id"] for a in gt])[None, :]
        correct[rows["_at"].to_numpy()] = (np.where(same, ious, 0.0) >= CORRECT_MASK_IOU).any(axis=1)
    return correct


def calibrate(c: np.ndarray, b: np.ndarray, m: np.ndarray, correct: np.ndarray, target_precision: float,
              score_floor: float, image_ids: np.ndarray | None = None) -> tuple[Gate | None, int, float | None, float | None]:
    """(gate, passing, precision, lower bound): the triplet letting most detections through with the
    Wilson lower bound of their precision >= target_precision; (None, 0, None, None) if none does.
    Score thresholds start at score_floor (below it detections have no mask to pseudo-label);
    ties go to the higher lower bound, then the higher thresholds. image_ids (each detection's
    image): every region's counts divided by its design effect over the images."""
    gate, passing, precision, lower, _, _ = search(c, b, m, correct, target_precision, score_floor, image_ids)
    return gate, passing, precision, lower


def score_thresholds(score_floor: float) -> np.ndarray:
    """The class-score thresholds the calibrated gate tries: the floor, the 0.05 grid above it, 0.99."""
    return np.unique(np.round(np.concatenate([[score_floor], IOU_GRID[IOU_GRID > score_floor], [0.99]]), 4))


def search(c: np.ndarray, b: np.ndarray, m: np.ndarray, correct: np.ndarray, target_precision: float,
           score_floor: float, image_ids: np.ndarray | None = None,
           ) -> tuple[Gate | None, int, float | None, float | None, tuple | None, float]:
    """calibrate's answer, the region with the highest lower bound whatever the target
    ((gate, passing, precision, lower bound), None without detections): how far a closed gate is,
    and the design effect of the answer's region (of the nearest one when closed; 1 without
    image_ids)."""
    c, b, m = (np.asarray(x, dtype=np.float64) for x in (c, b, m))
    correct = np.asarray(correct, dtype=bool)
    score_grid = score_thresholds(score_floor)
    no_heads = bool(np.isnan(b).all() and np.isnan(m).all())
    iou_grid = [0.0] if no_heads else IOU_GRID
    order = np.argsort(-c, kind="stable")
    c_sorted, correct_sorted = c[order], correct[order]
    # detections with c > t are a prefix of the descending order: its length per score threshold
    prefix = np.searchsorted(-c_sorted, -score_grid, side="left")
    at = None  # each sorted detection's image, as 0..images-1
    if image_ids is not None and len(c):
        _, at = np.unique(np.asarray(image_ids)[order], return_inverse=True)
        images = int(at.max()) + 1
    best: tuple | None = None
    closest: tuple | None = None
    for tb in iou_grid:
        for tm in iou_grid:
            keep = Gate(0.0, tb, tm).passes(np.ones_like(c), b, m)[order]
            passing = np.concatenate([[0], np.cumsum(keep)])[prefix]
            right = np.concatenate([[0], np.cumsum(keep & correct_sorted)])[prefix]
            design = np.ones(len(prefix))
            if at is not None:  # each region's counts per image (memory: thresholds x images)
                per_image = np.stack([np.bincount(at[:k][keep[:k]], minlength=images) for k in prefix])
                right_per_image = np.stack([np.bincount(at[:k][(keep & correct_sorted)[:k]], minlength=images)
                                            for k in prefix])
                design = design_effects(per_image, right_per_image)
            # counts / design in Wilson's bound = z * sqrt(design)
            lower = wilson_lower(right, passing, Z_ONE_SIDED_95 * np.sqrt(design))
            for i in np.where(passing > 0)[0]:
                gate = Gate(float(score_grid[i]), float(tb), float(tm))
                key = (float(lower[i]), int(passing[i]))
                if closest is None or key > closest[0]:
                    closest = (key, gate, int(right[i]), float(design[i]))
                if lower[i] >= target_precision:
                    key = (int(passing[i]), float(lower[i]), float(score_grid[i]) + tb + tm)
                    if best is None or key > best[0]:
                        best = (key, gate, int(right[i]), float(design[i]))
    nearest = None
    if closest is not None:
        (lower_bound, passing), gate, right, design = closest
        nearest = (gate, passing, right / passing, lower_bound)
    if best is None:
        return None, 0, None, None, nearest, closest[3] if closest else 1.0
    (passing, lower_bound, _), gate, right, design = best
    return gate, passing, right / passing, lower_bound, nearest, design


def calibrated_gate(detections: pd.DataFrame, truth_of, target_precision: float, score_floor: float,
                    calibration_images: int, unit: str = "detection") -> GateReport:
    """The calibrated gate from the calibration images' detections (those with masks); unit image:
    the bound widened by their design effect over images."""
    with_masks = detections[detections["rle"].notna()].reset_index(drop=True)
    base = {"mode": "calibrated", "calibration_images": calibration_images,
            "calibration_detections": len(with_masks)}
    if calibration_images == 0 or with_masks.empty:
        why = "no mask-labeled image the model has not trained on" if calibration_images == 0 else \
            "the model made no detection (with a mask) on the images it selected"
        return GateReport(gate=None, reason=f"closed: {why}, nothing to calibrate on", **base)
    correct = correct_detections(with_masks, truth_of)
    image_ids = with_masks["image_id"].to_numpy() if unit == "image" else None
    gate, passing, precision, lower, nearest, design = search(
        with_masks["score"].to_numpy(), with_masks["box_iou"].to_numpy(), with_masks["mask_iou"].to_numpy(),
        correct, target_precision, score_floor, image_ids)
    base["calibration_design_effect"] = design
    widened = f", bound widened by the region's design effect {design:.2f} over images" if unit == "image" else ""
    if gate is None:
        best = ""
        if nearest is not None:
            g, n, p, low = nearest
            best = (f"; the most precise region, c > {g.score:g}, b > {g.box_iou:g}, m > {g.mask_iou:g}, "
                    f"let {n} through at precision {p:.3f} (lower bound {low:.3f})")
        return GateReport(gate=None, reason=(
            f"closed: no (c, b, m) region reached precision {target_precision:g} (95% lower bound) on "
            f"{len(with_masks)} calibration detections ({correct.mean():.0%} of them correct){widened}{best}"), **base)
    reason = (f"open: c > {gate.score:g}, b > {gate.box_iou:g}, m > {gate.mask_iou:g} let {passing} of "
              f"{len(with_masks)} calibration detections through, precision {precision:.3f} "
              f"(95% lower bound {lower:.3f} >= {target_precision:g}{widened})")
    return GateReport(gate=gate, reason=reason, calibration_passing=passing, calibration_precision=precision,
                      calibration_precision_lower=lower, **base)


def fixed_gate(score: float, box_iou: float, mask_iou: float) -> GateReport:
    gate = Gate(score, box_iou, mask_iou)
    return GateReport(mode="fixed", gate=gate,
                      reason=f"fixed: c > {score:g}, b > {box_iou:g}, m > {mask_iou:g} (pseudo.*_thresh)")

