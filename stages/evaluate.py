"""DVC stage `evaluate` of one cycle: see salis.pipeline.stage_evaluate."""

import sys

from salis.pipeline import stage_evaluate
from salis.stage_runner import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("evaluate", stage_evaluate, with_cycle=True))
