"""Run a stage function with the user-facing error policy: one clear line, no traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from salis.errors import SalisError
from salis.artifacts.layout import Layout
from salis.params import Params, load_params


def run_stage(name: str, fn: Callable[..., Any], with_cycle: bool = False, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--params", default="params.yaml")
    if with_cycle:
        parser.add_argument("--cycle", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        params: Params = load_params(args.params)
        extra = (args.cycle,) if with_cycle else ()
        fn(params, Layout(), *extra)
    except SalisError as err:
        print(f"salis {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"salis {name}: interrupted; no partial output was written", file=sys.stderr)
        return 130
    return 0
