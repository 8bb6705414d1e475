"""Run a stage function with the user-facing error policy: one clear line, no traceback.

A distributed stage passes a Launch (salis.pipeline.launch): with runtime.nproc x runtime.nnodes
> 1 this process checks the params and the machine, takes the stage lock and has the Launch
start torchrun; the ranks come back here and run the stage function inside the Launch.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, Protocol

from salis.artifacts.atomic import remove_stale_temp
from salis.artifacts.layout import Layout
from salis.errors import SalisError
from salis.params import Params, load_params
from salis.pipeline.guard import StageTerminated, die_with_parent, stage_lock


class Launch(Protocol):
    """How a distributed stage runs on several processes (salis.pipeline.launch.Torchrun)."""

    def is_rank(self) -> bool: ...  # this process is one of the ranks torchrun started
    def wanted(self, params: Params) -> bool: ...  # params ask for more than one process
    def start(self, name: str, argv: list[str], params: Params, label: str) -> int: ...
    def run_rank(self, params: Params, work: Callable[[], Any]) -> None: ...


def run_stage(
    name: str, fn: Callable[..., Any], with_cycle: bool = False, argv: list[str] | None = None,
    launch: Launch | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--params", default="params.yaml")
    if with_cycle:
        parser.add_argument("--cycle", type=int, required=True)
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    label = f"{name}@c{args.cycle}" if with_cycle else name
    layout = Layout()
    rank = launch is not None and launch.is_rank()
    prefix = f"salis {label}" + (f" (rank {os.environ.get('RANK', '?')})" if rank else "")
    warnings.formatwarning = lambda message, *_args, **_kw: f"{prefix}: warning: {message}\n"
    extra = (args.cycle,) if with_cycle else ()
    try:
        die_with_parent()
        if rank:  # one of torchrun's ranks: the launching process holds the lock
            params: Params = load_params(args.params)
            launch.run_rank(params, lambda: fn(params, layout, *extra))
            return 0
        with stage_lock(layout.locks, label):
            remove_stale_temp(layout.artifact_roots)
            params = load_params(args.params)
            if launch is not None and launch.wanted(params):
                return launch.start(name, raw, params, label)
            fn(params, layout, *extra)
    except SalisError as err:
        print(f"{prefix}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"salis {label}: interrupted; no partial output was written", file=sys.stderr)
        return 130
    except StageTerminated:
        print(f"salis {label}: terminated (its dvc exited?); no partial output was written", file=sys.stderr)
        return 143
    return 0
