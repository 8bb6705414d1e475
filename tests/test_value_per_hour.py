"""Value-per-hour selection: forecasts from detections, the re-ordering, and hours spent by forecast."""

import numpy as np
import pandas as pd
import pytest

from salis.acquisition.samplers import get_sampler
from salis.annotation.cost import CostModel
from salis.artifacts.tables import INSTANCES, write_table
from salis.errors import SalisError
from salis.loop.budget import CycleBudget, batch_forecast, spend_forecast_hours
from salis.loop.cycle import add_labeled, empty_labeled, selected_frame
from salis.loop.selection import select_batch
from salis.loop.value_per_hour import DetectionForecast, per_hour_order, predicted_seconds
from salis.params import AnnotationParams

# image 1: three detections (two worth pre-annotating), image 2: one, image 3: none
DETECTIONS = [(1, 0.9, 0.9), (1, 0.6, 0.6), (1, 0.2, 0.1), (2, 0.5, 0.3)]


def instances_file(path, detections=DETECTIONS):
    columns = {field.name: [] for field in INSTANCES.schema}
    for det, (image_id, score, mask_iou) in enumerate(detections):
        row = dict.fromkeys(columns, 0.0) | {"image_id": image_id, "det": det, "category_id": 1, "score": score,
                                             "mask_iou": mask_iou, "area": None, "height": 64, "width": 64, "rle": None}
        for name in columns:
            columns[name].append(row[name])
    write_table(path, pd.DataFrame(columns), INSTANCES)
    return path


def forecast(tmp_path):
    return DetectionForecast.read(instances_file(tmp_path / "instances.parquet"), [1, 2, 3], pre_annotation_score=0.5)


def test_predicted_instances_are_soft_counts_scaled_to_the_labeled_mean(tmp_path):
    f = forecast(tmp_path)
    assert f.soft_counts == pytest.approx({1: 1.7, 2: 0.5, 3: 0.0})
    # mean soft count 2.2 / 3; labeled images hold 11 on average: x 15
    assert f.predicted_instances(11.0) == pytest.approx({1: 25.5, 2: 7.5, 3: 0.0})
    assert [f.pre_mask_ious[i].tolist() for i in (1, 2, 3)] == [pytest.approx([0.9, 0.6]), pytest.approx([0.3]), []]
    nothing = DetectionForecast({1: 0.0, 2: 0.0}, {1: np.zeros(0), 2: np.zeros(0)})
    assert nothing.predicted_instances(4.0) == {1: 4.0, 2: 4.0}  # no detection anywhere: the labeled mean


def test_predicted_seconds_per_label_kind_by_hand(tmp_path):
    f, cost, annotation = forecast(tmp_path), CostModel(), AnnotationParams()
    masks = predicted_seconds(f, "mask", 11.0, 1, cost, annotation)
    assert masks == pytest.approx({1: 79 * 25.5 + 1, 2: 79 * 7.5 + 1, 3: 1.0})
    points = predicted_seconds(f, "point", 11.0, 1, cost, annotation)
    assert points == pytest.approx({1: 2.4 * 25.5 + 1, 2: 2.4 * 7.5 + 1, 3: 1.0})
    corrected = predicted_seconds(f, "correct", 11.0, 1, cost, annotation)
    # image 1: mask IoU 0.9 accepted (>= 0.85), 0.6 fixed (>= 0.5), 23.5 predicted instances drawn;
    # image 2: its one pre-annotation (0.3) deleted, 7.5 drawn; image 3: the category check only
    assert corrected == pytest.approx({1: 1.6 + 14 + 79 * 23.5 + 1, 2: 1.6 + 79 * 7.5 + 1, 3: 1.0})


def test_corrected_forecast_without_iou_heads_is_a_fix_per_instance(tmp_path):
    path = instances_file(tmp_path / "i.parquet", [(1, 0.9, float("nan"))])
    f = DetectionForecast.read(path, [1], pre_annotation_score=0.5)
    assert predicted_seconds(f, "correct", 3.0, 1, CostModel(), AnnotationParams()) == pytest.approx({1: 14 * 3 + 1})


def test_per_hour_order_divides_the_rank_utility_by_seconds():
    # utilities 1, 2/3, 1/3 -> values 0.01, 0.0667, 0.0333
    assert per_hour_order([7, 8, 9], {7: 100.0, 8: 10.0, 9: 10.0}) == [8, 9, 7]
    # equal cost: the sampler's order is kept; ties keep it too
    assert per_hour_order([3, 1, 2], {1: 5.0, 2: 5.0, 3: 5.0}) == [3, 1, 2]
    assert per_hour_order([1, 2], {1: 2.0, 2: 1.0}) == [1, 2]  # 1/2 == (1/2)/1: the tie keeps the order


def budget_of(hours: float) -> CycleBudget:
    return CycleBudget(images=0, hours=hours, mean_instances=10.0, num_categories=1, cost=CostModel())


def test_forecast_hours_stop_at_the_first_image_that_no_longer_fits():
    seconds = {"mask": {1: 10.0, 2: 20.0, 3: 10.0, 4: 1.0}}
    chosen = spend_forecast_hours([1, 2, 3, 4], AnnotationParams(), budget_of(36 / 3600), seconds.__getitem__, {})
    assert chosen == [(1, "mask"), (2, "mask")]  # 30 s spent, 3 needs 10 > 6 left


def test_forecast_hours_mixed_rank_buys_masks_then_the_cheap_type():
    seconds = {"mask": {1: 30.0, 2: 30.0, 3: 30.0, 4: 30.0}, "point": {1: 4.0, 2: 4.0, 3: 4.0, 4: 5.0}}
    policy = AnnotationParams(policy="mixed", mask_share=0.5, cheap="point")
    # 40 s for masks (one image), 40 s for points (the rest: 4 + 4 + 5)
    chosen = spend_forecast_hours([1, 2, 3, 4], policy, budget_of(80 / 3600), seconds.__getitem__, {})
    assert chosen == [(1, "mask"), (2, "point"), (3, "point"), (4, "point")]
    by_iou = AnnotationParams(policy="mixed", mask_share=0.5, cheap="point", mixed_order="mask_iou", cheap_above=0.6)
    ious = {1: 0.9, 2: 0.1, 3: 0.2, 4: 0.7}
    # 1 point (4 s), 2 mask (30 s), 3 mask does not fit (10 s left): skipped, 4 point (5 s)
    chosen = spend_forecast_hours([1, 2, 3, 4], by_iou, budget_of(80 / 3600), seconds.__getitem__, ious)
    assert chosen == [(1, "point"), (2, "mask"), (4, "point")]


def test_select_per_hour_prefers_cheap_images_and_spends_the_forecast_hours(tmp_path):
    pool = list(range(1, 21))
    ids = {1, 2, 3, 4}
    selected = selected_frame(sorted(ids), cycle=0, sampler="initial_random")
    labeled = add_labeled(empty_labeled(), selected, ids, {i: 80.0 for i in ids}, 1, "simulated_oracle")
    unlabeled = [i for i in pool if i not in ids]
    # even ids look crowded (100 confident detections), odd ones hold one
    detections = [(i, 0.9, 0.7) for i in unlabeled for _ in range(100 if i % 2 == 0 else 1)]
    path = instances_file(tmp_path / "instances.parquet", detections)
    images = pd.DataFrame({"image_id": unlabeled, "num_detections": [1] * len(unlabeled)})
    cost = CostModel()
    by_images = CycleBudget(images=4, hours=0.0, mean_instances=45.45, num_categories=1, cost=cost)
    plain = select_batch(get_sampler("random"), labeled, images, pool, by_images, 1, 0, 1, instances_path=path)
    cheap = select_batch(get_sampler("random"), labeled, images, pool, by_images, 1, 0, 1, instances_path=path,
                         per_hour=True)
    assert len(cheap) == 4 and set(cheap["image_id"]).isdisjoint(ids)
    assert all(i % 2 == 1 for i in cheap["image_id"])  # 99x dearer: utilities span 16x only
    assert not all(i % 2 == 1 for i in plain["image_id"])
    # soft counts 0.9 (odd) and 90 (even), mean 45.45 over 5..20 = the labeled mean: unscaled, odd
    # images 79 * 0.9 + 1 = 72.1 s, even 79 * 90 + 1 = 7111 s; 5 x 72.1 = 360.5 s fit in 361 s
    hours = CycleBudget(images=0, hours=361 / 3600, mean_instances=45.45, num_categories=1, cost=cost)
    spent = select_batch(get_sampler("entropy"), labeled, images.assign(mean_entropy=0.0), pool, hours, 1, 0, 1,
                         instances_path=path, per_hour=True)
    assert len(spent) == 5 and all(i % 2 == 1 for i in spent["image_id"])
    # each image carries the seconds it was priced at: its own forecast per hour, else the labeled mean's
    assert cheap["forecast_seconds"].tolist() == pytest.approx([72.1] * 4)
    assert plain["forecast_seconds"].tolist() == pytest.approx([79 * 45.45 + 1] * 4)
    assert spent["forecast_seconds"].sum() == pytest.approx(360.5)
    with pytest.raises(SalisError, match="per_hour needs the cycle's detections"):
        select_batch(get_sampler("random"), labeled, images, pool, by_images, 1, 0, 1, per_hour=True)


def test_batch_forecast_compares_a_batch_hours_with_what_it_was_priced_at():
    initial = selected_frame([1, 2], cycle=0, sampler="initial_random")
    labeled = add_labeled(empty_labeled(), initial, {1, 2}, {1: 100.0, 2: 260.0}, 1, "simulated_oracle")
    # the initial set was priced at nothing: its hours are known, the forecast is not
    assert batch_forecast(labeled, 1) == {"batch_hours": 0.1, "batch_forecast_hours": None,
                                          "batch_hours_over_forecast": None}
    batch = selected_frame([3, 4, 5], cycle=1, sampler="random", forecast_seconds=[600.0, 1200.0, 1800.0])
    # image 5 came back unlabeled (a partial import): neither its hours nor its forecast count
    labeled = add_labeled(labeled, batch, {3, 4}, {3: 1800.0, 4: 3600.0}, 2, "human")
    assert labeled.loc[labeled["image_id"] == 4, "forecast_seconds"].item() == 1200.0
    assert batch_forecast(labeled, 2) == {"batch_hours": pytest.approx(1.5), "batch_forecast_hours": pytest.approx(0.5),
                                          "batch_hours_over_forecast": pytest.approx(3.0)}
    assert batch_forecast(labeled, 3) == {"batch_hours": 0.0, "batch_forecast_hours": None,
                                          "batch_hours_over_forecast": None}
    with pytest.raises(ValueError, match="3 images but 2 forecasts"):
        selected_frame([3, 4, 5], cycle=1, sampler="random", forecast_seconds=[1.0, 2.0])
