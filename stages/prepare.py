"""DVC stage `prepare`: see salis.pipeline.stage_prepare."""

import sys

from salis.pipeline import stage_prepare
from salis.stage_runner import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("prepare", stage_prepare))
