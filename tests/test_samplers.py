import math

import numpy as np
import pandas as pd
import pytest

from salis.errors import SalisError
from salis.acquisition.samplers import SAMPLERS, SelectionContext, get_sampler
from salis.acquisition.samplers.base import ScoreSampler, register


def context(images: pd.DataFrame, seed: int = 0, num_classes: int = 2) -> SelectionContext:
    return SelectionContext(images, None, frozenset(), np.random.default_rng(seed), num_classes)


def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [10, 11, 12, 13, 14],
            "num_detections": [3, 0, 2, 5, 1],
            "mean_entropy": [0.2, float("nan"), 0.9, 0.5, 0.9],
        }
    )


def test_entropy_ranks_highest_first_and_empty_images_as_most_uncertain():
    ranked = get_sampler("entropy").rank(context(table()))
    # NaN (no detection) -> log(3) = 1.0986 > 0.9 (ids 12, 14 tied) > 0.5 > 0.2
    assert ranked[0] == 11
    assert set(ranked[1:3]) == {12, 14}
    assert ranked[3:] == [13, 10]
    assert get_sampler("entropy").select(context(table()), 2)[0] == 11


def test_entropy_of_empty_image_equals_uniform_posterior_entropy():
    scores = get_sampler("entropy").score(context(table(), num_classes=2))
    assert scores[1] == pytest.approx(math.log(3))


def test_random_is_seeded_and_a_permutation():
    a = get_sampler("random").rank(context(table(), seed=7))
    b = get_sampler("random").rank(context(table(), seed=7))
    assert a == b and sorted(a) == [10, 11, 12, 13, 14]
    assert any(get_sampler("random").rank(context(table(), seed=s)) != a for s in range(8, 12))


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(SalisError, match=r"unknown sampler 'tsp2'.*valid: .*entropy.*random"):
        get_sampler("tsp2")


def test_a_new_sampler_plugs_in_through_the_registry():
    @register("test_fewest_detections")
    class Fewest(ScoreSampler):
        highest_first = False

        def score(self, ctx):
            return ctx.images["num_detections"].to_numpy()

    try:
        assert get_sampler("test_fewest_detections").select(context(table()), 3) == [11, 14, 12]
    finally:
        SAMPLERS.pop("test_fewest_detections")


def test_sampler_that_drops_images_is_refused():
    @register("test_broken")
    class Broken(ScoreSampler):
        def rank(self, ctx):
            return [10]

        def score(self, ctx):  # pragma: no cover - rank is overridden
            return np.zeros(len(ctx.images))

    try:
        with pytest.raises(SalisError, match="exactly once"):
            get_sampler("test_broken").select(context(table()), 1)
    finally:
        SAMPLERS.pop("test_broken")
