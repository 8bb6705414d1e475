"""DVC stage `train` of one cycle: see salis.pipeline.stage_train."""

import sys

from salis.pipeline import stage_train
from salis.stage_runner import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("train", stage_train, with_cycle=True))
