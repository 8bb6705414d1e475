"""DVC stage `annotate` of one cycle: see salis.pipeline.stage_annotate."""

import sys

from salis.pipeline import stage_annotate
from salis.stage_runner import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("annotate", stage_annotate, with_cycle=True))
