"""TypiClust cold start (select.initial_strategy: typical): typicality, one typical image per cluster."""

import numpy as np
import pandas as pd
import pytest

from salis.acquisition.typical import typical_selection, typicality
from salis.artifacts.layout import Layout
from salis.artifacts.tables import SELECTED, read_table
from salis.data.prepared import PreparedData
from salis.errors import ParamsError
from salis.params import parse_params
from support import run_stage, tiny


def test_typicality_is_the_inverse_mean_distance_to_the_nearest_neighbours():
    points = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert typicality(points, neighbours=1) == pytest.approx([1.0, 1.0, 1.0, 1 / 8])
    # two neighbours: 0 -> (1 + 2) / 2, 1 -> (1 + 1) / 2, 2 -> (1 + 2) / 2, 10 -> (8 + 9) / 2
    assert typicality(points, neighbours=2) == pytest.approx([2 / 3, 1.0, 2 / 3, 2 / 17])
    assert typicality(np.zeros((1, 3))) == pytest.approx([1.0])  # no neighbour at all


def _blobs() -> tuple[np.ndarray, list[int]]:
    """Three blobs (directions e0, e1, e2: the embeddings are L2-normalised), each a centre image
    and a star of images one unit away along other axes, which lie sqrt(2) from each other: the
    centre is its blob's most typical image for any K. Blob sizes 9, 5, 3."""
    vectors, ids = [], []
    for blob, arms in enumerate([4, 2, 1]):
        centre = np.zeros(12)
        centre[blob] = 10.0
        vectors.append(centre)
        ids.append(100 * blob)
        for arm in range(arms):
            for sign in (1.0, -1.0):
                point = centre.copy()
                point[3 + arm] = sign
                vectors.append(point)
                ids.append(100 * blob + len(ids) % 100)
    return np.array(vectors), ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_typical_image_per_cluster_largest_cluster_first(seed):
    vectors, ids = _blobs()
    assert typical_selection(vectors, ids, 3, np.random.default_rng(seed)) == [0, 100, 200]


def test_asking_for_the_whole_pool_returns_it():
    vectors, ids = _blobs()
    assert typical_selection(vectors[:2], ids[:2], 5, np.random.default_rng(0)) == ids[:2]


def test_the_init_stage_picks_typical_images_seeded_from_the_cycle_0_model(tmp_path):
    params = parse_params(tiny(select={"initial": 4, "budget": 2, "initial_strategy": "typical"}))
    layout = Layout(tmp_path)
    run_stage("prepare", params, layout)
    run_stage("init_model", params, layout)
    run_stage("init", params, layout)
    first = read_table(layout.selected(0), SELECTED)
    assert len(first) == 4 and first["image_id"].is_unique and (first["sampler"] == "initial_typical").all()
    assert set(first["image_id"]) <= set(PreparedData(layout.prepared).pool_ids())
    run_stage("init", params, layout)  # same params, same bytes
    pd.testing.assert_frame_equal(first, read_table(layout.selected(0), SELECTED))


def test_an_unknown_initial_strategy_is_refused():
    with pytest.raises(ParamsError, match="initial_strategy"):
        parse_params(tiny(select={"initial_strategy": "densest"}))
