"""DVC stage `report`: see salis.pipeline.stage_report."""

import sys

from salis.pipeline import stage_report
from salis.stage_runner import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("report", stage_report))
