"""Rescore a finished workspace's cycle with this code and compare its outputs with the ones the
workspace holds (written by whatever code ran it): images.parquet, every instance column, the
masks at or above score.mask_min_score, the workspace sampler's selection and the pseudo-labels.

    python bench/scoring_identity.py WORKSPACE [--cycle 1]

WORKSPACE is a project folder after `dvc repro` (its params.yaml, data/ and models/ are read, never
written: the rescoring runs in a temporary copy). Prints one line per output and exits 1 when an
output differs; run it from this repository (so `salis` is this code).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from salis.artifacts.layout import Layout
from salis.params import load_params
from salis.pipeline.infer_score import stage_infer_score
from salis.pipeline.pseudo_label import stage_pseudo_label
from salis.pipeline.select import stage_select


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--cycle", type=int, default=1)
    args = parser.parse_args()
    old, k = Layout(args.workspace.resolve()), args.cycle
    params = load_params(args.workspace / "params.yaml")
    here = Path.cwd()
    rows = []
    # beside the workspace, so that its relative paths (../shared/datasets/...) resolve alike
    with tempfile.TemporaryDirectory(dir=old.root.parent, prefix=".scoring_identity.") as tmp:
        new = Layout(Path(tmp))
        shutil.copytree(old.root / "data", new.root / "data")
        shutil.copytree(old.root / "models", new.root / "models")
        os.chdir(tmp)  # the workspace's relative paths (a synthetic dataset's images) resolve in the copy
        stage_infer_score(params, new, k)
        rows.append(("images.parquet", old.images(k).read_bytes() == new.images(k).read_bytes()))
        a, b = pd.read_parquet(old.instances(k)), pd.read_parquet(new.instances(k))
        masks = ["area", "rle"]
        same_columns = len(a) == len(b) and a.drop(columns=masks).equals(b.drop(columns=masks))
        rows.append(("instances.parquet, every column but the mask", same_columns))
        if same_columns:
            kept = (a["score"] >= params.score.mask_min_score).to_numpy()
            rows.append((f"masks of the {int(kept.sum())} detections scoring >= {params.score.mask_min_score}",
                         a.loc[kept, "rle"].tolist() == b.loc[kept, "rle"].tolist()))
        stage_select(params, new, k)
        rows.append((f"selected.parquet ({params.sampler})", old.selected(k).read_bytes() == new.selected(k).read_bytes()))
        stage_pseudo_label(params, new, k)
        rows.append(("pseudo.parquet", old.pseudo(k + 1).read_bytes() == new.pseudo(k + 1).read_bytes()))
    os.chdir(here)
    for name, same in rows:
        print(f"{'same' if same else 'DIFFERENT'}: {name}")
    return 0 if all(same for _, same in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
