"""DVC stage `select` of one cycle (not named select.py: that would shadow the stdlib module)."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.select import stage_select

    sys.exit(run_stage("select", stage_select, with_cycle=True))
