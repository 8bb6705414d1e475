"""DVC stage `pseudo_label` of one cycle: see salis.pipeline.pseudo_label."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.pseudo_label import stage_pseudo_label

    sys.exit(run_stage("pseudo_label", stage_pseudo_label, with_cycle=True))
