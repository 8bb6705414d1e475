"""select.aggregation: each way of turning detections into an image score, on hand-built tables."""

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from salis.errors import SalisError
from salis.params import SelectParams, parse_params
from salis.acquisition.samplers import get_sampler
from salis.acquisition.samplers.aggregate import InstanceAggregator, aggregate_instances, resolve
from salis.artifacts.tables import INSTANCE_SCHEMA
from support import selection_context


def test_aggregate_hand_values():
    agg = InstanceAggregator()
    agg.add(np.array([1, 1, 2]), np.array([0.2, 0.6, 0.7]))
    ids = [1, 2, 3]  # 3: no detection
    assert agg.result(ids, "mean")[:2] == pytest.approx([0.4, 0.7])
    assert agg.result(ids, "min")[:2] == pytest.approx([0.2, 0.7])
    assert agg.result(ids, "max")[:2] == pytest.approx([0.6, 0.7])
    # population std 0.2 for image 1; one value: exp(0) * 0.7
    assert agg.result(ids, "tsp")[:2] == pytest.approx([math.exp(-0.2) * 0.4, 0.7])
    assert math.isnan(agg.result(ids, "mean")[2])


def write_table(path, rows: list[tuple[int, float, float]], row_group_size: int = 1) -> None:
    """rows: (image_id, entropy, class score); boxes and masks IoU 0.5."""
    n = len(rows)
    table = {name: [0.0] * n for name in INSTANCE_SCHEMA.names}
    table.update({
        "image_id": [r[0] for r in rows], "det": list(range(n)), "category_id": [1] * n,
        "entropy": [r[1] for r in rows], "score": [r[2] for r in rows], "box_iou": [0.5] * n,
        "mask_iou": [0.5] * n, "area": [1] * n, "height": [4] * n, "width": [4] * n, "rle": ["0"] * n,
    })
    pq.write_table(pa.table(table, schema=INSTANCE_SCHEMA), path, row_group_size=row_group_size)


ROWS = [(1, 0.1, 0.9), (2, 0.8, 0.5), (1, 0.5, 0.6), (2, 0.2, 0.7), (1, 0.3, 0.9), (4, 0.6, 0.8)]
# image 1: entropies .1 .5 .3 (mean .3, min .1, max .5, std sqrt(8/300)); 2: .8 .2; 3: none; 4: .6


@pytest.mark.parametrize("group", [1, 2, 100])
def test_streamed_aggregation_matches_hand_values_whatever_the_row_groups(tmp_path, group):
    path = tmp_path / "i.parquet"
    write_table(path, ROWS, row_group_size=group)
    ids = [1, 2, 3, 4]
    got = {how: aggregate_instances(path, ids, how, ["entropy"]) for how in ("mean", "min", "max", "tsp")}
    assert got["mean"][[0, 1, 3]] == pytest.approx([0.3, 0.5, 0.6])
    assert got["min"][[0, 1, 3]] == pytest.approx([0.1, 0.2, 0.6])
    assert got["max"][[0, 1, 3]] == pytest.approx([0.5, 0.8, 0.6])
    std1 = math.sqrt(((0.1 - 0.3) ** 2 + (0.5 - 0.3) ** 2 + 0.0) / 3)
    assert got["tsp"][[0, 1, 3]] == pytest.approx([math.exp(-std1) * 0.3, math.exp(-0.3) * 0.5, 0.6])
    assert all(np.isnan(values[2]) for values in got.values())  # image 3 has no detection


def test_aggregator_merges_partial_tables_exactly():
    agg = InstanceAggregator()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=4000)
    values = rng.random(4000)
    for start in range(0, 4000, 37):  # more batches than it keeps before merging
        agg.add(ids[start:start + 37], values[start:start + 37])
    frame = pd.DataFrame({"i": ids, "v": values}).groupby("i")["v"]
    wanted = np.arange(50)
    assert agg.result(wanted, "max") == pytest.approx(frame.max().reindex(wanted).to_numpy())
    assert agg.result(wanted, "mean") == pytest.approx(frame.mean().reindex(wanted).to_numpy())
    expected_tsp = (np.exp(-frame.std(ddof=0)) * frame.mean()).reindex(wanted).to_numpy()
    assert agg.result(wanted, "tsp") == pytest.approx(expected_tsp)


def sampler(name: str, aggregation: str):
    return get_sampler(name, SelectParams(aggregation=aggregation))


def test_entropy_sampler_follows_the_aggregation(tmp_path):
    path = tmp_path / "i.parquet"
    write_table(path, ROWS)
    images = pd.DataFrame({"image_id": [1, 2, 3, 4], "mean_entropy": [0.3, 0.5, float("nan"), 0.6]})
    # 3 (no detection: log 3) first; mean: .6 (4) > .5 (2) > .3 (1)
    assert sampler("entropy", "default").rank(selection_context(images, path, num_classes=2)) == [3, 4, 2, 1]
    assert sampler("entropy", "mean").rank(selection_context(images, path, num_classes=2)) == [3, 4, 2, 1]
    assert sampler("entropy", "max").rank(selection_context(images, path, num_classes=2)) == [3, 2, 4, 1]  # .8 > .6 > .5
    assert sampler("entropy", "min").rank(selection_context(images, path, num_classes=2)) == [3, 4, 2, 1]  # .6 > .2 > .1


def test_tsp_sampler_accepts_another_aggregation(tmp_path):
    path = tmp_path / "i.parquet"
    write_table(path, ROWS)
    images = pd.DataFrame({"image_id": [1, 2, 3, 4]})
    # instance scores s = exp(-std(c, .5, .5)) * mean(c, .5, .5); class scores: 1: .9 .6 .9, 2: .5 .7, 4: .8
    s = lambda c: math.exp(-np.std([c, 0.5, 0.5])) * np.mean([c, 0.5, 0.5])  # noqa: E731
    scores = sampler("tsp", "min").score(selection_context(images, path, num_classes=2))
    assert scores == pytest.approx([s(0.6), s(0.5), 0.0, s(0.8)])  # no detection: S = 0
    assert sampler("tsp", "min").rank(selection_context(images, path, num_classes=2)) == [3, 2, 1, 4]


def test_beta_iou_reads_the_image_mean_by_default_and_streams_otherwise(tmp_path):
    path = tmp_path / "i.parquet"
    write_table(path, ROWS)
    images = pd.DataFrame({"image_id": [1, 2], "mean_mask_iou": [0.9, 0.1]})  # disagrees with the table on purpose
    assert sampler("beta_iou", "default").score(selection_context(images, path, num_classes=2)) == pytest.approx([0.4, 0.4])  # |.9 - .5|, |.1 - .5|
    assert sampler("beta_iou", "max").score(selection_context(images, path, num_classes=2)) == pytest.approx([0.0, 0.0])  # every mask IoU is .5


def test_unknown_aggregation_is_refused():
    with pytest.raises(SalisError, match="select.aggregation"):
        resolve("median", "mean")
    with pytest.raises(SalisError, match=r"select\.aggregation must be one of 'default', 'mean'"):
        parse_params({"select": {"aggregation": "median"}})


def test_min_score_leaves_low_confidence_detections_out_of_the_image_score(tmp_path):
    path = tmp_path / "i.parquet"
    write_table(path, ROWS)
    images = pd.DataFrame({"image_id": [1, 2, 3, 4], "mean_entropy": [0.3, 0.5, float("nan"), 0.6]})
    # class scores >= .75 keep image 1's entropies .1 and .3 (mean .2), none of image 2's
    # (.5, .7), and image 4's .6: image 2 now counts as having no detection (log 3)
    strict = get_sampler("entropy", SelectParams(min_score=0.75))
    assert strict.score(selection_context(images, path, num_classes=2)) == pytest.approx([0.2, math.log(3), math.log(3), 0.6])
    # the image table's precomputed mean holds every detection: it is not used then
    assert sampler("entropy", "mean").score(selection_context(images, path, num_classes=2)) == pytest.approx([0.3, 0.5, math.log(3), 0.6])
    tsp = get_sampler("tsp", SelectParams(min_score=0.75)).score(selection_context(images, path, num_classes=2))
    s = lambda c: math.exp(-np.std([c, 0.5, 0.5])) * np.mean([c, 0.5, 0.5])  # noqa: E731
    assert tsp[1] == 0.0 and tsp[3] == pytest.approx(s(0.8))  # image 2: no detection left, S = 0
