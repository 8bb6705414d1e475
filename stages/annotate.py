"""DVC stage `annotate` of one cycle: see salis.pipeline.annotate."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.annotate import stage_annotate

    sys.exit(run_stage("annotate", stage_annotate, with_cycle=True))
