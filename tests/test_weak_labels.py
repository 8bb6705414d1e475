"""Weak labels (issue 11): the simulated annotator's boxes, points and counts; hour budgets and the
mixed policy; BoxInst's losses on small hand-checked masks; point-guided and image-label targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from salis.annotation.cost import CostModel
from salis.annotation.kinds import AnnotatorView, label_kind
from salis.annotation.kinds.image import image_counts
from salis.annotation.kinds.point import click_point
from salis.engine.inference import Prediction
from salis.geometry import encode_mask
from salis.loop.budget import CycleBudget, assign_label_types, planned_types, ranking_depth
from salis.loop.weak import (
    WeakSummary,
    claim_detections,
    component_at,
    image_label_targets,
    own_share,
    point_targets,
    refine_points,
    weak_targets,
)
from salis.model.box_supervision import pairwise_loss, projection_loss, rgb_to_lab
from salis.params import AnnotationParams, WeakParams


def square(h: int, w: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


# --- label types -----------------------------------------------------------------------------


def test_center_click_is_the_pixel_deepest_inside():
    mask = square(9, 9, 2, 7, 1, 6)  # rows 2-6, cols 1-5: centre pixel (4, 3)
    assert click_point(mask, "center", np.random.default_rng(0)) == (3.5, 4.5)


@pytest.mark.parametrize("placement", ["uniform", "annotator"])
def test_clicks_land_inside_and_repeat_for_a_seed(placement):
    mask = square(20, 20, 3, 15, 4, 10)
    clicks = [click_point(mask, placement, np.random.default_rng(s)) for s in range(50)]
    assert all(mask[int(y), int(x)] for x, y in clicks)
    assert clicks == [click_point(mask, placement, np.random.default_rng(s)) for s in range(50)]
    assert len(set(clicks)) > 10  # not always the same pixel


def test_annotator_clicks_sit_deeper_than_uniform_ones():
    mask = square(40, 40, 5, 35, 5, 35)
    rng_a, rng_u = np.random.default_rng(1), np.random.default_rng(1)
    depth = lambda x, y: min(x - 5, 35 - x, y - 5, 35 - y)  # noqa: E731  distance to the border
    annotator = np.mean([depth(*click_point(mask, "annotator", rng_a)) for _ in range(400)])
    uniform = np.mean([depth(*click_point(mask, "uniform", rng_u)) for _ in range(400)])
    assert annotator > uniform + 1.0  # uniform's mean depth is 5, distance-weighted about 7.5


def ann(mask: np.ndarray, category: int) -> dict:
    rows, cols = np.nonzero(mask)
    bbox = [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1), float(rows.max() - rows.min() + 1)]
    return {"category_id": category, "segmentation": encode_mask(mask), "bbox": bbox, "area": float(mask.sum())}


def test_derived_labels_carry_exactly_what_each_type_reveals():
    a, b = square(12, 12, 1, 4, 1, 5), square(12, 12, 6, 11, 6, 9)
    anns = [ann(a, 3), ann(b, 7)]
    view = AnnotatorView(anns, 12, 12, [3, 7, 9], "center", np.random.default_rng(0))
    boxes = label_kind("box").derive(view)
    assert boxes == [{"category_id": 3, "bbox": [1.0, 1.0, 4.0, 3.0]}, {"category_id": 7, "bbox": [6.0, 6.0, 3.0, 5.0]}]
    assert label_kind("box").image_fields(view) == {}
    points = label_kind("point").derive(view)
    assert [p["category_id"] for p in points] == [3, 7]
    assert all(m[int(p["point"][1]), int(p["point"][0])] for m, p in zip((a, b), points))
    assert all(set(p) == {"category_id", "point"} for p in points)  # no mask, no box
    none, fields = label_kind("image").derive(view), label_kind("image").image_fields(view)
    assert none == [] and fields["counts"] == [{"category_id": 3, "count": 1}, {"category_id": 7, "count": 1},
                                               {"category_id": 9, "count": 0}]
    full = label_kind("mask").derive(view)
    assert full == anns and full[0] is not anns[0]  # copies: the oracle's truth is never handed out


def test_image_counts_and_suffixes():
    assert image_counts([{"category_id": 2}, {"category_id": 2}], [1, 2]) == [
        {"category_id": 1, "count": 0}, {"category_id": 2, "count": 2}]
    assert [label_kind(t).suffix for t in ("mask", "box", "point", "image")] == ["", ".box", ".point", ".image"]


# --- budgets ---------------------------------------------------------------------------------


def budget(hours: float = 1.0, images: int = 20) -> CycleBudget:
    # 3 instances and 2 categories per image: a mask image 3 x 79 + 2 = 239 s, a point image 9.2 s
    return CycleBudget(images=images, hours=hours, mean_instances=3.0, num_categories=2, cost=CostModel())


def test_hours_buy_images_of_each_type_by_the_estimate():
    assert planned_types(AnnotationParams(policy="mask"), budget(hours=1.0)) == {"mask": 15}  # 3600 / 239 = 15.06
    assert planned_types(AnnotationParams(policy="point"), budget(hours=1.0)) == {"point": 391}  # 3600 / 9.2
    mixed = AnnotationParams(policy="mixed", mask_share=0.5, cheap="point")
    assert planned_types(mixed, budget(hours=1.0)) == {"mask": 7, "point": 195}  # 1800 / 239, 1800 / 9.2
    assert planned_types(AnnotationParams(policy="box"), budget(hours=0.0, images=12)) == {"box": 12}


def test_mixed_by_rank_gives_masks_to_the_top_and_cheap_labels_to_the_next():
    mixed = AnnotationParams(policy="mixed", mask_share=0.5, cheap="point")
    ranked = list(range(100, 400))
    out = assign_label_types(ranked, mixed, budget(hours=1.0), {})
    assert out[:7] == [(100 + i, "mask") for i in range(7)]
    assert out[7:] == [(107 + i, "point") for i in range(195)]


def test_mixed_by_mask_iou_gives_cheap_labels_where_the_model_segments_well():
    mixed = AnnotationParams(policy="mixed", mask_share=0.5, cheap="box", mixed_order="mask_iou", cheap_above=0.6)
    small = CycleBudget(images=0, hours=0.25, mean_instances=3.0, num_categories=2, cost=CostModel())
    # 0.125 h each: 450 s -> 1 mask (239 s), 19 boxes (23 s)
    assert planned_types(mixed, small) == {"mask": 1, "box": 19}
    ious = {1: 0.9, 2: 0.2, 3: float("nan"), 4: 0.7}
    out = assign_label_types([1, 2, 3, 4], mixed, small, ious)
    # 2 wants a mask and gets it; 3 (no detection) would want a mask too, but the mask hours are spent
    assert out == [(1, "box"), (2, "mask"), (4, "box")]
    assert ranking_depth(mixed, small, unlabeled=1000) == 4 * 20


# --- BoxInst losses --------------------------------------------------------------------------


def box_target() -> torch.Tensor:
    t = torch.zeros(1, 4, 4)
    t[0, 1:3, 1:3] = 1.0
    return t


def test_projection_loss_by_hand():
    # p = 0.5 everywhere: each projection is [.5 .5 .5 .5] against [0 1 1 0]:
    # dice = 1 - 2 (0.5 + 0.5) / (4 x 0.25 + 2) = 1/3 per axis
    assert projection_loss(torch.zeros(1, 4, 4), box_target()).item() == pytest.approx(2 / 3)
    exact = torch.where(box_target() > 0, 20.0, -20.0)
    assert projection_loss(exact, box_target()).item() == pytest.approx(0.0, abs=1e-6)
    # any mask with the box's extent on both axes is as good: a diagonal inside the box
    diagonal = torch.full((1, 4, 4), -20.0)
    diagonal[0, 1, 1] = diagonal[0, 2, 2] = 20.0
    assert projection_loss(diagonal, box_target()).item() == pytest.approx(0.0, abs=1e-6)


def test_pairwise_loss_by_hand():
    colors = torch.zeros(1, 3, 4, 4)  # one colour: every neighbour pair is similar
    inside = torch.ones(1, 4, 4)
    # p = 0.5: P(same) = 0.25 + 0.25, -log 0.5 for every pair
    assert pairwise_loss(torch.zeros(1, 4, 4), colors, inside, 0.3).item() == pytest.approx(math.log(2))
    assert pairwise_loss(torch.full((1, 4, 4), 20.0), colors, inside, 0.3).item() == pytest.approx(0.0, abs=1e-6)
    # a stripe of another colour: pairs across the edge are dissimilar and drop out; within each
    # part every pixel agrees, so a mask that follows the edge pays nothing
    striped = colors.clone()
    striped[0, 0, :, 2:] = 100.0
    follows = torch.full((1, 4, 4), -20.0)
    follows[0, :, 2:] = 20.0
    assert pairwise_loss(follows, striped, inside, 0.3).item() == pytest.approx(0.0, abs=1e-6)
    assert pairwise_loss(follows, colors, inside, 0.3).item() > 1.0  # one colour: the cut is paid for
    # pairs outside the box do not count
    assert pairwise_loss(torch.zeros(1, 4, 4), colors, torch.zeros(1, 4, 4), 0.3).item() == 0.0


def test_rgb_to_lab_fixed_points():
    white, black = torch.ones(3, 1, 1), torch.zeros(3, 1, 1)
    assert rgb_to_lab(white)[:, 0, 0].tolist() == pytest.approx([100.0, 0.0, 0.0], abs=0.05)
    assert rgb_to_lab(black)[:, 0, 0].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)


# --- point-guided and image-label targets -------------------------------------------------------


def prediction(masks: list[np.ndarray], scores: list[float], categories: list[int], image_id: int = 5) -> Prediction:
    n = len(masks)
    h, w = masks[0].shape if masks else (12, 12)
    return Prediction(
        image_id=image_id, boxes=np.zeros((n, 4), np.float32), scores=np.asarray(scores, np.float32),
        category_ids=np.asarray(categories, np.int64), masks=np.stack(masks) if masks else np.zeros((0, h, w), bool),
        posteriors=np.zeros((n, 3), np.float32), box_ious=np.full(n, np.nan, np.float32),
        mask_ious=np.full(n, np.nan, np.float32),
    )


def test_each_point_claims_the_best_detection_containing_it_once():
    big = square(12, 12, 0, 12, 0, 6)  # holds both points on the left: likely two instances merged
    small = square(12, 12, 0, 4, 0, 4)  # holds only the first
    pred = prediction([big, small, square(12, 12, 0, 12, 6, 12)], [0.9, 0.6, 0.8], [1, 1, 2])
    points = [(1.5, 1.5, 1), (2.5, 8.5, 1), (9.5, 9.5, 1)]  # the third is on a category-2 detection only
    # p0 prefers small, which holds no other point, over the better-scoring big one; p1 then takes
    # big; p2 has no detection of its category
    assert claim_detections(pred, points, min_score=0.05) == [1, 0, None]
    assert claim_detections(pred, points, min_score=0.95) == [None, None, None]
    # without the small one both points want big: the better pair (p0, big) wins, p1 goes without
    pred = prediction([big], [0.9], [1])
    assert claim_detections(pred, points[:2], min_score=0.05) == [0, None]


def test_a_claimed_mask_holding_other_points_is_cut_to_its_own_share():
    big = square(12, 12, 0, 12, 0, 6)
    points = [(1.5, 1.5, 1), (2.5, 8.5, 1)]
    top = own_share(big, 0, points)
    bottom = own_share(big, 1, points)
    assert not (top & bottom).any() and (top | bottom).sum() == big.sum()
    # rows 0-4 lie nearer (1.5, 1.5) (pixel (5, 4) is a tie: it goes to point 0), rows 5-11 nearer (2.5, 8.5)
    assert top[:5, :6].all() and not top[5:].any() and bottom[5:, :6].all() and not bottom[:5].any()
    alone = square(12, 12, 0, 4, 0, 4)
    assert own_share(alone, 0, points) is alone  # nothing else inside: unchanged


def test_refinement_keeps_the_part_holding_the_point_and_reruns_at_its_box():
    calls = []

    def refine(image_id, boxes, categories):
        calls.append(boxes.copy())
        out = np.zeros((len(boxes), 12, 12), dtype=bool)
        out[:, 2:5, 2:5] = True  # the part around the point
        out[:, 8:10, 8:10] = True  # a stray part elsewhere
        return out

    masks = refine_points(5, [(3.5, 3.5, 1)], [4.0], 12, 12, refine)
    assert masks[0].sum() == 9 and masks[0][3, 3] and not masks[0][9, 9]
    assert calls[0].tolist() == [[1.5, 1.5, 5.5, 5.5]]  # a 4-px square around the point
    assert calls[1].tolist() == [[2.0, 2.0, 5.0, 5.0]]  # then the box of the kept part
    assert not component_at(masks[0], 9.5, 9.5).any()


def test_point_targets_are_complete_unless_a_point_gets_no_mask():
    pred = prediction([square(12, 12, 0, 5, 0, 5)], [0.7], [1])
    empty = lambda image_id, boxes, cats: np.zeros((len(boxes), 12, 12), dtype=bool)  # noqa: E731
    found = lambda image_id, boxes, cats: np.stack([square(12, 12, 7, 11, 7, 11)] * len(boxes))  # noqa: E731
    summary = WeakSummary()
    rows = point_targets(pred, [(2.5, 2.5, 1), (8.5, 8.5, 1)], WeakParams(), {-1: 4.0}, found, summary)
    assert rows["origin"].tolist() == ["detection", "refined"] and set(rows["supervision"]) == {"full"}
    assert rows[["x", "y", "w", "h"]].to_numpy().tolist() == [[0, 0, 5, 5], [7, 7, 4, 4]]
    assert np.isnan(rows["score"].iloc[1]) and rows["score"].iloc[0] == pytest.approx(0.7)
    rows = point_targets(pred, [(2.5, 2.5, 1), (8.5, 8.5, 1)], WeakParams(), {-1: 4.0}, empty, summary)
    assert len(rows) == 1 and set(rows["supervision"]) == {"positive_only"}
    assert (summary.points, summary.points_claimed, summary.points_refined, summary.points_failed) == (4, 2, 1, 1)
    assert summary.complete_images == 1


def test_image_labels_drop_absent_classes_and_keep_the_best_counted_ones():
    masks = [square(12, 12, r, r + 2, 0, 2) for r in range(0, 10, 2)]
    pred = prediction(masks, [0.9, 0.6, 0.95, 0.4, 0.8], [1, 1, 1, 2, 3])
    summary = WeakSummary()
    counts = [{"category_id": 1, "count": 2}, {"category_id": 2, "count": 1}, {"category_id": 3, "count": 0}]
    rows = image_label_targets(pred, counts, WeakParams(image_score_thresh=0.5), summary)
    # class 1: the two best (0.95, 0.9) of three; class 2's one detection scores under 0.5; class 3 absent
    assert rows["score"].tolist() == pytest.approx([0.9, 0.95]) and rows["category_id"].tolist() == [1, 1]
    assert set(rows["supervision"]) == {"positive_only"}  # class 2's instance was not found
    assert (summary.counted_instances, summary.image_label_kept, summary.complete_images) == (3, 2, 0)
    rows = image_label_targets(pred, counts[:1], WeakParams(image_score_thresh=0.5), summary)
    assert set(rows["supervision"]) == {"full"}


def test_weak_targets_read_points_and_counts_from_the_store():
    store = {
        "images": [{"id": 5, "label_type": "point"}, {"id": 6, "label_type": "image",
                                                      "counts": [{"category_id": 1, "count": 1}]}],
        "annotations": [{"image_id": 5, "category_id": 1, "point": [2.5, 2.5]},
                        {"image_id": 9, "category_id": 1, "bbox": [0, 0, 3, 3]}],
        "categories": [{"id": 1, "name": "a"}],
    }
    preds = [prediction([square(12, 12, 0, 5, 0, 5)], [0.7], [1], image_id=5),
             prediction([square(12, 12, 0, 5, 0, 5)], [0.7], [1], image_id=6)]
    table, summary = weak_targets(iter(preds), store, WeakParams(), lambda *a: None, fallback_side=4.0)
    assert table["image_id"].tolist() == [5, 6] and table["label_type"].tolist() == ["point", "image"]
    assert summary.complete_images == 2


# --- box-labeled images in the model -------------------------------------------------------------


def test_a_box_labeled_image_trains_the_mask_head_through_boxinst_only():
    import dataclasses

    from salis.engine.datasets import box_target_arrays
    from salis.model.build import seeded_model
    from support import SMALL, sample

    full = sample(0, False)
    anns = [{"category_id": 1, "bbox": [8.0, 8.0, 16.0, 16.0]}, {"category_id": 2, "bbox": [34.0, 30.0, 26.0, 20.0]}]
    arrays = box_target_arrays(anns, 64, 64, lambda c: c)
    assert arrays["masks"].sum(axis=(1, 2)).tolist() == [16 * 16, 26 * 20]  # the filled boxes
    assert arrays["boxes"].tolist() == full.boxes.tolist()
    boxed = dataclasses.replace(full, masks=arrays["masks"], mask_from_box=True)
    torch.manual_seed(0)
    model = seeded_model(SMALL, 2, seed=0).train()
    image, target = boxed.to_model_input(torch.device("cpu"))
    losses = model([image], [target])
    assert losses["loss_mask_box"].item() > 0
    assert losses["loss_mask"].item() == 0.0  # no RoI of a mask-labeled image in the batch
    assert losses["loss_mask_iou"].item() == 0.0  # nothing to measure a mask's IoU against
    assert losses["loss_box_iou"].item() > 0  # the box is known: the box-IoU head still learns
    losses["loss_mask_box"].backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    # a batch without box-labeled images has no BoxInst term at all
    torch.manual_seed(0)
    image, target = full.to_model_input(torch.device("cpu"))
    assert "loss_mask_box" not in seeded_model(SMALL, 2, seed=0).train()([image], [target])


def test_pairwise_ramp_by_hand():
    from salis.model.heads import pairwise_ramp

    assert [pairwise_ramp(it, 4) for it in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert pairwise_ramp(0, 0) == 1.0  # no warm-up: full weight from the first step


def test_the_ramp_scales_the_pairwise_term_only():
    import dataclasses

    from salis.engine.datasets import box_target_arrays
    from salis.model.build import seeded_model
    from salis.model.heads import set_pairwise_ramp
    from support import SMALL, sample

    full = sample(0, False)
    anns = [{"category_id": 1, "bbox": [8.0, 8.0, 16.0, 16.0]}, {"category_id": 2, "bbox": [34.0, 30.0, 26.0, 20.0]}]
    boxed = dataclasses.replace(full, masks=box_target_arrays(anns, 64, 64, lambda c: c)["masks"], mask_from_box=True)
    model = seeded_model(SMALL, 2, seed=0).train()
    image, target = boxed.to_model_input(torch.device("cpu"))

    def box_loss(ramp: float) -> float:
        set_pairwise_ramp(model, ramp)
        torch.manual_seed(0)  # the same RoIs sampled each time
        with torch.no_grad():
            return model([image], [target])["loss_mask_box"].item()

    projection_only, half, whole = box_loss(0.0), box_loss(0.5), box_loss(1.0)
    assert whole > projection_only  # an untrained mask head pays the pairwise term
    assert half == pytest.approx((projection_only + whole) / 2, rel=1e-5)  # projection + ramp x pairwise


def test_training_ramps_the_pairwise_weight_over_its_warmup(monkeypatch):
    import salis.engine.training as training
    from salis.engine.training import train_model
    from salis.model.build import seeded_model
    from salis.params import TrainParams
    from support import SMALL, sample

    seen = []
    real = training.set_pairwise_ramp
    monkeypatch.setattr(training, "set_pairwise_ramp", lambda model, ramp: (seen.append(ramp), real(model, ramp)))
    model = seeded_model(SMALL, 2, seed=0)
    params = TrainParams(min_iterations=4, max_iterations=4, batch_size=2, warmup_iterations=1, box_pairwise_warmup=0.5)
    train_model(model, [sample(0), sample(1)], [], params, seed=0, device=torch.device("cpu"), amp=False)
    assert seen == [0.5, 1.0, 1.0, 1.0, 1.0]  # 2 warm-up steps of 4, then full weight left in place
    assert model.roi_heads.pairwise_ramp == 1.0


def test_no_target_without_a_mask_and_empty_images_are_reported():
    empty = np.zeros((12, 12), dtype=bool)
    pred = prediction([empty, square(12, 12, 0, 4, 0, 4)], [0.95, 0.9], [1, 1])
    summary = WeakSummary()
    rows = image_label_targets(pred, [{"category_id": 1, "count": 2}], WeakParams(image_score_thresh=0.5), summary)
    assert rows["score"].tolist() == pytest.approx([0.9])  # the empty-mask detection is no target
    assert set(rows["supervision"]) == {"positive_only"} and (rows["w"] > 0).all()
    # two clicks on one pixel: the second gets nothing of the shared mask and fails
    twice = [(1.5, 1.5, 1), (1.5, 1.5, 1)]
    nothing = lambda image_id, boxes, cats: np.zeros((len(boxes), 12, 12), dtype=bool)  # noqa: E731
    rows = point_targets(prediction([square(12, 12, 0, 4, 0, 4)], [0.9], [1]), twice, WeakParams(), {-1: 4.0},
                         nothing, summary)
    assert len(rows) == 1 and summary.points_failed == 1
    image_label_targets(prediction([], [], []), [{"category_id": 1, "count": 0}], WeakParams(), summary)
    point_targets(prediction([], [], [], image_id=8), [], WeakParams(), {-1: 4.0}, nothing, summary)
    assert summary.as_dict()["weak_empty_image_ids"] == [5, 8]  # known to hold nothing: background
