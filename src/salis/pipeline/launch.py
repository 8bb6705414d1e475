"""torchrun for the distributed stages (train, infer_score, evaluate): see salis.pipeline.runner.

The launching process (run by dvc) keeps the stage lock and its parent-death watch, starts
torchrun in a session of its own and waits; an interrupt or SIGTERM stops every rank. A rank that
fails ends the job (torchrun --max-restarts=0 stops the others) and the stage prints one line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from salis.engine import distributed as dist
from salis.params import Params


class Torchrun:
    def is_rank(self) -> bool:
        return dist.launched()

    def wanted(self, params: Params) -> bool:
        if dist.planned_world(params.runtime) <= 1:
            return False
        dist.check_launch(params.runtime)
        return True

    def run_rank(self, params: Params, work: Callable[[], Any]) -> None:
        try:
            dist.init(params.runtime)
            work()
        finally:
            dist.shutdown()

    def start(self, name: str, argv: list[str], params: Params, label: str) -> int:
        command = dist.torchrun_command(params.runtime, f"stages.{name}", argv, sys.executable)
        runtime = params.runtime
        print(f"salis {label}: {dist.planned_world(runtime)} processes ({runtime.nproc} per node x "
              f"{runtime.nnodes} node(s)) through torchrun", file=sys.stderr, flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(max(runtime.threads, 1)))
        child = subprocess.Popen(command, env=env, start_new_session=True)
        try:
            code = child.wait()
        except BaseException:  # Ctrl-C, or SIGTERM when dvc died: stop every rank before leaving
            os.killpg(child.pid, signal.SIGTERM)
            child.wait()
            raise
        if code:
            print(f"salis {label}: error: a rank failed (torchrun exited with {code}; the lines above name the "
                  "rank and its error); the stage's outputs were not written", file=sys.stderr)
            return 2
        return 0
