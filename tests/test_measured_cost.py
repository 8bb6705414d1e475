"""Measured annotation times against the cost model (issue 23, salis.analysis.measured_cost)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from salis.analysis.measured_cost import fit_terms, measured_costs, render, store_rows
from salis.errors import ParamsError, SalisError
from salis.loop.pricing import cost_model
from salis.params import AnnotationParams, CostParams, parse_params
from support import tiny


def test_the_fit_recovers_exact_terms_and_never_goes_negative():
    n = np.array([1, 2, 3, 5, 8])
    assert fit_terms(n, 12.0 * n + 4.0) == pytest.approx((12.0, 4.0))
    # times falling with the instance count: a negative slope is not a cost, so it is 0 and the
    # per-image term is the mean time
    per_instance, per_image = fit_terms(np.array([1, 2, 3]), np.array([30.0, 20.0, 10.0]))
    assert per_instance == 0.0 and per_image == pytest.approx(20.0)


def _rows(times: list[float | None], instances: list[int], label_type: str = "mask") -> pd.DataFrame:
    return pd.DataFrame({"image_id": range(len(times)), "label_type": label_type, "instances": instances,
                         "annotation_seconds": [np.nan if t is None else t for t in times]})


def test_measured_against_model_per_type_and_a_fit_only_from_enough_timed_images():
    rows = pd.concat([
        _rows([50.0, 90.0, 130.0, None], [1, 2, 3, 4], "mask"),  # 40 s per instance + 10 s per image
        _rows([5.0, 7.0], [2, 3], "point"),
    ], ignore_index=True)
    model = {"mask": 79.0, "point": 2.4}
    costs = {c.label_type: c for c in measured_costs(rows, lambda r: model[r["label_type"]] * r["instances"], min_images=3)}
    mask = costs["mask"]
    assert (mask.images, mask.timed, mask.instances, mask.measured_seconds) == (4, 3, 6, 270.0)
    assert mask.model_seconds == pytest.approx(79.0 * 6)  # the untimed image is left out of both sides
    assert mask.fit == pytest.approx((40.0, 10.0))
    assert costs["point"].fit is None and costs["point"].why_no_fit == "2 timed images, 3 needed to fit"
    lines = render(list(costs.values()))
    assert lines[1].split()[:7] == ["mask", "4", "3", "90.0", "158.0", "0.57", "45.0"]
    assert "none: 2 timed images, 3 needed to fit" in lines[2]


def test_equal_instance_counts_cannot_separate_the_terms():
    rows = _rows([20.0, 22.0, 21.0], [2, 2, 2])
    (c,) = measured_costs(rows, lambda r: 0.0, min_images=3)
    assert c.fit is None and "cannot be told apart" in c.why_no_fit
    # a model pricing them at nothing has no ratio to show
    assert render([c])[1].split()[:7] == ["mask", "3", "3", "21.0", "0.0", "-", "10.5"]


def _store(times: list[float | None], instances: list[int], label_type: str = "mask") -> dict:
    """A label store: image i holds instances[i] annotations, timed times[i] (None: untimed)."""
    images, annotations = [], []
    for i, (t, n) in enumerate(zip(times, instances)):
        images.append({"id": i, "label_type": label_type} | ({} if t is None else {"annotation_seconds": t}))
        annotations += [{"id": len(annotations) + 1, "image_id": i, "category_id": 1} for _ in range(n)]
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "nucleus"}]}


def test_measured_source_prices_timed_images_by_their_time_and_the_rest_by_the_fitted_terms():
    measured = CostParams(source="measured", measured_min_images=3)
    store = _store([50.0, 90.0, 130.0, None], [1, 2, 3, 4])  # 40 s per instance + 10 s per image
    model = cost_model(measured, store)
    assert model.fitted == {"mask": pytest.approx((40.0, 10.0))}
    assert model.image_seconds(2, 1, "mask", {"annotation_seconds": 77.0}) == 77.0  # its own time
    assert model.image_seconds(4, 1, "mask", {}) == pytest.approx(170.0)  # untimed: 40 x 4 + 10
    assert model.estimated_image_seconds(2.5, 1, "mask") == pytest.approx(110.0)  # hour budgets
    assert model.predicted_image_seconds(1.0, 1, "mask", np.zeros(0), AnnotationParams()) == pytest.approx(50.0)
    # a type with too few timed images is refused in one line, naming what is missing
    with pytest.raises(SalisError, match=r"no fitted cost for point labels \(0 timed images, 3 needed to fit\)"):
        model.image_seconds(2, 1, "point", {})
    # model source: the params' terms, times or not
    assert cost_model(CostParams(), store).image_seconds(2, 1, "mask", {"annotation_seconds": 77.0}) == 79.0 * 2 + 1


def test_an_untimed_or_null_time_never_enters_the_fit():
    store = _store([50.0, 90.0, 130.0, None], [1, 2, 3, 40])
    store["images"][3]["annotation_seconds"] = None  # Label Studio's lead_time null: not timed
    model = cost_model(CostParams(source="measured", measured_min_images=3), store)
    assert model.fitted["mask"] == pytest.approx((40.0, 10.0))
    rows = store_rows(store, {0: 1, 1: 2, 2: 3, 3: 40})
    assert rows["annotation_seconds"].isna().tolist() == [False, False, False, True]


def test_measured_source_needs_human_labels_and_two_images_to_fit():
    base = {"oracle": "human", "cost": {"source": "measured"}}
    assert parse_params(tiny(**base)).cost.source == "measured"
    with pytest.raises(ParamsError, match="only human labels carry"):
        parse_params(tiny(cost={"source": "measured"}))
    with pytest.raises(ParamsError, match=r"cost.measured_min_images must be in \[2, 100000\]"):
        parse_params(tiny(**base | {"cost": {"source": "measured", "measured_min_images": 1}}))
