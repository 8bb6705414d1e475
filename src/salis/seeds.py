"""Every random stream of the pipeline derives from params.seed through one function.

Streams are keyed by (seed, cycle, purpose[, index]) and hashed by numpy's SeedSequence, so
they are independent of each other (a new purpose never shifts an old stream) and the same
params give the same numbers on every run.
"""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(seed: int, cycle: int, purpose: str, index: int = 0) -> int:
    """A 63-bit seed (valid for numpy and torch.manual_seed) for one stream of one cycle."""
    key = [seed % 2**64, cycle % 2**64, zlib.crc32(purpose.encode("utf-8")), index % 2**64]
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> np.uint64(1))


def derive_rng(seed: int, cycle: int, purpose: str, index: int = 0) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, cycle, purpose, index))
