"""How far a cycle's pseudo-label gate is from what the model could give: the calibrated gate
against the best gate the hidden truth allows, with the bound counting detections or images.

  cd PROJECT && dvc repro pseudo_label@c2 && python bench/gate_ceiling.py --cycle 2 [--out F.json]

Run in a project with the simulated oracle, after pseudo_label@CYCLE. It reads model CYCLE-1's
detections of the pool (instances@CYCLE-1), the batch it selected (the calibration images) and
the images labeled for CYCLE, and scores every detection against the hidden ground truth (correct:
best mask IoU with an instance of its class >= 0.5, as the gate counts). Reported:

- calibrated: the pipeline's gate with each `pseudo.calibration_unit` (detection: a one-sided
  95% Wilson bound counting detections as independent; image: each region's bound widened by its
  design effect over images, salis.loop.gate) and the precision it realises on the unlabeled pool, which is what it
  would pseudo-label;
- ceiling: on the unlabeled pool itself, the (c, b, m) region on the gate's grid that lets the
  most detections through at precision >= the target, and the most precise region holding at
  least 50 detections: what any gate over this model's scores could reach;
- resplits: one batch is one draw. 200 random draws of as many images from the scored
  candidates (batch and unlabeled together: model CYCLE-1 trained on none of them), each unit's
  gate calibrated on the draw and applied to the rest: how often it opens, and how often what it
  lets through reaches the target precision.

No project file is written; --out writes the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from salis.artifacts.layout import Layout
from salis.artifacts.tables import INSTANCES, LABELED, SELECTED, read_table
from salis.data.prepared import PreparedData, SimulatedOracle
from salis.loop.gate import IOU_GRID, Gate, calibrate, calibrated_gate, correct_detections, design_effect
from salis.params import load_params

MIN_REGION = 50
RESPLITS = 200
UNITS = ("detection", "image")


def score_grid(floor: float) -> np.ndarray:
    return np.unique(np.round(np.concatenate([[floor], IOU_GRID[IOU_GRID > floor], [0.99]]), 4))


def regions(floor: float):
    for tc in score_grid(floor):
        for tb in IOU_GRID:
            for tm in IOU_GRID:
                yield Gate(float(tc), float(tb), float(tm))


def passes(rows: pd.DataFrame, gate: Gate) -> np.ndarray:
    return gate.passes(rows["score"].to_numpy(), rows["box_iou"].to_numpy(), rows["mask_iou"].to_numpy())


def realised(pool: pd.DataFrame, gate: Gate | None) -> dict:
    if gate is None:
        return {"gate": None, "passing": 0, "precision": None}
    keep = passes(pool, gate)
    n = int(keep.sum())
    return {"gate": [gate.score, gate.box_iou, gate.mask_iou], "passing": n,
            "images": int(pool.loc[keep, "image_id"].nunique()),
            "precision": float(pool.loc[keep, "correct"].mean()) if n else None}


def ceiling(pool: pd.DataFrame, calib: pd.DataFrame, target: float, floor: float) -> dict:
    best, sharpest = None, None
    correct = pool["correct"].to_numpy()
    for gate in regions(floor):
        keep = passes(pool, gate)
        n = int(keep.sum())
        if n == 0:
            continue
        precision = float(correct[keep].mean())
        if precision >= target and (best is None or n > best[1]):
            best = (gate, n, precision)
        if n >= MIN_REGION and (sharpest is None or precision > sharpest[2]):
            sharpest = (gate, n, precision)

    def row(found):
        if found is None:
            return None
        on_calib = passes(calib, found[0])
        return {"gate": [found[0].score, found[0].box_iou, found[0].mask_iou], "passing": found[1],
                "precision": found[2], "calibration_passing": int(on_calib.sum()),
                "calibration_precision": float(calib.loc[on_calib, "correct"].mean()) if on_calib.any() else None}
    return {"largest_at_target": row(best), f"most_precise_of_{MIN_REGION}_or_more": row(sharpest)}


def resplit(candidates: pd.DataFrame, calibration_images: int, target: float, floor: float, seed: int) -> dict:
    """The gate rule over RESPLITS random draws of calibration_images of the scored candidates
    (the random sampler's batch is one such draw), applied to the others: per calibration unit,
    how often it opens and what the opened gates realise."""
    rng = np.random.default_rng(seed)
    images = np.array(sorted(candidates["image_id"].unique()))
    out = {unit: [] for unit in UNITS}
    for _ in range(RESPLITS):
        chosen = set(rng.choice(images, size=calibration_images, replace=False).tolist())
        inside = candidates["image_id"].isin(chosen).to_numpy()
        calib, rest = candidates[inside], candidates[~inside]
        correct = calib["correct"].to_numpy()
        for unit in UNITS:
            image_ids = calib["image_id"].to_numpy() if unit == "image" else None
            gate = calibrate(calib["score"].to_numpy(), calib["box_iou"].to_numpy(), calib["mask_iou"].to_numpy(),
                             correct, target, floor, image_ids)[0]
            design = design_effect(calib["image_id"].to_numpy(), correct)
            out[unit].append((design, realised(rest, gate)))
    summary = {}
    for unit, draws in out.items():
        opened = [r for _, r in draws if r["gate"] is not None and r["passing"] > 0]
        precisions = np.array([r["precision"] for r in opened])
        summary[unit] = {
            "draws": len(draws), "opened": len(opened),
            "whole_set_design_effect_median": float(np.median([d for d, _ in draws])),
            "passing_median": float(np.median([r["passing"] for r in opened])) if opened else 0.0,
            "precision_mean": float(precisions.mean()) if opened else None,
            "precision_at_target": int((precisions >= target).sum()),
            "precision_min": float(precisions.min()) if opened else None,
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycle", type=int, default=2)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    params = load_params(args.params)
    if params.oracle != "simulated":
        raise SystemExit("gate_ceiling: needs oracle: simulated (the hidden pool truth)")
    layout = Layout()
    prepared = PreparedData(layout.prepared)
    truth = SimulatedOracle(prepared).annotations
    scored = INSTANCES.read_rows(layout.instances(args.cycle - 1))
    scored = scored[scored["rle"].notna()].reset_index(drop=True)
    batch = set(read_table(layout.selected(args.cycle - 1), SELECTED)["image_id"].tolist())
    labeled = set(read_table(layout.labeled(args.cycle), LABELED)["image_id"].tolist())
    scored = scored.assign(correct=correct_detections(scored, truth))
    calib = scored[scored["image_id"].isin(batch)].reset_index(drop=True)
    pool = scored[~scored["image_id"].isin(batch | labeled)].reset_index(drop=True)
    target, floor = params.pseudo.target_precision, params.score.mask_min_score
    gates = {unit: calibrated_gate(calib.drop(columns="correct"), truth, target, floor, len(batch), unit)
             for unit in UNITS}
    out = {
        "seed": params.seed, "cycle": args.cycle, "target_precision": target,
        "calibration": {"images": len(batch), "detections": len(calib),
                        "correct": float(calib["correct"].mean()) if len(calib) else None},
        "pool": {"images": int(pool["image_id"].nunique()), "detections": len(pool),
                 "correct": float(pool["correct"].mean()) if len(pool) else None},
        "calibrated": {unit: {"reason": g.reason, **realised(pool, g.gate)} for unit, g in gates.items()},
        "ceiling": ceiling(pool, calib, target, floor),
        "resplits": resplit(pd.concat([calib, pool], ignore_index=True), len(batch), target, floor, params.seed),
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
