"""How far a cycle's pseudo-label gate is from what the model could give: the calibrated gate
against the best gate the hidden truth allows, and gate rules compared over many batches.

  cd PROJECT && dvc repro pseudo_label@c2 && python bench/gate_ceiling.py --cycle 2 \
      [--save-candidates F.parquet] [--out F.json]
  python bench/gate_ceiling.py --candidates F.parquet --seed N [--out F.json]   # no project needed

Run in a project with the simulated oracle, after pseudo_label@CYCLE. It reads model CYCLE-1's
detections of the pool (instances@CYCLE-1, those with a mask), the batch it selected (the
calibration images) and the images labeled for CYCLE, and scores every detection against the
hidden ground truth (correct: best mask IoU with an instance of its class >= 0.5, as the gate
counts). --save-candidates writes those scored detections (image, class, c, b, m, correct, in the
batch or not); --candidates reads such a table instead of a project, so that the analysis reruns
in seconds. Reported:

- calibrated: the pipeline's gate (salis.loop.gate.calibrate) with each `pseudo.calibration_unit`
  (detection: a one-sided 95% Wilson bound counting detections as independent; image: each
  region's bound widened by its design effect over images), calibrated on the batch, and the
  precision it realises on the unlabeled rest, which is what it would pseudo-label;
- ceiling: on the unlabeled rest itself, the (c, b, m) region on the gate's grid that lets the
  most detections through at precision >= the target, and the most precise region holding at
  least 50 detections: what any gate over this model's scores could reach;
- top: the precision on the rest of its top 50 / 100 / 200 detections ranked by each of c, b, m
  and c*b*m: whether any one signal finds precise detections where no region does;
- resplits: one batch is one draw. 200 random draws of as many images from the candidates (batch
  and rest together: model CYCLE-1 trained on none of them); each gate rule is calibrated on the
  draw and applied to the rest: how often it opens, and how often what it lets through reaches the
  target precision. Rules: the pipeline's two units, and three measured alternatives that search
  a one-dimensional family instead of 8,400 regions (fewer comparisons, a smaller winner's
  curse): the top detections by c*b*m (or by c alone) with the image-widened bound, the largest
  passing prefix, or, product_sequence, walking down from 30 detections and stopping at the first
  prefix that fails (fixed-sequence testing as in Learn-then-Test). --resplit-images draws
  calibration sets of another size: what a larger batch would give; --target-precision above
  --land-at: a gate that aims above the precision it needs.

No project file is written; --out writes the JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from salis.loop.gate import (IOU_GRID, Z_ONE_SIDED_95, Gate, calibrate, design_effect, score_thresholds,
                             wilson_lower)

MIN_REGION = 50
RESPLITS = 200
FIRST_PREFIX = 30  # the one-dimensional rules' smallest prefix (a bound on fewer detections is noise)
PREFIX_STEP = 5
CANDIDATE_COLUMNS = ("image_id", "category_id", "score", "box_iou", "mask_iou", "correct", "in_batch")

Rule = Callable[[pd.DataFrame, float, float], "Callable[[pd.DataFrame], np.ndarray] | None"]


def regions(floor: float):
    for tc in score_thresholds(floor):
        for tb in IOU_GRID:
            for tm in IOU_GRID:
                yield Gate(float(tc), float(tb), float(tm))


def triplet(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return rows["score"].to_numpy(), rows["box_iou"].to_numpy(), rows["mask_iou"].to_numpy()


def passes(rows: pd.DataFrame, gate: Gate) -> np.ndarray:
    return gate.passes(*triplet(rows))


def realised(rest: pd.DataFrame, keep: np.ndarray | None) -> dict:
    if keep is None or not keep.any():
        return {"passing": 0, "precision": None}
    return {"passing": int(keep.sum()), "images": int(rest.loc[keep, "image_id"].nunique()),
            "precision": float(rest.loc[keep, "correct"].mean())}


def region_rule(unit: str) -> Rule:
    """The pipeline's calibrated gate, counting detections or images."""
    def rule(calib: pd.DataFrame, target: float, floor: float):
        image_ids = calib["image_id"].to_numpy() if unit == "image" else None
        gate = calibrate(*triplet(calib), calib["correct"].to_numpy(), target, floor, image_ids)[0]
        return None if gate is None else (lambda rows: passes(rows, gate))
    return rule


def product(rows: pd.DataFrame) -> np.ndarray:
    c, b, m = triplet(rows)
    return c * np.nan_to_num(b, nan=1.0) * np.nan_to_num(m, nan=1.0)  # no IoU head: c alone


def class_score(rows: pd.DataFrame) -> np.ndarray:
    return rows["score"].to_numpy()


def prefix_rule(value: Callable[[pd.DataFrame], np.ndarray], sequential: bool) -> Rule:
    """The calibration detections ranked by one value; the gate is the value of the last of the
    largest prefix (from FIRST_PREFIX on) whose image-widened Wilson bound reaches the target;
    sequential: the prefixes are tested in order and the first failure stops the walk."""
    def rule(calib: pd.DataFrame, target: float, floor: float):
        calib = calib[calib["score"] > floor]
        ranked = value(calib)
        order = np.argsort(-ranked, kind="stable")
        values, correct = ranked[order], calib["correct"].to_numpy()[order]
        images = calib["image_id"].to_numpy()[order]
        chosen = None
        for k in range(FIRST_PREFIX, len(values) + 1, PREFIX_STEP):
            z = Z_ONE_SIDED_95 * np.sqrt(design_effect(images[:k], correct[:k]))
            if float(wilson_lower(correct[:k].sum(), k, z)) >= target:
                chosen = k
            elif sequential:
                break
        if chosen is None:
            return None
        threshold = values[chosen - 1]
        return lambda rows: (rows["score"].to_numpy() > floor) & (value(rows) >= threshold)
    return rule


RULES: dict[str, Rule] = {
    "detection": region_rule("detection"),
    "image": region_rule("image"),
    "product_largest": prefix_rule(product, sequential=False),
    "product_sequence": prefix_rule(product, sequential=True),
    "score_largest": prefix_rule(class_score, sequential=False),
}


def ceiling(rest: pd.DataFrame, calib: pd.DataFrame, target: float, floor: float) -> dict:
    best, sharpest = None, None
    correct = rest["correct"].to_numpy()
    for gate in regions(floor):
        keep = passes(rest, gate)
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


TOP_K = (50, 100, 200)
SIGNALS: dict[str, Callable[[pd.DataFrame], np.ndarray]] = {
    "score": class_score, "box_iou": lambda rows: rows["box_iou"].to_numpy(),
    "mask_iou": lambda rows: rows["mask_iou"].to_numpy(), "product": product,
}


def top_precision(rest: pd.DataFrame) -> dict:
    correct = rest["correct"].to_numpy()
    out = {}
    for name, value in SIGNALS.items():
        order = np.argsort(-np.nan_to_num(value(rest), nan=-np.inf), kind="stable")
        out[name] = {str(k): float(correct[order[:k]].mean()) for k in TOP_K if k <= len(order)}
    return out


def resplit(candidates: pd.DataFrame, calibration_images: int, target: float, floor: float, seed: int,
            land: float | None = None) -> dict:
    """Every rule over RESPLITS random draws of calibration_images of the candidates (the random
    sampler's batch is one such draw), applied to the others; an opening lands when its precision
    on the others is >= land (default: the target; below it: a gate aiming above what it needs)."""
    land = target if land is None else land
    rng = np.random.default_rng(seed)
    images = np.array(sorted(candidates["image_id"].unique()))
    draws: dict[str, list[dict]] = {name: [] for name in RULES}
    designs = []
    for _ in range(RESPLITS):
        chosen = set(rng.choice(images, size=calibration_images, replace=False).tolist())
        inside = candidates["image_id"].isin(chosen).to_numpy()
        calib, rest = candidates[inside], candidates[~inside]
        designs.append(design_effect(calib["image_id"].to_numpy(), calib["correct"].to_numpy()))
        for name, rule in RULES.items():
            keep_of = rule(calib, target, floor)
            draws[name].append(realised(rest, None if keep_of is None else keep_of(rest)))
    summary: dict = {"draws": RESPLITS, "landing_precision": land,
                     "batch_design_effect_median": float(np.median(designs))}
    for name, results in draws.items():
        opened = [r for r in results if r["passing"] > 0]
        precisions = np.array([r["precision"] for r in opened])
        summary[name] = {
            "opened": len(opened),
            "at_target": int((precisions >= land).sum()),
            "passing_median": float(np.median([r["passing"] for r in opened])) if opened else 0.0,
            "precision_mean": float(precisions.mean()) if opened else None,
            "precision_min": float(precisions.min()) if opened else None,
        }
    return summary


def analyse(candidates: pd.DataFrame, target: float, floor: float, seed: int,
            resplit_images: int | None = None, land: float | None = None) -> dict:
    calib = candidates[candidates["in_batch"]].reset_index(drop=True)
    rest = candidates[~candidates["in_batch"]].reset_index(drop=True)
    calibrated = {}
    for unit in ("detection", "image"):
        image_ids = calib["image_id"].to_numpy() if unit == "image" else None
        gate, passing, precision, lower = calibrate(*triplet(calib), calib["correct"].to_numpy(), target,
                                                    floor, image_ids)
        calibrated[unit] = {"gate": None if gate is None else [gate.score, gate.box_iou, gate.mask_iou],
                            "calibration_passing": passing, "calibration_precision": precision,
                            "calibration_lower_bound": lower,
                            **realised(rest, None if gate is None else passes(rest, gate))}
    return {
        "seed": seed, "target_precision": target, "score_floor": floor,
        "calibration": {"images": int(calib["image_id"].nunique()), "detections": len(calib),
                        "correct": float(calib["correct"].mean()) if len(calib) else None},
        "rest": {"images": int(rest["image_id"].nunique()), "detections": len(rest),
                 "correct": float(rest["correct"].mean()) if len(rest) else None},
        "calibrated": calibrated,
        "ceiling": ceiling(rest, calib, target, floor),
        "top": top_precision(rest),
        "resplit_images": resplit_images or int(calib["image_id"].nunique()),
        "resplits": resplit(candidates, resplit_images or int(calib["image_id"].nunique()), target, floor, seed,
                              land),
    }


def candidates_from_project(cycle: int, params) -> pd.DataFrame:
    """Model cycle-1's scored detections (with masks) of the images unlabeled before its batch."""
    from salis.artifacts.layout import Layout
    from salis.artifacts.tables import INSTANCES, LABELED, SELECTED, read_table
    from salis.data.prepared import PreparedData, SimulatedOracle
    from salis.loop.gate import correct_detections

    if params.oracle != "simulated":
        raise SystemExit("gate_ceiling: needs oracle: simulated (the hidden pool truth)")
    layout = Layout()
    truth = SimulatedOracle(PreparedData(layout.prepared)).annotations
    scored = INSTANCES.read_rows(layout.instances(cycle - 1))
    batch = set(read_table(layout.selected(cycle - 1), SELECTED)["image_id"].tolist())
    labeled = set(read_table(layout.labeled(cycle), LABELED)["image_id"].tolist())
    scored = scored[scored["rle"].notna() & ~scored["image_id"].isin(labeled - batch)].reset_index(drop=True)
    scored = scored.assign(correct=correct_detections(scored, truth), in_batch=scored["image_id"].isin(batch))
    return scored[list(CANDIDATE_COLUMNS)]


def read_candidates(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (bench/gate_ceiling.py --save-candidates writes one)")
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise SystemExit(f"{path}: not a readable parquet table ({err})") from None
    missing = [c for c in CANDIDATE_COLUMNS if c not in table.columns]
    if missing:
        raise SystemExit(f"{path}: missing columns {missing} (written by --save-candidates)")
    return table[list(CANDIDATE_COLUMNS)].astype({"correct": bool, "in_batch": bool})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycle", type=int, default=2)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--candidates", type=Path, help="a table from --save-candidates, instead of a project")
    parser.add_argument("--seed", type=int, help="the resplits' seed (default: the params' seed)")
    parser.add_argument("--target-precision", type=float, help="default: the params' pseudo.target_precision")
    parser.add_argument("--score-floor", type=float, help="default: the params' score.mask_min_score")
    parser.add_argument("--resplit-images", type=int,
                        help="images in each resplit's calibration set (default: the batch's): what a larger batch would give")
    parser.add_argument("--land-at", type=float,
                        help="resplits count an opening as landing at this precision (default: the target)")
    parser.add_argument("--save-candidates", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    needs_params = args.candidates is None or None in (args.seed, args.target_precision, args.score_floor)
    params = None
    if needs_params:
        from salis.params import load_params
        params = load_params(args.params)
    candidates = read_candidates(args.candidates) if args.candidates else candidates_from_project(args.cycle, params)
    if args.save_candidates:
        partial = args.save_candidates.with_suffix(".partial")
        candidates.to_parquet(partial, index=False)
        partial.replace(args.save_candidates)
    seed = args.seed if args.seed is not None else params.seed
    target = args.target_precision if args.target_precision is not None else params.pseudo.target_precision
    floor = args.score_floor if args.score_floor is not None else params.score.mask_min_score
    text = json.dumps({"cycle": args.cycle, **analyse(candidates, target, floor, seed, args.resplit_images, args.land_at)}, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
