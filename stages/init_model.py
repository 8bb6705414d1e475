"""DVC stage `init_model`: see salis.pipeline.stage_init_model."""

import sys

from salis.pipeline import stage_init_model
from salis.stage_runner import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("init_model", stage_init_model))
