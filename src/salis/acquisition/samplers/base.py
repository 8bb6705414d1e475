"""The sampler interface and registry."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from salis.errors import SalisError
from salis.params import SelectParams


@dataclasses.dataclass
class SelectionContext:
    """The data a sampler may look at: scores of the unlabeled pool, never ground truth or test
    images (except through the oracle, for analysis samplers). Knobs live on the sampler."""

    images: pd.DataFrame  # one row per unlabeled pool image: image_id plus aggregated scores
    instances_path: Path | None  # per-detection table of this cycle, for instance-level samplers
    labeled_ids: frozenset[int]
    rng: np.random.Generator  # seeded from params.seed and the cycle
    num_classes: int = 1
    oracle: Any = None  # SimulatedOracle for analysis samplers; None when labels come from humans
    embeddings_path: Path | None = None  # per-image embeddings of the whole pool (acquisition.embeddings)


class Sampler(abc.ABC):
    """Orders the unlabeled images; the select stage takes the first `budget`."""

    name: str = ""
    # KEY=VALUE params a run of this sampler needs beyond the defaults (salis compare adds them)
    requires: tuple[str, ...] = ()

    @classmethod
    def from_params(cls, params: SelectParams) -> "Sampler":
        """Build the sampler from the select group; a sampler with knobs reads its own here."""
        return cls()

    @abc.abstractmethod
    def rank(self, ctx: SelectionContext) -> list[int]:
        """All unlabeled image ids, most useful to label first."""

    def select(self, ctx: SelectionContext, budget: int) -> list[int]:
        ranked = self.rank(ctx)
        if len(set(ranked)) != len(ranked) or set(ranked) != set(ctx.images["image_id"].tolist()):
            raise SalisError(f"sampler {self.name!r} must rank every unlabeled image exactly once")
        return ranked[:budget]


class ScoreSampler(Sampler):
    """A per-image score and a direction; ties are broken by a seeded random order."""

    highest_first: bool = True

    @abc.abstractmethod
    def score(self, ctx: SelectionContext) -> np.ndarray:
        """One score per row of ctx.images."""

    def rank(self, ctx: SelectionContext) -> list[int]:
        scores = np.asarray(self.score(ctx), dtype=np.float64)
        key = -scores if self.highest_first else scores
        tiebreak = ctx.rng.permutation(len(scores))
        order = np.lexsort((tiebreak, key))  # last key is primary
        return ctx.images["image_id"].to_numpy()[order].tolist()


SAMPLERS: dict[str, type[Sampler]] = {}


def register(name: str) -> Callable[[type[Sampler]], type[Sampler]]:
    def add(cls: type[Sampler]) -> type[Sampler]:
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} registered twice")
        cls.name = name
        SAMPLERS[name] = cls
        return cls

    return add


def get_sampler(name: str, params: SelectParams | None = None) -> Sampler:
    """The registered sampler `name`, built from the select params (defaults when None)."""
    if name not in SAMPLERS:
        raise SalisError(f"unknown sampler {name!r} (params.yaml: sampler); valid: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name].from_params(params if params is not None else SelectParams())
