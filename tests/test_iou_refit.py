import dataclasses

import pytest
import torch

from salis.engine.iou_refit import refit_iou_heads
from salis.engine.training import train_model
from salis.errors import ParamsError, SalisError
from salis.model.build import seeded_model
from salis.params import TrainParams, parse_params
from support import SMALL, sample, tiny

CPU = torch.device("cpu")
# the heads see jittered and background RoIs too (the recipe params.yaml sets)
MODEL = dataclasses.replace(SMALL, iou_jitter_rois=4, iou_background_rois=4, iou_gt_proposals=False,
                            train_dropout_p=0.2)
REFIT = TrainParams(warmup_iterations=1, lr_steps=(0.9,))
HEADS = ("roi_heads.box_iou_head.", "roi_heads.mask_iou_head.")


def batches(count: int):
    return [[sample(2 * i % 6), sample((2 * i + 1) % 6)] for i in range(count)]


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_refit_changes_the_iou_heads_and_nothing_else():
    model = seeded_model(MODEL, 2, seed=0)
    model.eval()
    before = state(model)
    requires = [p.requires_grad for p in model.parameters()]
    losses = refit_iou_heads(model, batches(3), 3, REFIT, CPU, seed=5)
    after = state(model)
    outside = [k for k in before if not k.startswith(HEADS)]
    inside = [k for k in before if k.startswith(HEADS)]
    # BatchNorm's running statistics included: the frozen part is the same bytes
    assert any("running_mean" in k for k in outside)
    assert all(torch.equal(before[k], after[k]) for k in outside)
    assert all(not torch.equal(before[k], after[k]) for k in inside if not k.endswith("bias"))
    assert [p.requires_grad for p in model.parameters()] == requires
    assert model.roi_heads.train_dropout_p == 0.2 and not model.training
    assert set(losses) == {"iou_refit_loss_box_iou", "iou_refit_loss_mask_iou", "iou_refit_seconds"}


def test_the_refit_starts_from_fresh_heads_whatever_they_were():
    trained, scrambled = seeded_model(MODEL, 2, seed=0), seeded_model(MODEL, 2, seed=0)
    with torch.no_grad():
        for p in scrambled.roi_heads.box_iou_head.parameters():
            p.add_(1.0)
    refit_iou_heads(trained, batches(2), 2, REFIT, CPU, seed=5)
    refit_iou_heads(scrambled, batches(2), 2, REFIT, CPU, seed=5)
    a, b = state(trained), state(scrambled)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_refit_fits_the_heads():
    # one step leaves the fresh heads near 0.5 everywhere; 40 steps on the same six images fit
    # them (an untrained model's features say little: the L2 loss falls by a quarter, 0.158 -> 0.119)
    one = refit_iou_heads(seeded_model(MODEL, 2, seed=0), batches(1), 1, REFIT, CPU, seed=5)
    fitted = refit_iou_heads(seeded_model(MODEL, 2, seed=0), batches(40), 40, REFIT, CPU, seed=5)
    assert fitted["iou_refit_loss_box_iou"] < 0.9 * one["iou_refit_loss_box_iou"]


def test_training_with_a_refit_trains_the_same_model_then_refits_its_heads():
    params = TrainParams(epochs=1, min_iterations=2, max_iterations=2, batch_size=2, warmup_iterations=1)
    labeled = [sample(i) for i in range(4)]

    def run(refit: int):
        model = seeded_model(MODEL, 2, seed=0)
        summary = train_model(model, labeled, [], dataclasses.replace(params, iou_refit_iterations=refit), seed=3,
                              device=CPU, amp=False)
        return state(model), summary

    plain, plain_summary = run(0)
    refitted, summary = run(2)
    assert all(torch.equal(plain[k], refitted[k]) for k in plain if not k.startswith(HEADS))
    assert any(not torch.equal(plain[k], refitted[k]) for k in plain if k.startswith(HEADS))
    assert "iou_refit_loss_box_iou" in summary and "iou_refit_loss_box_iou" not in plain_summary
    assert summary["loss"] == plain_summary["loss"]  # the cycle's own losses are the same


def test_a_refit_needs_the_iou_heads():
    with pytest.raises(SalisError, match="needs the IoU heads"):
        refit_iou_heads(seeded_model(dataclasses.replace(SMALL, iou_heads=False), 2, seed=0), batches(1), 1, REFIT,
                        CPU, seed=5)
    with pytest.raises(ParamsError, match="train.iou_refit_iterations .* needs model.iou_heads: true"):
        parse_params(tiny(train={"iou_refit_iterations": 10}, model={"iou_heads": False}))
    with pytest.raises(ParamsError, match=r"train.iou_refit_iterations must be >= 0, got -1"):
        parse_params(tiny(train={"iou_refit_iterations": -1}))
