"""torch.distributed for the torch stages, launched by torchrun (salis.pipeline.runner starts it).

runtime.nproc processes per node (runtime.nnodes nodes, meeting at runtime.rdzv_endpoint when
more than one). The backend is nccl on CUDA (one GPU per local rank) and gloo on CPU; torchvision's
references hard-code CUDA and nccl, so salis has its own init. Rank 0 alone writes checkpoints,
dvclive files, tables and metrics; the others compute and hand their results to it.

Outside torchrun (one process) every helper here is a no-op that behaves as rank 0 of 1.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from salis.errors import ParamsError
from salis.params import RuntimeParams

T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=30)  # a collective waiting longer than this ends the job


def launched() -> bool:
    """True inside a process started by torchrun."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def planned_world(runtime: RuntimeParams) -> int:
    return runtime.nproc * runtime.nnodes


def check_launch(runtime: RuntimeParams) -> None:
    """Refuse, before any work, a process count the machine or the rendezvous cannot give."""
    if runtime.nnodes > 1 and not runtime.rdzv_endpoint:
        raise ParamsError(f"runtime.nnodes is {runtime.nnodes}: set runtime.rdzv_endpoint (HOST:PORT of node 0) "
                          "so that the nodes can meet (torchrun --rdzv-endpoint)")
    wants_cuda = runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        available = torch.cuda.device_count()
        if runtime.nproc > available:
            raise ParamsError(f"runtime.nproc is {runtime.nproc} but this node has {available} CUDA device(s): "
                              "one process per GPU")
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if runtime.nproc > cores:
            raise ParamsError(f"runtime.nproc is {runtime.nproc} but this machine has {cores} CPU core(s) for them")


def torchrun_command(runtime: RuntimeParams, module: str, args: Sequence[str], python: str) -> list[str]:
    """The torchrun command line that runs `python -m module args` on runtime.nproc processes."""
    command = [python, "-m", "torch.distributed.run", f"--nproc-per-node={runtime.nproc}",
               f"--nnodes={runtime.nnodes}", "--max-restarts=0"]
    if runtime.nnodes > 1:
        command += ["--rdzv-backend=c10d", f"--rdzv-endpoint={runtime.rdzv_endpoint}", f"--rdzv-id={runtime.rdzv_id}"]
    else:
        command += ["--standalone"]
    return command + ["-m", module, *args]


def init(runtime: RuntimeParams) -> torch.device | None:
    """Join the process group torchrun set up; the device of this rank (None outside torchrun)."""
    if not launched():
        return None
    expected, got = planned_world(runtime), int(os.environ["WORLD_SIZE"])
    if got != expected:
        raise ParamsError(f"this stage runs in {got} processes but runtime.nproc x runtime.nnodes is {expected}: "
                          "every stage must run with the world size params.yaml names")
    local = int(os.environ["LOCAL_RANK"])
    cuda = runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return torch.device("cuda", local) if cuda else torch.device("cpu")


def device_for(runtime: RuntimeParams) -> torch.device | None:
    """This rank's device inside torchrun (cuda:LOCAL_RANK or cpu); None in one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    cuda = runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def gather(obj: T) -> list[T] | None:
    """Every rank's object, in rank order, on rank 0 (None elsewhere); [obj] in one process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_ranks(flag: bool) -> bool:
    """True when the flag holds on every rank (every rank must take the same branch)."""
    if world_size() == 1:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value's mean over the ranks that have it (a rank without box-labeled images logs no
    BoxInst loss, say); every rank gets the same dict. Unchanged in one process."""
    if world_size() == 1:
        return values
    names: list[Any] = [None] * world_size()
    dist.all_gather_object(names, sorted(values))
    keys = sorted({k for part in names for k in part})
    sums = torch.tensor([[values.get(k, 0.0), 1.0 if k in values else 0.0] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        sums = sums.cuda()
    dist.all_reduce(sums)
    return {k: float(total) / float(count) for k, (total, count) in zip(keys, sums.cpu().tolist())}


def sum_over_ranks(counts: dict[str, float]) -> dict[str, float]:
    """Each count summed over the ranks (every rank passes the same keys); every rank gets the
    same dict. Unchanged in one process."""
    if world_size() == 1:
        return counts
    keys = sorted(counts)
    sums = torch.tensor([counts[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        sums = sums.cuda()
    dist.all_reduce(sums)
    return dict(zip(keys, sums.cpu().tolist()))


def shard(items: Sequence[T], index: int | None = None, count: int | None = None) -> list[T]:
    """This rank's strided, non-overlapping share of items (items[r::W]); nothing is padded or repeated."""
    index = rank() if index is None else index
    count = world_size() if count is None else count
    return list(items[index::count])
