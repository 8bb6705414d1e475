"""`salis compare` end to end: a grid of DVC experiments on a tiny project, its report, a resume."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from support import new_project, run

pytestmark = pytest.mark.slow


def test_compare_runs_a_grid_of_experiments_and_reports_it(tmp_path: Path):
    """salis compare: 2 samplers x 2 seeds as DVC experiments (train@c1 shared per seed), the
    report from them, a rerun that resumes instead of repeating, and `dvc plots show`."""
    work = new_project(tmp_path, {"cycles": {"c1": {"k": 1, "prev": 0, "next": 2}}})
    salis = str(Path(sys.executable).parent / "salis")
    out = run([salis, "compare", "--samplers", "random,entropy", "--seeds", "0,1"], work)
    exps = run(["git", "for-each-ref", "--format=%(refname:short)", "refs/exps"], work)
    for name in ("cmp-random-s0", "cmp-random-s1", "cmp-entropy-s0", "cmp-entropy-s1"):
        assert name in exps
    summary = pd.read_csv(work / "metrics" / "compare" / "summary.csv").set_index("sampler")
    assert summary.loc["random", "runs"] == 2 and summary.loc["entropy", "runs"] == 2
    assert summary.loc["random", "aulc_diff_mean"] == 0.0  # random against itself, seed by seed
    assert "| entropy | 2 |" in out
    again = run([salis, "compare", "--samplers", "random,entropy", "--seeds", "0,1"], work)
    assert again.count("already present, not rerun") == 4
    plots = run(["dvc", "plots", "show", "--json"], work)
    assert "vs labeled images (mean and 95% CI over seeds)" in plots and "curves.png" in plots
