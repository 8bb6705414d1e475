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
        }


def wilson_lower(correct: np.ndarray, total: np.ndarray, z: float = Z_ONE_SIDED_95) -> np.ndarray:
    """Lower bound of the Wilson score interval for correct / total (0 where total is 0)."""
    total = np.asarray(total, dtype=np.float64)
    n = np.maximum(total, 1.0)
    p = np.asarray(correct, dtype=np.float64) / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.where(total > 0, (centre - spread) / (1 + z * z / n), 0.0)


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
              score_floor: float) -> tuple[Gate | None, int, float | None, float | None]:
    """(gate, passing, precision, lower bound): the triplet letting most detections through with the
    Wilson lower bound of their precision >= target_precision; (None, 0, None, None) if none does.
    Score thresholds start at score_floor (below it detections have no mask to pseudo-label);
    ties go to the higher lower bound, then the higher thresholds."""
    gate, passing, precision, lower, _ = search(c, b, m, correct, target_precision, score_floor)
    return gate, passing, precision, lower


def search(c: np.ndarray, b: np.ndarray, m: np.ndarray, correct: np.ndarray, target_precision: float,
           score_floor: float) -> tuple[Gate | None, int, float | None, float | None, tuple | None]:
    """calibrate's answer, and the region with the highest lower bound whatever the target
    ((gate, passing, precision, lower bound), None without detections): how far a closed gate is."""
    c, b, m = (np.asarray(x, dtype=np.float64) for x in (c, b, m))
    correct = np.asarray(correct, dtype=bool)
    score_grid = np.unique(np.round(np.concatenate([[score_floor], IOU_GRID[IOU_GRID > score_floor], [0.99]]), 4))
    no_heads = bool(np.isnan(b).all() and np.isnan(m).all())
    iou_grid = [0.0] if no_heads else IOU_GRID
    order = np.argsort(-c, kind="stable")
    c_sorted, correct_sorted = c[order], correct[order]
    # detections with c > t are a prefix of the descending order: its length per score threshold
    prefix = np.searchsorted(-c_sorted, -score_grid, side="left")
    best: tuple | None = None
    closest: tuple | None = None
    for tb in iou_grid:
        for tm in iou_grid:
            keep = Gate(0.0, tb, tm).passes(np.ones_like(c), b, m)[order]
            passing = np.concatenate([[0], np.cumsum(keep)])[prefix]
            right = np.concatenate([[0], np.cumsum(keep & correct_sorted)])[prefix]
            lower = wilson_lower(right, passing)
            for i in np.where(passing > 0)[0]:
                gate = Gate(float(score_grid[i]), float(tb), float(tm))
                key = (float(lower[i]), int(passing[i]))
                if closest is None or key > closest[0]:
                    closest = (key, gate, int(right[i]))
                if lower[i] >= target_precision:
                    key = (int(passing[i]), float(lower[i]), float(score_grid[i]) + tb + tm)
                    if best is None or key > best[0]:
                        best = (key, gate, int(right[i]))
    nearest = None
    if closest is not None:
        (lower_bound, passing), gate, right = closest
        nearest = (gate, passing, right / passing, lower_bound)
    if best is None:
        return None, 0, None, None, nearest
    (passing, lower_bound, _), gate, right = best
    return gate, passing, right / passing, lower_bound, nearest


def calibrated_gate(detections: pd.DataFrame, truth_of, target_precision: float, score_floor: float,
                    calibration_images: int) -> GateReport:
    """The calibrated gate from the calibration images' detections (those with masks)."""
    with_masks = detections[detections["rle"].notna()].reset_index(drop=True)
    base = {"mode": "calibrated", "calibration_images": calibration_images,
            "calibration_detections": len(with_masks)}
    if calibration_images == 0 or with_masks.empty:
        why = "no mask-labeled image the model has not trained on" if calibration_images == 0 else \
            "the model made no detection (with a mask) on the images it selected"
        return GateReport(gate=None, reason=f"closed: {why}, nothing to calibrate on", **base)
    correct = correct_detections(with_masks, truth_of)
    gate, passing, precision, lower, nearest = search(
        with_masks["score"].to_numpy(), with_masks["box_iou"].to_numpy(), with_masks["mask_iou"].to_numpy(),
        correct, target_precision, score_floor)
    if gate is None:
        best = ""
        if nearest is not None:
            g, n, p, low = nearest
            best = (f"; the most precise region, c > {g.score:g}, b > {g.box_iou:g}, m > {g.mask_iou:g}, "
                    f"let {n} through at precision {p:.3f} (lower bound {low:.3f})")
        return GateReport(gate=None, reason=(
            f"closed: no (c, b, m) region reached precision {target_precision:g} (95% lower bound) on "
            f"{len(with_masks)} calibration detections ({correct.mean():.0%} of them correct){best}"), **base)
    reason = (f"open: c > {gate.score:g}, b > {gate.box_iou:g}, m > {gate.mask_iou:g} let {passing} of "
              f"{len(with_masks)} calibration detections through, precision {precision:.3f} "
              f"(95% lower bound {lower:.3f} >= {target_precision:g})")
    return GateReport(gate=gate, reason=reason, calibration_passing=passing, calibration_precision=precision,
                      calibration_precision_lower=lower, **base)


def fixed_gate(score: float, box_iou: float, mask_iou: float) -> GateReport:
    gate = Gate(score, box_iou, mask_iou)
    return GateReport(mode="fixed", gate=gate,
                      reason=f"fixed: c > {score:g}, b > {box_iou:g}, m > {mask_iou:g} (pseudo.*_thresh)")

