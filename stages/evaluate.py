"""DVC stage `evaluate` of one cycle: see salis.pipeline.evaluate."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.launch import Torchrun
    from salis.pipeline.evaluate import stage_evaluate

    sys.exit(run_stage("evaluate", stage_evaluate, with_cycle=True, launch=Torchrun()))
