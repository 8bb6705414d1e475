"""Learning loss: ranking loss and per-image loss terms by hand, the detector's batch losses
unchanged, gradient stopping, inference output, training loop and the sampler."""

import dataclasses
import math

import pandas as pd
import pytest
import torch
from torchvision.models.detection.roi_heads import fastrcnn_loss, maskrcnn_loss

from salis.errors import SalisError
from salis.model.build import seeded_model
from salis.model.learning_loss import (
    batch_mean,
    fastrcnn_loss_terms,
    maskrcnn_loss_terms,
    per_image,
    ranking_loss,
    rpn_loss_terms,
    stop_loss_prediction_gradient,
)
from salis.params import TrainParams
from salis.acquisition.samplers import get_sampler
from salis.engine.datasets import Sample
from salis.engine.training import train_model
from support import SMALL, selection_context

SMALL = dataclasses.replace(SMALL, learning_loss=True, learning_loss_channels=8)  # with the loss-prediction module


def test_ranking_loss_hand_values():
    target = torch.tensor([2.0, 1.0])
    # right order, gap 1 >= margin 1: no loss; wrong order: -(0 - 1) + 1 = 2
    assert ranking_loss(torch.tensor([1.0, 0.0]), target, 1.0).item() == pytest.approx(0.0)
    assert ranking_loss(torch.tensor([0.0, 1.0]), target, 1.0).item() == pytest.approx(2.0)
    # three images: pairs (0,1): max(0, -(.5-0)+1) = .5; (0,2): targets equal -> skipped;
    # (1,2): sign(1-3) = -1: max(0, (0-.2)+1) = .8  -> mean .65
    three = ranking_loss(torch.tensor([0.5, 0.0, 0.2]), torch.tensor([3.0, 1.0, 3.0]), 1.0)
    assert three.item() == pytest.approx(0.65)
    lone = torch.tensor([0.3], requires_grad=True)
    zero = ranking_loss(lone, torch.tensor([1.0]), 1.0)
    assert zero.item() == 0.0 and zero.requires_grad  # no pair: 0, still in the graph


def test_rpn_terms_hand_values():
    # two images, three anchors each; logits 0 -> BCE log 2 per sampled anchor
    objectness = torch.zeros(6, 1)
    deltas = torch.zeros(6, 4)
    deltas[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # image 0's positive: smooth-L1(1, beta 1/9) = 1 - 1/18
    labels = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 0.0])]
    targets = [torch.zeros(3, 4), torch.zeros(3, 4)]
    pos = [torch.tensor([1, 0, 0], dtype=torch.uint8), torch.tensor([0, 0, 0], dtype=torch.uint8)]
    neg = [torch.tensor([0, 1, 0], dtype=torch.uint8), torch.tensor([1, 1, 1], dtype=torch.uint8)]
    obj, box, counts = rpn_loss_terms(objectness, deltas, labels, targets, pos, neg)
    assert counts.tolist() == [2.0, 3.0]
    assert obj.tolist() == pytest.approx([2 * math.log(2), 3 * math.log(2)])
    assert box.tolist() == pytest.approx([1 - 1 / 18, 0.0])
    assert per_image(obj + box, counts).tolist() == pytest.approx([math.log(2) + (1 - 1 / 18) / 2, math.log(2)])
    # the batch reduction is torchvision's: mean BCE over the 5 sampled anchors, box sum / 5
    assert batch_mean(obj, counts).item() == pytest.approx(math.log(2))
    assert batch_mean(box, counts).item() == pytest.approx((1 - 1 / 18) / 5)


def test_roi_terms_reduce_to_torchvisions_losses_for_the_batch_and_for_each_image():
    g = torch.Generator().manual_seed(0)
    labels = [torch.tensor([1, 0, 2, 0]), torch.tensor([0, 2])]
    reg_targets = [torch.randn(4, 4, generator=g), torch.randn(2, 4, generator=g)]
    logits, regression = torch.randn(6, 3, generator=g), torch.randn(6, 12, generator=g)
    cls, box, n = fastrcnn_loss_terms(logits, regression, labels, reg_targets)
    batch = fastrcnn_loss(logits, regression, labels, reg_targets)
    assert batch_mean(cls, n).item() == pytest.approx(batch[0].item())
    assert batch_mean(box, n).item() == pytest.approx(batch[1].item())
    alone = fastrcnn_loss(logits[4:], regression[4:], labels[1:], reg_targets[1:])
    assert per_image(cls + box, n)[1].item() == pytest.approx(sum(alone).item())

    gt_masks = [torch.zeros(1, 16, 16), torch.zeros(2, 16, 16)]
    gt_masks[0][0, :8] = 1
    gt_masks[1][1, :, :8] = 1
    rois = [torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([[0.0, 0.0, 8.0, 16.0], [0.0, 0.0, 16.0, 16.0]])]
    gt_labels = [torch.tensor([1]), torch.tensor([1, 2])]
    matched = [torch.tensor([0]), torch.tensor([1, 0])]
    mask_logits = torch.randn(3, 3, 4, 4, generator=g)
    mask, pixels = maskrcnn_loss_terms(mask_logits, rois, gt_masks, gt_labels, matched)
    assert pixels.tolist() == [16.0, 32.0]
    assert batch_mean(mask, pixels).item() == pytest.approx(maskrcnn_loss(mask_logits, rois, gt_masks, gt_labels, matched).item())
    alone = maskrcnn_loss(mask_logits[:1], rois[:1], gt_masks[:1], gt_labels[:1], matched[:1])
    assert per_image(mask, pixels)[0].item() == pytest.approx(alone.item())


def _target(positive_only: bool, top: int = 8) -> dict:
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, top:40, 8:40] = 1
    return {"boxes": torch.tensor([[8.0, float(top), 40.0, 40.0]]), "labels": torch.tensor([1]),
            "masks": masks, "positive_only": torch.tensor(positive_only)}


def _images(n: int) -> list[torch.Tensor]:
    return [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(n)]


def test_detector_losses_are_unchanged_and_the_ranking_loss_is_added():
    targets = [_target(False), _target(False, top=20), _target(True)]
    plain = seeded_model(dataclasses.replace(SMALL, learning_loss=False), 2, seed=0).train()
    with_module = seeded_model(SMALL, 2, seed=0).train()
    torch.manual_seed(3)
    expected = plain(_images(3), targets)
    torch.manual_seed(3)  # the same anchors and RoIs are sampled
    losses = with_module(_images(3), targets)
    assert set(losses) == set(expected) | {"loss_learning_loss"}
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value.item(), rel=1e-5), name
    assert torch.isfinite(losses["loss_learning_loss"])
    # a batch of pseudo-labeled images only has nothing to rank
    pseudo = with_module(_images(2), [_target(True), _target(True, top=20)])
    assert pseudo["loss_learning_loss"].item() == 0.0


def _grad_norms(model) -> tuple[float, float]:
    backbone = sum(float(p.grad.abs().sum()) for p in model.backbone.parameters() if p.grad is not None)
    module = sum(float(p.grad.abs().sum()) for p in model.roi_heads.loss_prediction.parameters() if p.grad is not None)
    return backbone, module


def test_the_ranking_loss_stops_reaching_the_backbone_when_told():
    model = seeded_model(dataclasses.replace(SMALL, learning_loss_margin=10.0), 2, seed=0).train()
    targets = [_target(False), _target(False, top=20)]
    torch.manual_seed(0)
    model(_images(2), targets)["loss_learning_loss"].backward()
    backbone, module = _grad_norms(model)
    assert backbone > 0 and module > 0
    model.zero_grad(set_to_none=True)
    stop_loss_prediction_gradient(model, True)
    torch.manual_seed(0)
    model(_images(2), targets)["loss_learning_loss"].backward()
    backbone, module = _grad_norms(model)
    assert backbone == 0 and module > 0


def test_inference_reports_a_predicted_loss_per_image_only_with_the_module():
    with torch.no_grad():
        out = seeded_model(SMALL, 2, seed=0).eval()(_images(2))
        plain = seeded_model(dataclasses.replace(SMALL, learning_loss=False), 2, seed=0).eval()(_images(1))
    assert all(o["predicted_loss"].shape == () and torch.isfinite(o["predicted_loss"]) for o in out)
    assert "predicted_loss" not in plain[0]


def test_training_logs_the_ranking_loss_and_releases_the_gradient_stop():
    samples = []
    for i, top in enumerate((8, 16, 24, 30)):
        t = _target(False, top)
        image = (torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(i)) * 255).to(torch.uint8).numpy()
        samples.append(Sample(i, image, t["boxes"].numpy(), t["labels"].numpy(), t["masks"].numpy()))
    model = seeded_model(SMALL, 2, seed=0)
    params = TrainParams(min_iterations=2, max_iterations=2, batch_size=2, warmup_iterations=1, learning_loss_stop_grad_after=0.5)
    summary = train_model(model, samples, [], params, seed=0, device=torch.device("cpu"), amp=False, log_every=1)
    assert "loss_learning_loss" in summary
    assert model.roi_heads.loss_prediction.detach_input is False  # the stop is for training only


def test_learning_loss_sampler_picks_the_highest_predicted_loss():
    images = pd.DataFrame({"image_id": [5, 6, 7, 8], "predicted_loss": [0.3, 1.2, -0.4, 0.9]})
    assert get_sampler("learning_loss").select(selection_context(images), 2) == [6, 8]
    assert get_sampler("learning_loss").rank(selection_context(images)) == [6, 8, 5, 7]


def test_learning_loss_sampler_refuses_scores_without_a_predicted_loss():
    images = pd.DataFrame({"image_id": [5, 6], "predicted_loss": [float("nan")] * 2})
    with pytest.raises(SalisError, match=r"no loss-prediction module.*-S model.learning_loss=true"):
        get_sampler("learning_loss").rank(selection_context(images))
    with pytest.raises(SalisError, match="no loss-prediction module"):
        get_sampler("learning_loss").rank(selection_context(images.drop(columns="predicted_loss")))
