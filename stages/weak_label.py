"""DVC stage `weak_label` of one cycle: see salis.pipeline.weak_label."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.weak_label import stage_weak_label

    sys.exit(run_stage("weak_label", stage_weak_label, with_cycle=True))
