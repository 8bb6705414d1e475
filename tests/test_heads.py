"""How the model is built (torchvision's classes through their constructors), and positive-only
classification for pseudo-labeled images, at the hooks and through the loss."""

import dataclasses

import torch
from torchvision.ops import box_iou
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from salis.model.build import seeded_model
from salis.model.detector import SalisMaskRCNN
from salis.model.heads import RoIHeadsParts, SalisRoIHeads
from salis.model.rpn import SalisRPN
from support import SMALL




def test_model_rpn_and_heads_are_built_by_their_constructors(monkeypatch):
    built = []
    for cls in (SalisMaskRCNN, SalisRPN, SalisRoIHeads):
        def spy(self, *args, _init=cls.__init__, **kwargs):
            built.append(type(self))
            _init(self, *args, **kwargs)
        monkeypatch.setattr(cls, "__init__", spy)
    model = seeded_model(dataclasses.replace(SMALL, learning_loss=True), 2, seed=0)
    # each object ran its own class's constructor: no stock object had its class swapped
    assert built == [SalisMaskRCNN, SalisRPN, SalisRoIHeads]
    assert isinstance(model, MaskRCNN)
    assert isinstance(model.rpn, RegionProposalNetwork) and isinstance(model.roi_heads, RoIHeads)
    assert model.rpn.per_image_losses
    # checkpoints stay loadable: salis's modules keep their state-dict names
    prefixes = {".".join(k.split(".")[:2]) for k in model.state_dict()}
    assert {"roi_heads.box_iou_head", "roi_heads.mask_iou_head", "roi_heads.loss_prediction"} <= prefixes


def _settings(module: torch.nn.Module) -> dict:
    """The non-module state torchvision's constructor sets, helper objects by their fields."""
    out = {}
    for name, value in vars(module).items():
        if name.startswith("_") and name not in ("_pre_nms_top_n", "_post_nms_top_n"):
            continue
        out[name] = vars(value) if type(value).__module__.endswith("detection._utils") else value
    return out


def test_rebuilt_rpn_and_heads_keep_every_setting_and_submodule_of_the_stock_ones():
    model = seeded_model(SMALL, 2, seed=0)
    rpn, heads = model.rpn, model.roi_heads
    stock_rpn = RegionProposalNetwork(
        rpn.anchor_generator, rpn.head, 0.65, 0.25, 96, 0.4, {"training": 11, "testing": 7},
        {"training": 5, "testing": 3}, 0.6, score_thresh=0.01,
    )
    stock_heads = RoIHeads(
        heads.box_roi_pool, heads.box_head, heads.box_predictor, 0.55, 0.45, 48, 0.3, (9.0, 8.0, 4.0, 3.0),
        0.07, 0.4, 17, heads.mask_roi_pool, heads.mask_head, heads.mask_predictor,
    )
    for stock, rebuilt in (
        (stock_rpn, SalisRPN.from_torchvision(stock_rpn)),
        (stock_heads, SalisRoIHeads.from_torchvision(stock_heads, RoIHeadsParts())),
    ):
        expected = _settings(stock)
        assert {k: v for k, v in _settings(rebuilt).items() if k in expected} == expected
        assert dict(rebuilt.named_children()).items() >= dict(stock.named_children()).items()


def target(positive_only: bool) -> dict:
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 8:40, 8:40] = 1
    return {
        "boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]),
        "labels": torch.tensor([1]),
        "masks": masks,
        "positive_only": torch.tensor(positive_only),
    }


def test_roi_targets_background_becomes_ignore_only_for_flagged_images():
    model = seeded_model(SMALL, 2, seed=0)
    heads = model.roi_heads
    # proposal 0 matches the GT box, proposal 1 is far away (background)
    proposals = [torch.tensor([[8.0, 8.0, 40.0, 40.0], [50.0, 50.0, 60.0, 60.0]])] * 2
    gt_boxes = [torch.tensor([[8.0, 8.0, 40.0, 40.0]])] * 2
    gt_labels = [torch.tensor([2])] * 2
    heads._flags = [False, True]
    _, labels = heads.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
    assert labels[0].tolist() == [2, 0]  # labeled image: background stays a negative
    assert labels[1].tolist() == [2, -1]  # pseudo image: background is ignored


def test_rpn_targets_background_becomes_ignore_only_for_flagged_images():
    model = seeded_model(SMALL, 2, seed=0)
    rpn = model.rpn
    anchors = [torch.tensor([[8.0, 8.0, 40.0, 40.0], [50.0, 50.0, 60.0, 60.0]])] * 2
    rpn._flags = [True, False]
    labels, _ = rpn.assign_targets_to_anchors(anchors, [target(True), target(False)])
    assert labels[0].tolist() == [1.0, -1.0]
    assert labels[1].tolist() == [1.0, 0.0]


def test_uncertain_boxes_keep_background_a_negative_away_from_them():
    heads = seeded_model(SMALL, 2, seed=0).roi_heads
    # 0 matches the GT box; 1 is background far from everything; 2 is background with IoU 0.5 to
    # the uncertain box [0, 40, 20, 60] (200 px shared of 400); 3 with IoU 0.25 (100 of 400)
    proposals = [torch.tensor([[8.0, 8.0, 40.0, 40.0], [50.0, 50.0, 60.0, 60.0],
                               [0.0, 40.0, 10.0, 60.0], [0.0, 40.0, 5.0, 60.0]])] * 3
    gt_boxes, gt_labels = [torch.tensor([[8.0, 8.0, 40.0, 40.0]])] * 3, [torch.tensor([2])] * 3
    heads._flags = [True, True, True]
    heads._uncertain = [torch.tensor([[0.0, 40.0, 20.0, 60.0]]), None, torch.zeros(0, 4)]
    _, labels = heads.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
    assert labels[0].tolist() == [2, 0, -1, 0]  # ignored only within IoU 0.3 of the uncertain box
    assert labels[1].tolist() == [2, -1, -1, -1]  # no uncertain boxes recorded: positive-only, as before
    assert labels[2].tolist() == [2, 0, 0, 0]  # the labeling model saw nothing else: all background trusted


def test_rpn_anchors_near_an_uncertain_box_are_ignored_and_the_rest_negatives():
    rpn = seeded_model(SMALL, 2, seed=0).rpn
    anchors = [torch.tensor([[8.0, 8.0, 40.0, 40.0], [50.0, 50.0, 60.0, 60.0], [0.0, 40.0, 10.0, 60.0]])]
    pseudo = target(True) | {"uncertain_boxes": torch.tensor([[0.0, 40.0, 20.0, 60.0]])}
    with rpn.positive_only([pseudo]):
        labels, _ = rpn.assign_targets_to_anchors(anchors, [pseudo])
    assert labels[0].tolist() == [1.0, 0.0, -1.0]


def _proposals(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(200, 2, generator=g) * 48
    wh = 4 + torch.rand(200, 2, generator=g) * 16
    return torch.cat([xy, xy + wh], 1)


def test_pseudo_image_samples_no_background_roi_and_leaves_labeled_image_unchanged():
    heads = seeded_model(SMALL, 2, seed=0).train().roi_heads
    torch.manual_seed(0)
    alone = heads.select_training_samples([_proposals(1)], [target(False)])
    torch.manual_seed(0)
    mixed = heads.select_training_samples([_proposals(1), _proposals(2)], [target(False), target(True)])
    _, _, labels_alone, _ = alone
    proposals_mixed, _, labels_mixed, _ = mixed
    # the labeled image (first in both batches) gets the same RoIs, background included
    assert torch.equal(labels_alone[0], labels_mixed[0])
    assert torch.equal(alone[0][0], proposals_mixed[0])
    assert (labels_mixed[0] == 0).any()
    # the pseudo image contributes positives only (its GT box is always among the proposals)
    assert len(labels_mixed[1]) > 0 and (labels_mixed[1] >= 1).all()


def test_pseudo_image_with_uncertain_boxes_samples_negatives_only_away_from_them():
    heads = seeded_model(SMALL, 2, seed=0).train().roi_heads
    uncertain = torch.tensor([[0.0, 0.0, 24.0, 24.0], [30.0, 30.0, 50.0, 56.0]])
    pseudo = target(True) | {"uncertain_boxes": uncertain}
    torch.manual_seed(0)
    proposals, _, labels, _ = heads.select_training_samples([_proposals(2)], [pseudo])
    background = proposals[0][labels[0] == 0]
    assert len(background) > 0 and (labels[0] >= 1).any()
    assert (box_iou(background, uncertain).amax(dim=1) < 0.3).all()
    assert heads._uncertain == ()  # recorded for the call only


def test_pseudo_image_gets_no_background_anchor_in_the_rpn_loss():
    rpn = seeded_model(SMALL, 2, seed=0).train().rpn
    anchors = [_proposals(3), _proposals(3)]
    rpn._flags = [False, True]
    labels, _ = rpn.assign_targets_to_anchors(anchors, [target(False), target(True)])
    pos, neg = rpn.fg_bg_sampler(labels)
    assert neg[0].sum() > 0  # labeled image: negatives sampled
    assert neg[1].sum() == 0 and pos[1].sum() > 0  # pseudo image: positives only


def test_loss_runs_for_a_mixed_batch():
    model = seeded_model(SMALL, 2, seed=0).train()
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    losses = model(images, [target(False), target(True)])
    assert set(losses) == {
        "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg",
        "loss_box_iou", "loss_mask_iou",
    }
    assert all(torch.isfinite(v) for v in losses.values())


def test_the_models_resize_scales_uncertain_boxes_with_the_boxes():
    transform = seeded_model(SMALL, 2, seed=0).transform  # 64 x 64: a 32 x 32 image doubles
    image = torch.rand(3, 32, 32)
    pseudo = {"boxes": torch.tensor([[4.0, 4.0, 8.0, 8.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 32, 32, dtype=torch.uint8), "uncertain_boxes": torch.tensor([[2.0, 3.0, 6.0, 10.0]])}
    _, (out,) = transform([image], [pseudo])
    assert out["boxes"].tolist() == [[8.0, 8.0, 16.0, 16.0]]
    assert out["uncertain_boxes"].tolist() == [[4.0, 6.0, 12.0, 20.0]]
    assert pseudo["uncertain_boxes"].tolist() == [[2.0, 3.0, 6.0, 10.0]]  # the caller's target untouched


def test_inference_returns_a_posterior_per_detection():
    model = seeded_model(SMALL, 2, seed=0).eval()
    with torch.no_grad():  # a seeded image: the untrained model detects something on it every time
        out = model([torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))])[0]
    n = len(out["scores"])
    assert n > 0, "the check below needs detections"
    assert out["class_posterior"].shape == (n, 3)
    assert torch.allclose(out["class_posterior"].sum(1), torch.ones(n), atol=1e-5)
    # the reported score is the posterior of the reported label
    picked = out["class_posterior"][torch.arange(n), out["labels"]]
    assert torch.allclose(picked, out["scores"], atol=1e-6)


def test_box_supervision_is_a_part_given_at_construction():
    from salis.model.build import build_model
    from salis.model.heads import BoxSupervision

    weights = BoxSupervision(projection_weight=2.0, pairwise_weight=0.0, color_tau=0.5)
    assert build_model(SMALL, 2, box_supervision=weights).roi_heads.box_supervision == weights
    assert build_model(SMALL, 2).roi_heads.box_supervision == BoxSupervision()  # train.box_*'s defaults
