"""DVC stage `request` of one cycle: see salis.pipeline.request."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.request import stage_request

    sys.exit(run_stage("request", stage_request, with_cycle=True))
