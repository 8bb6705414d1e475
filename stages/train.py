"""DVC stage `train` of one cycle: see salis.pipeline.train."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.launch import Torchrun
    from salis.pipeline.train import stage_train

    sys.exit(run_stage("train", stage_train, with_cycle=True, launch=Torchrun()))
