"""The initial set's labels (select.initial_label): full masks, or boxes, asked for, labeled, priced
and trained as boxes."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from salis.artifacts.layout import Layout
from salis.artifacts.tables import LABELED, SELECTED, read_table
from salis.data.prepared import PreparedData, SimulatedOracle
from salis.errors import ParamsError
from salis.loop.labels import read_store
from salis.params import parse_params
from support import run_stage, tiny

ONE_CYCLE = {"c1": {"k": 1, "prev": 0, "next": 2}}


def test_box_labeled_initial_images_are_asked_for_priced_and_trained_as_boxes(tmp_path):
    params = parse_params(tiny(sampler="random", select={"initial": 4, "budget": 2, "initial_label": "box"},
                               cycles=ONE_CYCLE))
    layout = Layout(tmp_path)
    for stage in ("prepare", "init_model", "init"):
        run_stage(stage, params, layout)
    first = read_table(layout.selected(0), SELECTED)
    assert len(first) == 4 and (first["label_type"] == "box").all()
    request = json.loads((layout.requests(0) / "request.box.json").read_text())
    assert sorted(im["id"] for im in request["images"]) == sorted(first["image_id"])
    assert not (layout.requests(0) / "request.json").exists()  # nobody is asked for masks

    run_stage("annotate", params, layout, 1)
    labeled = read_table(layout.labeled(1), LABELED).set_index("image_id")
    assert (labeled["label_type"] == "box").all()
    prepared = PreparedData(layout.prepared)
    oracle, categories = SimulatedOracle(prepared), len(prepared.categories)
    store = read_store(layout.annotations(1))
    for image_id in first["image_id"]:
        truth = oracle.annotations(int(image_id))
        # box_seconds 7 an instance and one second a category checked, against 79 s a drawn mask
        assert labeled.loc[image_id, "seconds"] == pytest.approx(7.0 * len(truth) + 1.0 * categories)
        stored = [a for a in store["annotations"] if a["image_id"] == image_id]
        assert sorted(a["bbox"] for a in stored) == sorted(a["bbox"] for a in truth)
        assert not any(a.get("segmentation") for a in stored)  # boxes only: no mask reaches training

    for stage in ("weak_label", "pseudo_label", "train"):
        run_stage(stage, params, layout, 1)
    log = pd.read_csv(layout.train_log(1))
    assert (log["loss_mask_box"] > 0).all()  # the mask head learns through BoxInst's losses ...
    assert (log["loss_mask"] == 0).all()  # ... and from no drawn mask


def test_the_default_initial_set_is_full_masks_and_other_labels_are_refused(tmp_path):
    params = parse_params(tiny(sampler="random", cycles=ONE_CYCLE))
    layout = Layout(tmp_path)
    for stage in ("prepare", "init_model", "init"):
        run_stage(stage, params, layout)
    assert (read_table(layout.selected(0), SELECTED)["label_type"] == "mask").all()
    assert (layout.requests(0) / "request.json").is_file()
    for other in ("point", "image", "correct"):  # they need a model's detections, and none exists yet
        with pytest.raises(ParamsError, match="initial_label"):
            parse_params(tiny(select={"initial_label": other}))
