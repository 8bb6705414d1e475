"""DVC stage `prepare`: see salis.pipeline.prepare."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.prepare import stage_prepare

    sys.exit(run_stage("prepare", stage_prepare))
