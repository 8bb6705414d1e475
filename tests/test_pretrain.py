"""Stage `pretrain`: a self-supervised backbone from the unlabeled pool that init_model starts from."""

import json

import numpy as np
import pytest
import torch
from lightly.transforms.utils import IMAGENET_NORMALIZE

from salis.artifacts.layout import Layout
from salis.data.prepared import PreparedData
from salis.errors import ParamsError, SalisError
from salis.model.build import seeded_model
from salis.model.resnets import resnet_body
from salis.model.checkpoint import load_checkpoint
from salis.params import PretrainParams, parse_params
from salis.pretrain.methods import METHODS
from salis.pretrain.train import epoch_batches, pretrain_body
from support import SMALL, run_stage, tiny

# one short epoch of 32-pixel views: seconds on a CPU
QUICK = {"enabled": True, "epochs": 2, "batch_size": 4, "image_size": 32}


def _params(**pretrain):
    return parse_params(tiny(pretrain={**QUICK, **pretrain}))


@pytest.mark.parametrize(("change", "words"), [
    ({"method": "mae"}, "pretrain.method"),
    ({"epochs": 0}, "pretrain.epochs must be >= 1"),
    ({"batch_size": 1}, "pretrain.batch_size must be >= 2"),
    ({"image_size": 16}, "pretrain.image_size must lie in [32, 1024]"),
    ({"min_scale": 0.0}, "pretrain.min_scale"),
    ({"vflip": 1.5}, "pretrain.vflip is a probability"),
    ({"lr": float("nan")}, "pretrain.lr"),
])
def test_bad_pretrain_params_are_one_line_before_work(change, words):
    with pytest.raises(ParamsError, match=r"^params.yaml: .*") as err:
        parse_params(tiny(pretrain={**QUICK, **change}))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_pretraining_and_local_weights_together_are_refused():
    with pytest.raises(ParamsError, match="pretrain.enabled and model.weights are both set"):
        parse_params(tiny(pretrain=QUICK, model={**tiny()["model"], "weights": "resnet18.pth"}))


def test_epochs_are_shuffled_batches_without_a_lone_last_image():
    rng = np.random.default_rng(0)
    batches = epoch_batches(list(range(10, 15)), 2, rng)
    assert [len(b) for b in batches] == [2, 2]  # 5 images: the fifth alone would break batch norm
    assert len(set(sum(batches, []))) == 4 and set(sum(batches, [])) <= set(range(10, 15))
    assert [len(b) for b in epoch_batches([1, 2, 3], 8, rng)] == [3]  # a pool under a batch: one batch
    assert epoch_batches([1], 8, rng) == []


def test_a_pool_of_fewer_than_two_images_is_one_line_before_work():
    def never(_):
        raise AssertionError("no image may be read")

    with pytest.raises(SalisError, match=r"holds 1 image\(s\); self-supervised pretraining needs at least 2"):
        pretrain_body(never, [7], PretrainParams(**QUICK), "resnet18", torch.device("cpu"))


def test_views_are_normalised_as_the_detector_normalises_images():
    model = seeded_model(SMALL, 2, seed=0)
    assert list(model.transform.image_mean) == IMAGENET_NORMALIZE["mean"]
    assert list(model.transform.image_std) == IMAGENET_NORMALIZE["std"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_the_body_and_only_the_body_is_kept(method):
    rng = np.random.default_rng(0)
    images = {i: rng.integers(0, 255, (48, 40, 3), dtype=np.uint8) for i in range(6)}
    result = pretrain_body(images.__getitem__, list(images), PretrainParams(**QUICK, method=method), "resnet18",
                           torch.device("cpu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # pretrain.seed 0 draws the same initial body
        initial = resnet_body("resnet18").state_dict()
    assert set(result.body_state) == {k for k in initial if not k.startswith("fc.")}
    assert not torch.equal(result.body_state["layer4.1.conv2.weight"], initial["layer4.1.conv2.weight"])
    assert result.steps == 2 * 2 and len(result.epoch_losses) == 2  # 6 images in 4s: batches of 4 and 2
    assert all(np.isfinite(result.epoch_losses))


def test_the_stage_reads_the_pool_only_and_init_model_loads_its_body(tmp_path, monkeypatch):
    params = _params()
    layout = Layout(tmp_path)
    run_stage("prepare", params, layout)
    prepared = PreparedData(layout.prepared)
    read: set[int] = set()
    load = PreparedData.load_image
    monkeypatch.setattr(PreparedData, "load_image", lambda self, i: (read.add(int(i)), load(self, i))[1])
    run_stage("pretrain", params, layout)
    assert read and read <= set(prepared.pool_ids()) and not read & set(prepared.test_ids())

    summary = json.loads(layout.pretrain_summary.read_text())
    assert summary["enabled"] and summary["method"] == "simsiam" and summary["images"] == len(prepared.pool_ids())
    assert summary["healthy_output_std"] == pytest.approx(128 ** -0.5, abs=1e-6)  # SimSiam's 128-d projection
    assert len(summary["epoch_output_std"]) == 2 and all(0 <= x <= 1 for x in summary["epoch_output_std"])
    assert json.loads(layout.pretrain_metrics.read_text())["seconds"] > 0
    body = torch.load(layout.pretrained_backbone, weights_only=True)

    run_stage("init_model", params, layout)
    state = load_checkpoint(layout.model(0))["state_dict"]
    assert all(torch.equal(state["backbone.body." + k], v) for k, v in body.items())
    random_init = seeded_model(params.model, len(prepared.categories), params.seed).state_dict()
    heads = [k for k in state if not k.startswith("backbone.body.")]
    assert heads and all(torch.equal(state[k], random_init[k]) for k in heads)  # FPN and heads: the seed's


def test_the_same_params_pretrain_the_same_bytes(tmp_path):
    params = _params(epochs=1)
    outputs = []
    for run in ("a", "b"):
        layout = Layout(tmp_path / run)
        run_stage("prepare", params, layout)
        run_stage("pretrain", params, layout)
        outputs.append((layout.pretrained_backbone.read_bytes(), layout.pretrain_summary.read_bytes()))
    assert outputs[0] == outputs[1]


def test_disabled_it_writes_a_summary_and_init_model_starts_from_the_seed(tmp_path):
    params = parse_params(tiny())
    layout = Layout(tmp_path)
    run_stage("prepare", params, layout)
    run_stage("pretrain", params, layout)
    assert json.loads(layout.pretrain_summary.read_text()) == {"enabled": False}
    assert not layout.pretrained_backbone.exists()
    run_stage("init_model", params, layout)
    state = load_checkpoint(layout.model(0))["state_dict"]
    classes = len(PreparedData(layout.prepared).categories)
    seeded = seeded_model(params.model, classes, params.seed).state_dict()
    assert all(torch.equal(state[k], seeded[k]) for k in seeded)


def test_init_model_without_the_pretrained_backbone_is_one_line(tmp_path):
    params = _params()
    layout = Layout(tmp_path)
    run_stage("prepare", params, layout)
    with pytest.raises(SalisError, match="holds no pretrained backbone: run the pretrain stage first"):
        run_stage("init_model", params, layout)
