"""Acquisition functions. A sampler is a score plus an order (as in baal's heuristics).

New samplers register themselves with `@register("name")` and plug into the select stage
without touching it.
"""

from salis.acquisition.samplers.base import SAMPLERS, SelectionContext, Sampler, get_sampler, register
from salis.acquisition.samplers import coreset as _coreset  # noqa: F401  (registers built-ins)
from salis.acquisition.samplers import learning_loss as _learning_loss  # noqa: F401
from salis.acquisition.samplers import mc_dropout as _mc_dropout  # noqa: F401
from salis.acquisition.samplers import tsp as _tsp  # noqa: F401
from salis.acquisition.samplers import uncertainty as _uncertainty  # noqa: F401

__all__ = ["SAMPLERS", "SelectionContext", "Sampler", "get_sampler", "register"]
