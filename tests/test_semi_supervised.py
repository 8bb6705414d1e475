"""The semi-supervised path: L = L_sup + beta * L_semi by hand, the pseudo stage's exclusion
rule, and a small in-process run that makes pseudo-labels and trains on them, twice, with
byte-identical selections and metrics (sampler tsp, a fixed thread count)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from salis.artifacts.layout import Layout
from salis.artifacts.tables import INSTANCES, LABELED, PSEUDO, PSEUDO_UNCERTAIN, read_table
from salis.engine.training import Trainer
from salis.model.build import seeded_model
from salis.params import TrainParams, parse_params
from support import SMALL, TINY, sample, tiny

def gradients(beta: float) -> tuple[list[torch.Tensor], dict[str, float]]:
    torch.manual_seed(0)  # the RPN's and RoI heads' target sampling draws from torch's generator
    model = seeded_model(SMALL, 2, seed=0).train()
    trainer = Trainer(model, TrainParams(semi_loss_weight=beta), 10, torch.device("cpu"), amp=False)
    loss, parts = trainer.losses([sample(0, False), sample(1, False)], [sample(2, True)])
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None], parts


def test_beta_scales_the_pseudo_gradient_exactly():
    g0, parts0 = gradients(0.0)
    g1, parts1 = gradients(1.0)
    gq, partsq = gradients(0.25)
    semi = sum(v for k, v in parts1.items() if k.startswith("semi_"))
    sup = sum(v for k, v in parts1.items() if not k.startswith("semi_") and k != "loss")
    assert semi > 0
    assert parts1["loss"] == pytest.approx(sup + semi, rel=1e-6)
    assert partsq["loss"] == pytest.approx(sup + 0.25 * semi, rel=1e-6)
    assert parts0["loss"] == pytest.approx(sup, rel=1e-6)
    # grad(beta) = grad(L_sup) + beta grad(L_semi): what beta = 0.25 adds is a quarter of beta = 1's
    changed = 0
    for a0, a1, aq in zip(g0, g1, gq):
        torch.testing.assert_close(aq - a0, 0.25 * (a1 - a0), rtol=1e-4, atol=1e-6)
        changed += int(not torch.equal(a1, a0))
    assert changed > 0


def run_two_cycles(root: Path) -> tuple[Layout, list[dict]]:
    """Every stage of two cycles, in process, as `dvc repro` orders them."""
    from salis.pipeline.annotate import stage_annotate
    from salis.pipeline.evaluate import stage_evaluate
    from salis.pipeline.infer_score import stage_infer_score
    from salis.pipeline.init import stage_init
    from salis.pipeline.init_model import stage_init_model
    from salis.pipeline.prepare import stage_prepare
    from salis.pipeline.pseudo_label import stage_pseudo_label
    from salis.pipeline.select import stage_select
    from salis.pipeline.train import stage_train
    from salis.pipeline.weak_label import stage_weak_label

    params, layout = parse_params(TINY), Layout(root)
    stage_prepare(params, layout)
    stage_init(params, layout)
    stage_init_model(params, layout)
    summaries = []
    for k in (1, 2):
        stage_annotate(params, layout, k)
        stage_pseudo_label(params, layout, k)
        stage_weak_label(params, layout, k)
        summaries.append(stage_train(params, layout, k))
        stage_infer_score(params, layout, k)
        stage_select(params, layout, k)
        stage_evaluate(params, layout, k)
    return layout, summaries


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[tuple[Layout, list[dict]], tuple[Layout, list[dict]]]:
    threads = torch.get_num_threads()
    try:
        return run_two_cycles(tmp_path_factory.mktemp("a")), run_two_cycles(tmp_path_factory.mktemp("b"))
    finally:
        torch.set_num_threads(threads)


def test_pseudo_labels_are_made_and_trained_on(two_runs):
    (layout, summaries), _ = two_runs
    pseudo = read_table(layout.pseudo(2), PSEUDO)
    assert len(pseudo) > 0
    next_labeled = set(read_table(layout.labeled(2), LABELED)["image_id"])
    assert not set(pseudo["image_id"]) & next_labeled  # never on an image that cycle 2 trains on as labeled
    assert "semi_loss_classifier" not in summaries[0]  # cycle 1 has no pseudo-labels yet
    assert summaries[1]["semi_loss_mask"] > 0 and summaries[1]["semi_loss_box_reg"] >= 0
    metrics = json.loads(layout.metrics(2).read_text())
    assert metrics["pseudo_instances"] == len(pseudo) and metrics["pseudo_precision"] is not None


def test_same_params_give_byte_identical_selections_and_metrics(two_runs):
    (a, _), (b, _) = two_runs
    for k in (1, 2):
        for path in (a.selected(k), a.metrics(k), a.pseudo(k), a.pseudo_gate(k), a.iou_pairs(k)):
            twin = b.root / path.relative_to(a.root)
            assert path.read_bytes() == twin.read_bytes(), path.relative_to(a.root)


def test_a_confident_background_keeps_the_labeling_models_detections_and_trains_on_them(two_runs, tmp_path):
    from salis.pipeline.pseudo_label import stage_pseudo_label
    from salis.pipeline.train import stage_train

    (layout, _), _ = two_runs
    assert read_table(layout.pseudo_uncertain(2), PSEUDO_UNCERTAIN).empty  # pseudo.background ignore
    copy = Layout(tmp_path / "copy")
    shutil.copytree(layout.root, copy.root)
    scored = read_table(copy.instances(1), INSTANCES)
    pseudo_ids = set(read_table(copy.pseudo(2), PSEUDO)["image_id"])
    threshold = float(scored[scored["image_id"].isin(pseudo_ids)]["score"].median())  # some above, some not
    params = parse_params(tiny(pseudo={"background": "confident", "background_score": threshold}))
    table = stage_pseudo_label(params, copy, 2)
    uncertain = read_table(copy.pseudo_uncertain(2), PSEUDO_UNCERTAIN)
    expected = scored[scored["image_id"].isin(set(table["image_id"])) & (scored["score"] >= threshold)]
    assert 0 < len(uncertain) < (scored["image_id"].isin(pseudo_ids)).sum()
    assert sorted(zip(uncertain["image_id"], uncertain["x"], uncertain["y"])) == sorted(
        zip(expected["image_id"], expected["x"], expected["y"]))
    summary = stage_train(params, copy, 2)
    assert summary["semi_loss_classifier"] > 0
