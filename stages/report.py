"""DVC stage `report`: see salis.pipeline.report."""

import sys

from salis.pipeline.runner import run_stage

if __name__ == "__main__":
    from salis.pipeline.report import stage_report

    sys.exit(run_stage("report", stage_report))
