"""DVC stage `init_model`: see salis.pipeline.init_model."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.init_model import stage_init_model

    sys.exit(run_stage("init_model", stage_init_model))
