"""DVC stage `pretrain`: see salis.pipeline.pretrain."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.pretrain import stage_pretrain

    sys.exit(run_stage("pretrain", stage_pretrain))
