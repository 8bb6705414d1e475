"""DVC stage `infer_score` of one cycle: see salis.pipeline.stage_infer_score."""

import sys

from salis.pipeline import stage_infer_score
from salis.stage_runner import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("infer_score", stage_infer_score, with_cycle=True))
