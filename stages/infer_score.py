"""DVC stage `infer_score` of one cycle: see salis.pipeline.infer_score."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.launch import Torchrun
    from salis.pipeline.infer_score import stage_infer_score

    sys.exit(run_stage("infer_score", stage_infer_score, with_cycle=True, launch=Torchrun()))
