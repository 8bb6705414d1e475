"""DVC stage `pseudo_label` of one cycle: see salis.pipeline.stage_pseudo_label."""

import sys

from salis.pipeline import stage_pseudo_label
from salis.stage_runner import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("pseudo_label", stage_pseudo_label, with_cycle=True))
