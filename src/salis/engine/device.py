"""Device, threads and mixed precision from the runtime params: the same code runs on CPU and CUDA."""

from __future__ import annotations

import contextlib

import torch

from salis.errors import ParamsError
from salis.params import RuntimeParams


def configure_runtime(runtime: RuntimeParams) -> None:
    """Apply runtime.threads (0 keeps torch's default): a fixed count makes CPU results repeatable."""
    if runtime.threads > 0:
        torch.set_num_threads(runtime.threads)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("runtime.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA when enabled; a no-op on CPU (CPU autocast slows these models down)."""
    if device.type == "cuda" and enabled:
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()
