"""TSP's IoU heads: hand-computed targets, loss masking for pseudo images, inference outputs."""

import dataclasses

import pytest
import torch

from salis.model.build import seeded_model
from salis.model.checkpoint import restore, save_checkpoint
from salis.model.iou_heads import IoUHead, box_iou_targets, mask_iou_targets
from salis.params import ModelParams
from support import SMALL




def test_box_iou_targets_pair_rows():
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 0.0, 15.0, 10.0]])
    assert box_iou_targets(pred, gt).tolist() == pytest.approx([0.5, 50 / 150])


def _gt_wider_than_roi() -> torch.Tensor:
    gt = torch.zeros(1, 16, 24)
    gt[0, 0:8, 0:16] = 1  # 128 px; the RoI [0, 0, 8, 8] sees only its left half
    return gt


def test_mask_iou_target_counts_ground_truth_outside_the_roi():
    roi = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    full = torch.ones(1, 4, 4)  # predicted mask fills the RoI: 64 px, all inside the GT
    iou = mask_iou_targets(full, roi, _gt_wider_than_roi(), torch.tensor([0]), threshold=0.3)
    assert iou.tolist() == pytest.approx([64 / 128])  # not 1.0: the GT half outside the RoI counts


def test_mask_iou_target_binarises_at_the_threshold():
    roi = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    probs = torch.full((1, 4, 4), 0.1)
    probs[0, :2] = 0.9  # top half above 0.3: 32 px predicted, all inside the GT
    iou = mask_iou_targets(probs, roi, _gt_wider_than_roi(), torch.tensor([0]), threshold=0.3)
    assert iou.tolist() == pytest.approx([32 / 128])
    below = mask_iou_targets(torch.full((1, 4, 4), 0.25), roi, _gt_wider_than_roi(), torch.tensor([0]), 0.3)
    assert below.tolist() == [0.0]


def test_iou_head_shape_and_range_and_unsaturated_start():
    # seeded: unseeded, the draw depended on the tests before it (1 seed in 200 gives 0.207)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = IoUHead(16, 8)
        out = head(10 * torch.randn(5, 16, 14, 14))  # large features, as a trained FPN gives
    assert out.shape == (5,) and ((out > 0) & (out < 1)).all()
    # a fresh head predicts near 0.5, where the sigmoid still passes gradients
    assert (out - 0.5).abs().max() < 0.2
    assert head(torch.randn(0, 16, 7, 7)).shape == (0,)


def _target(positive_only: bool) -> dict:
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 8:40, 8:40] = 1
    return {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1]),
            "masks": masks, "positive_only": torch.tensor(positive_only)}


def test_pseudo_images_give_no_iou_loss_and_labeled_ones_do():
    model = seeded_model(SMALL, 2, seed=0).train()
    image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    pseudo = model(image, [_target(True)])
    labeled = model(image, [_target(False)])
    assert pseudo["loss_box_iou"].item() == 0.0 and pseudo["loss_mask_iou"].item() == 0.0
    assert labeled["loss_box_iou"].item() > 0.0 and labeled["loss_mask_iou"].item() > 0.0


def test_iou_losses_do_not_train_the_predictions_they_judge():
    model = seeded_model(SMALL, 2, seed=0).train()
    losses = model([torch.rand(3, 64, 64)], [_target(False)])
    (losses["loss_box_iou"] + losses["loss_mask_iou"]).backward()
    heads = model.roi_heads
    for module in (heads.box_predictor, heads.mask_predictor, heads.mask_head):
        assert all(p.grad is None or not p.grad.any() for p in module.parameters())
    assert any(p.grad is not None and p.grad.any() for p in heads.mask_iou_head.parameters())


def test_inference_gives_box_and_mask_iou_per_detection():
    model = seeded_model(SMALL, 2, seed=0).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])[0]
    n = len(out["scores"])
    assert out["box_iou"].shape == (n,) and out["mask_iou"].shape == (n,)
    assert ((out["mask_iou"] >= 0) & (out["mask_iou"] <= 1)).all()


def test_plain_checkpoint_loads_into_a_model_with_iou_heads(tmp_path, capsys):
    plain = seeded_model(dataclasses.replace(SMALL, iou_heads=False), 2, seed=0)
    path = tmp_path / "plain.pt"
    save_checkpoint(path, plain, dataclasses.replace(SMALL, iou_heads=False), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    with_heads = seeded_model(SMALL, 2, seed=1)
    restore(with_heads, path)
    message = capsys.readouterr().out
    assert "roi_heads.box_iou_head" in message and "roi_heads.mask_iou_head" in message and "random init" in message
    assert torch.equal(with_heads.roi_heads.box_predictor.cls_score.weight, plain.roi_heads.box_predictor.cls_score.weight)


# --- what the IoU heads train on (IoUTraining) -------------------------------------------------

OLD_RECIPE = dataclasses.replace(SMALL, iou_jitter_rois=0, iou_background_rois=0, iou_gt_proposals=True)
NEW_RECIPE = dataclasses.replace(SMALL, iou_jitter_rois=16, iou_background_rois=16, iou_gt_proposals=False)  # params.yaml's


def test_a_params_file_without_the_iou_keys_means_the_old_recipe():
    defaults = ModelParams()  # what a params file (or a recorded run) without the keys gets
    assert (defaults.iou_jitter_rois, defaults.iou_background_rois, defaults.iou_gt_proposals) == (0, 0, True)


def _two_instances() -> dict:
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:40, 8:40] = 1
    masks[1, 44:60, 40:62] = 1
    return {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0], [40.0, 44.0, 62.0, 60.0]]), "labels": torch.tensor([1, 1]),
            "masks": masks}


def test_the_old_recipe_gives_the_losses_it_gave_before():
    # pinned from the code before IoUTraining (8a353a5), same seeds: the ablation arm is the old recipe
    torch.manual_seed(0)
    model = seeded_model(OLD_RECIPE, 2, seed=0).train()
    image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    torch.manual_seed(1)
    losses = model(image, [_two_instances()])
    # to float32 rounding: the sums' order (and their last bits) follows torch's thread count
    assert losses["loss_box_iou"].item() == pytest.approx(0.1768418699502945, rel=1e-5)
    assert losses["loss_mask_iou"].item() == pytest.approx(0.01882318966090679, rel=1e-5)


def test_jittered_boxes_spread_evenly_over_the_wanted_iou_range():
    from salis.model.iou_heads import jittered_boxes
    from salis.model.mc_dropout import paired_box_iou

    gt = torch.tensor([[10.0, 20.0, 50.0, 40.0], [60.0, 60.0, 70.0, 90.0]])
    torch.manual_seed(0)
    boxes, source = jittered_boxes(gt, 4000, 0.5, (100, 80))
    assert boxes.shape == (4000, 4) and set(source.tolist()) == {0, 1}
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 80).all() and (boxes[:, 1::2] <= 100).all()
    ious = paired_box_iou(boxes, gt[source])
    assert ious.min() > 0.47 and ious.max() <= 1.0
    shares = torch.histc(ious.clamp(0.5, 1.0), bins=5, min=0.5, max=1.0) / len(ious)
    assert (shares > 0.15).all() and (shares < 0.25).all()  # even: 0.2 per tenth of IoU
    assert jittered_boxes(gt, 0, 0.5, (100, 80))[0].shape == (0, 4)
    assert jittered_boxes(gt[:0], 5, 0.5, (100, 80))[0].shape == (0, 4)


def _iou_head_inputs(params: ModelParams, proposals: torch.Tensor) -> tuple[dict, dict]:
    """The RoI heads' training losses on one 64 x 64 image with _two_instances, given these RPN
    proposals, with both IoU heads predicting 0.5 everywhere; and how many RoIs each head saw."""
    model = seeded_model(params, 2, seed=0).train()
    heads = model.roi_heads
    seen = {"box": 0, "mask": 0}

    def constant(name):
        def forward(features):
            seen[name] += len(features)
            return features.sum(dim=(1, 2, 3)) * 0.0 + 0.5
        return forward

    heads.box_iou_head.forward = constant("box")
    heads.mask_iou_head.forward = constant("mask")
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    losses = heads(model.backbone(image), [proposals], [(64, 64)], [_two_instances()])[1]
    return losses, seen


FAR = torch.tensor([[0.0, 48.0, 12.0, 60.0]])  # overlaps neither instance: IoU 0


def test_the_appended_ground_truth_boxes_train_no_iou_head():
    no_extras = dataclasses.replace(NEW_RECIPE, iou_jitter_rois=0, iou_background_rois=0)
    losses, seen = _iou_head_inputs(no_extras, torch.zeros(0, 4))  # the only positives: the ground truth
    assert seen == {"box": 0, "mask": 0} and losses["loss_box_iou"].item() == 0.0
    losses, seen = _iou_head_inputs(OLD_RECIPE, torch.zeros(0, 4))
    assert seen == {"box": 2, "mask": 2} and losses["loss_box_iou"].item() > 0.0


def test_background_rois_teach_an_iou_of_zero():
    only_background = dataclasses.replace(NEW_RECIPE, iou_jitter_rois=0, iou_background_rois=4)
    losses, seen = _iou_head_inputs(only_background, FAR)
    # the negatives: FAR, and nothing else (the ground-truth boxes are positives)
    assert seen == {"box": 1, "mask": 1}
    assert losses["loss_box_iou"].item() == pytest.approx(0.25)  # (0.5 - 0)^2
    assert losses["loss_mask_iou"].item() == pytest.approx(0.25)


def test_jittered_rois_teach_their_iou():
    only_jitter = dataclasses.replace(NEW_RECIPE, iou_jitter_rois=6, iou_background_rois=0, iou_jitter_min_iou=0.9)
    losses, seen = _iou_head_inputs(only_jitter, torch.zeros(0, 4))
    assert seen["box"] == 6 and seen["mask"] == 6
    # targets in [0.9, 1] (nearest of 32 candidates: a little below 0.9 at worst): (0.5 - t)^2
    assert 0.14 < losses["loss_box_iou"].item() <= 0.25
    # the mask target is the predicted mask's IoU, which an untrained mask head keeps low
    assert losses["loss_mask_iou"].item() > 0.0
