"""DVC stage `init`: see salis.pipeline.init."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.init import stage_init

    sys.exit(run_stage("init", stage_init))
