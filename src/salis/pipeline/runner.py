"""Run a stage function with the user-facing error policy: one clear line, no traceback."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from typing import Any

from salis.artifacts.atomic import remove_stale_temp
from salis.artifacts.layout import Layout
from salis.errors import SalisError
from salis.params import Params, load_params
from salis.pipeline.guard import StageTerminated, die_with_parent, stage_lock


def run_stage(name: str, fn: Callable[..., Any], with_cycle: bool = False, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--params", default="params.yaml")
    if with_cycle:
        parser.add_argument("--cycle", type=int, required=True)
    args = parser.parse_args(argv)
    label = f"{name}@c{args.cycle}" if with_cycle else name
    layout = Layout()
    warnings.formatwarning = lambda message, *_args, **_kw: f"salis {label}: warning: {message}\n"
    try:
        die_with_parent()
        with stage_lock(layout.locks, label):
            remove_stale_temp(layout.artifact_roots)
            params: Params = load_params(args.params)
            extra = (args.cycle,) if with_cycle else ()
            fn(params, layout, *extra)
    except SalisError as err:
        print(f"salis {label}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"salis {label}: interrupted; no partial output was written", file=sys.stderr)
        return 130
    except StageTerminated:
        print(f"salis {label}: terminated (its dvc exited?); no partial output was written", file=sys.stderr)
        return 143
    return 0
