"""DVC stage `init`: see salis.pipeline.stage_init."""

import sys

from salis.pipeline import stage_init
from salis.stage_runner import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("init", stage_init))
