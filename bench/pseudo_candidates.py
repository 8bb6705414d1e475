"""Why a run made (no) pseudo-labels: per cycle, how the unlabeled pool's detections fare against
TSP's triplet thresholds, and what the IoU heads predicted.

  python bench/pseudo_candidates.py [--rev EXPERIMENT] [--project DIR]

Reads each cycle's instances.parquet as the revision recorded it (the workspace, or an
experiment or commit through `dvc.api.open`, so a finished grid needs no rerun) and prints, per
cycle: detections, those with class score c > pseudo.score_thresh, those also with box IoU
b > pseudo.box_iou_thresh, those also with mask IoU m > pseudo.mask_iou_thresh (the pseudo-labels),
and the 50th/90th/99th percentiles and maximum of b and m over the detections with c above its
threshold.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def read(project: Path, path: str, rev: str | None) -> bytes:
    if rev is None:
        return (project / path).read_bytes()
    import dvc.api

    with dvc.api.open(path, repo=str(project), rev=rev, mode="rb") as handle:
        return handle.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--rev", help="an experiment name or commit (default: the workspace)")
    args = parser.parse_args()
    params = yaml.safe_load(read(args.project, "params.yaml", args.rev) if args.rev else
                            (args.project / "params.yaml").read_bytes())
    c_t, b_t, m_t = (float(params["pseudo"][k]) for k in ("score_thresh", "box_iou_thresh", "mask_iou_thresh"))
    rows = []
    for cycle in sorted(int(c["k"]) for c in params["cycles"].values()):
        data = read(args.project, f"data/cycles/{cycle}/instances.parquet", args.rev)
        table = pd.read_parquet(io.BytesIO(data), columns=["score", "box_iou", "mask_iou"])
        confident = table[table["score"] > c_t]
        boxed = confident[confident["box_iou"] > b_t]
        row = {"cycle": cycle, "detections": len(table), f"c>{c_t:g}": len(confident), f"and b>{b_t:g}": len(boxed),
               f"and m>{m_t:g}": int((boxed["mask_iou"] > m_t).sum())}
        for name in ("box_iou", "mask_iou"):
            values = confident[name].to_numpy(np.float64)
            q = np.percentile(values, [50, 90, 99]).round(3).tolist() if len(values) else [None] * 3
            row[f"{name} p50/p90/p99/max (c>{c_t:g})"] = q + [round(float(values.max()), 3) if len(values) else None]
        rows.append(row)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    import os
    import sys

    main()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: dvc's git backend thread aborts noisily there
