"""DVC stage `pictures` of one cycle: see salis.pipeline.pictures."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.pictures import stage_pictures

    sys.exit(run_stage("pictures", stage_pictures, with_cycle=True))
