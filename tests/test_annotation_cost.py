"""The annotation cost model (hand-computed values) and the label-savings comparison."""

from __future__ import annotations


import pandas as pd
import pytest

from salis.annotation.cost import CostModel, instances_per_image
from salis.errors import ParamsError
from salis.params import CostParams, parse_params


def test_defaults_are_the_literature_values():
    model = CostModel().params  # the cost params' defaults: one place
    assert model == CostParams()
    assert model.mask_seconds_per_instance == 79.0
    assert model.seconds_per_category_checked == 1.0
    assert model.box_seconds == 7.0
    assert model.point_seconds == 2.4
    assert model.image_label_seconds_per_category == 1.0
    assert model.count_seconds_per_instance == 0.8
    assert model.hourly_rate == 50.0


@pytest.mark.parametrize(
    ("kind", "instances", "categories", "seconds"),
    [
        ("mask", 3, 2, 79 * 3 + 2),  # 239 s
        ("mask", 0, 3, 3.0),  # an empty image still costs the category check
        ("box", 3, 2, 7 * 3 + 2),
        ("point", 3, 2, 2.4 * 3 + 2),
        ("image", 3, 2, 0.8 * 3 + 2.0),  # image-level labels and counts: 2 categories, 3 counted
        ("image", 0, 3, 3.0),
    ],
)
def test_image_seconds(kind, instances, categories, seconds):
    assert CostModel().image_seconds(instances, categories, kind) == pytest.approx(seconds)


def test_an_unknown_label_type_is_refused():
    with pytest.raises(ValueError, match="unknown label type 'polygon'"):
        CostModel().image_seconds(1, 1, "polygon")


def test_image_seconds_uses_the_configured_rates():
    model = CostModel(CostParams(mask_seconds_per_instance=60.0, seconds_per_category_checked=2.0))
    assert model.image_seconds(2, 3) == 126.0


def test_cost_table_one_row_per_image_sorted_by_id():
    table = CostModel().cost_table({5: 3, 2: 0, 9: 1}, num_categories=2)
    assert list(table.columns) == ["image_id", "label_type", "instances", "seconds"]
    assert table["image_id"].tolist() == [2, 5, 9]
    assert table["instances"].tolist() == [0, 3, 1]
    assert table["seconds"].tolist() == [2.0, 239.0, 81.0]


def test_cost_table_prices_each_image_by_its_label_type():
    table = CostModel().cost_table({1: 3, 2: 3, 3: 3}, num_categories=2, label_types={2: "point", 3: "box"})
    assert table["label_type"].tolist() == ["mask", "point", "box"]
    assert table["seconds"].tolist() == pytest.approx([239.0, 2.4 * 3 + 2, 7 * 3 + 2])


def test_cumulative_hours_and_money_per_cycle():
    costs = pd.DataFrame({"cycle": [1, 1, 2, 4], "seconds": [3600.0, 1800.0, 1800.0, 3600.0]})
    out = CostModel(CostParams(hourly_rate=30.0)).cumulative_hours_and_money(costs, cycles=[1, 2, 3, 4])
    assert out["cycle"].tolist() == [1, 2, 3, 4]
    assert out["images"].tolist() == [2, 1, 0, 1]  # cycle 3 added nothing but keeps a row
    assert out["annotation_hours"].tolist() == pytest.approx([1.5, 0.5, 0.0, 1.0])
    assert out["cumulative_annotation_hours"].tolist() == pytest.approx([1.5, 2.0, 2.0, 3.0])
    assert out["money"].tolist() == pytest.approx([45.0, 15.0, 0.0, 30.0])
    assert out["cumulative_money"].tolist() == pytest.approx([45.0, 60.0, 60.0, 90.0])


def test_cost_table_feeds_the_cumulative_totals():
    model = CostModel(CostParams(hourly_rate=36.0))
    table = model.cost_table({1: 3, 2: 1}, num_categories=2)  # 239 s + 81 s = 320 s
    table["cycle"] = 1
    out = model.cumulative_hours_and_money(table)
    assert out["cumulative_annotation_hours"].tolist() == pytest.approx([320 / 3600])
    assert out["cumulative_money"].tolist() == pytest.approx([3.2])


@pytest.mark.parametrize(
    "kwargs",
    [{"mask_seconds_per_instance": -1.0}, {"hourly_rate": float("nan")}, {"box_seconds": True}, {"point_seconds": "2"}],
)
def test_bad_cost_params_are_refused(kwargs):
    with pytest.raises(ParamsError, match=f"cost.{next(iter(kwargs))}"):
        parse_params({"cost": kwargs})


def test_instances_per_image_counts_zeros_and_ignores_other_images():
    anns = [{"image_id": 1}, {"image_id": 1}, {"image_id": 3}, {"image_id": 7}]
    assert instances_per_image(anns, [1, 2, 3]) == {1: 2, 2: 0, 3: 1}
