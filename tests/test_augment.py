"""Training augmentation (torchvision.transforms.v2 on tv_tensors): hand cases for each transform,
boxes that equal their masks' bounding boxes after any of them, exact rectangles for box labels,
seeded and repeatable, presets and refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from salis.engine.augment import PRESETS, Augmenter, AugmentSettings, RandomQuarterTurn
from salis.engine.datasets import Sample
from salis.errors import ParamsError
from salis.params import AugmentParams, parse_params


def mask_box(mask: np.ndarray) -> list[float]:
    """[x0, y0, x1, y1] of a mask, pixel edges (COCO's x + w)."""
    rows, cols = np.where(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def sample(box_labeled: bool = False) -> Sample:
    """A 10 x 12 image (rows x cols) with two instances: an L shape and a rectangle."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(10, 12, 3), dtype=np.uint8)
    masks = np.zeros((2, 10, 12), dtype=np.uint8)
    masks[0, 1:4, 2:3] = 1
    masks[0, 3:4, 2:6] = 1  # an L: rows 1-3, cols 2-5
    masks[1, 6:9, 7:11] = 1
    if box_labeled:
        masks[0, 1:4, 2:6] = 1  # a box label's mask is its filled box
    boxes = np.array([mask_box(m) for m in masks], dtype=np.float32)
    return Sample(5, image, boxes, np.array([1, 2], dtype=np.int64), masks, mask_from_box=box_labeled)


def settings(**knobs) -> AugmentSettings:
    base = dict.fromkeys(("vflip", "rot90", "brightness", "contrast", "saturation", "hue"), 0.0)
    return AugmentSettings(**(base | knobs))


def test_a_quarter_turn_by_hand():
    s = sample()
    # k = 1 (counter-clockwise): pixel (row y, col x) moves to (row W - 1 - x, col y); a box
    # [x0, y0, x1, y1] becomes [y0, W - x1, y1, W - x0] on a W x H canvas
    turn = RandomQuarterTurn(1.0)
    from torchvision import tv_tensors
    boxes = tv_tensors.BoundingBoxes(torch.from_numpy(s.boxes), format="XYXY", canvas_size=(10, 12))
    masks = tv_tensors.Mask(torch.from_numpy(s.masks))
    turned_boxes = turn.transform(boxes, {"k": 1})
    turned_masks = turn.transform(masks, {"k": 1})
    assert turned_boxes.canvas_size == (12, 10)
    assert turned_boxes[0].tolist() == [1.0, 12 - 6.0, 4.0, 12 - 2.0]
    assert np.array_equal(turned_masks.numpy(), np.rot90(s.masks, 1, axes=(1, 2)))
    assert turned_masks[0, 12 - 1 - 2, 1] == 1  # (row 1, col 2) -> (row 9, col 1)


def test_a_vertical_flip_by_hand():
    out = Augmenter(settings(vflip=1.0))(sample(), seed=0)
    s = sample()
    assert np.array_equal(out.masks, s.masks[:, ::-1])
    assert np.array_equal(out.image, s.image[::-1])
    assert out.boxes[1].tolist() == [7.0, 10 - 9.0, 11.0, 10 - 6.0]


@pytest.mark.parametrize("preset", ["natural", "microscopy"])
@pytest.mark.parametrize("box_labeled", [False, True])
def test_after_any_transform_each_box_is_its_masks_bounding_box(preset, box_labeled):
    augment = Augmenter(AugmentSettings.from_params(AugmentParams(preset=preset, vflip=0.5, rot90=0.9)))
    shapes = set()
    for seed in range(40):
        out = augment(sample(box_labeled), seed)
        shapes.add(out.image.shape)
        assert out.image.dtype == np.uint8 and out.masks.shape[1:] == out.image.shape[:2]
        assert out.masks.sum() == sample(box_labeled).masks.sum()  # exact: no pixel lost or made
        for box, mask in zip(out.boxes, out.masks):
            assert box.tolist() == mask_box(mask)
            if box_labeled:  # a filled box stays a filled box
                x0, y0, x1, y1 = (int(v) for v in box)
                assert mask[y0:y1, x0:x1].all()
    assert shapes == {(10, 12, 3), (12, 10, 3)}  # quarter turns happened, and not only them


def test_photometric_jitter_changes_pixels_only():
    out = Augmenter(settings(brightness=0.5, contrast=0.5))(sample(), seed=3)
    s = sample()
    assert not np.array_equal(out.image, s.image)
    assert np.array_equal(out.masks, s.masks) and np.array_equal(out.boxes, s.boxes)


def test_seeded_repeatable_and_the_global_stream_untouched():
    augment = Augmenter(AugmentSettings.from_params(AugmentParams(preset="microscopy")))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = augment(sample(), 7), augment(sample(), 7)
    assert torch.equal(torch.get_rng_state(), before)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    outputs = {augment(sample(), seed).image.tobytes() for seed in range(10)}
    assert len(outputs) > 5


def test_presets_and_overrides():
    assert not AugmentSettings.from_params(AugmentParams()).active  # none: training as before presets
    micro = AugmentSettings.from_params(AugmentParams(preset="microscopy", hue=0.05, vflip=0.0))
    assert micro.hue == 0.05 and micro.vflip == 0.0 and micro.rot90 == PRESETS["microscopy"]["rot90"]
    assert AugmentSettings.from_params(AugmentParams(preset="natural")).saturation == 0.2


@pytest.mark.parametrize(("augment", "message"), [
    ({"vflip": 1.5}, r"augment.vflip is a probability in \[0, 1\]"),
    ({"hue": 0.7}, r"augment.hue must lie in \[0, 0.5\]"),
    ({"contrast": -0.1}, r"augment.contrast must lie in \[0, 1\]"),
    ({"preset": "medical"}, r"augment.preset must be one of 'none', 'natural', 'microscopy'"),
    ({"rotate": 15}, r"unknown key\(s\) augment.rotate"),
])
def test_bad_augmentation_params_are_one_line(augment, message):
    with pytest.raises(ParamsError, match=message):
        parse_params({"augment": augment})


def test_training_with_augmentation_repeats_and_differs_from_training_without():
    """train_model draws each sample's augmentation from (seed, iteration, image): the same run
    twice gives the same weights; the preset changes them; `none` is the plain training."""
    from salis.engine.training import train_model
    from salis.model.build import seeded_model
    from salis.params import TrainParams
    from support import SMALL
    from support import sample as labeled_sample

    source = [labeled_sample(i, False) for i in range(4)]
    params = TrainParams(min_iterations=2, max_iterations=2, warmup_iterations=1, batch_size=2)

    def weights(augment: AugmentParams | None) -> torch.Tensor:
        model = seeded_model(SMALL, 2, seed=0)
        train_model(model, source, [], params, seed=3, device=torch.device("cpu"), amp=False, augment=augment)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    micro = AugmentParams(preset="microscopy", rot90=1.0, vflip=1.0)
    first = weights(micro)
    assert torch.equal(first, weights(micro))
    assert not torch.equal(first, weights(None))
    assert torch.equal(weights(None), weights(AugmentParams(preset="none")))


def test_scale_jitter_by_hand_doubles_to_the_models_scale():
    # the model's scale of a 10 x 12 image with (min_size, max_size) (20, 30): min(20/10, 30/12) = 2
    scaled = Augmenter(settings(crop_size=100), model_size=(20, 30))(sample(), 0)  # a crop over the whole image
    assert scaled.image.shape == (20, 24, 3)
    # nearest-neighbour doubling: rows 6-8, cols 7-10 -> rows 12-17, cols 14-21
    assert scaled.boxes[1].tolist() == [14.0, 12.0, 22.0, 18.0]
    assert scaled.masks[1].sum() == 4 * sample().masks[1].sum()


def with_uncertain(s: Sample, boxes) -> Sample:
    """s as a pseudo-labeled image whose background is trusted away from `boxes`."""
    return dataclasses.replace(s, positive_only=True, uncertain_boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4))


def test_uncertain_boxes_follow_flips_and_turns_as_the_boxes_do():
    s = sample()
    pseudo = with_uncertain(s, s.boxes)
    # a mirror of the 12-wide image: [2, 1, 6, 4] -> [6, 1, 10, 4], [7, 6, 11, 9] -> [1, 6, 5, 9]
    assert pseudo.flipped().uncertain_boxes.tolist() == [[6.0, 1.0, 10.0, 4.0], [1.0, 6.0, 5.0, 9.0]]
    augment = Augmenter(AugmentSettings.from_params(AugmentParams(preset="microscopy", vflip=0.5, rot90=0.9)))
    for seed in range(20):
        out = augment(pseudo, seed)
        assert out.uncertain_boxes.tolist() == out.boxes.tolist()
        assert np.array_equal(out.image, augment(s, seed).image)  # they ride along: the same draws
    assert augment(s, 0).uncertain_boxes is None


def test_uncertain_boxes_are_scaled_and_those_a_crop_leaves_out_dropped():
    pseudo = with_uncertain(sample(), [[7, 6, 11, 9], [0, 0, 1, 1]])
    scaled = Augmenter(settings(crop_size=100), model_size=(20, 30))(pseudo, 0)  # doubled, not cut
    assert scaled.uncertain_boxes.tolist() == [[14.0, 12.0, 22.0, 18.0], [0.0, 0.0, 2.0, 2.0]]
    cut = Augmenter(settings(crop_size=6), model_size=(10, 12))
    for seed in range(20):
        out = cut(pseudo, seed)
        height, width = out.image.shape[:2]
        kept = out.uncertain_boxes
        assert ((kept[:, 2] > kept[:, 0]) & (kept[:, 3] > kept[:, 1])).all()
        assert (kept >= 0).all() and (kept[:, [0, 2]] <= width).all() and (kept[:, [1, 3]] <= height).all()
    assert any(len(cut(pseudo, seed).uncertain_boxes) < 2 for seed in range(20))


def test_a_crop_window_always_holds_its_instance_centre():
    from salis.engine.augment import _window_start

    for seed in range(30):
        torch.manual_seed(seed)
        start = _window_start(centre=5, side=4, extent=12)
        assert 2 <= start <= 5 and start <= 5 < start + 4  # windows [2, 6) .. [5, 9)
        torch.manual_seed(seed)
        assert _window_start(centre=1, side=4, extent=12) in (0, 1)  # clipped at the image's edge
        assert _window_start(centre=10, side=4, extent=12) in (7, 8)  # near the far edge: [7, 11) or [8, 12)
    assert _window_start(centre=3, side=12, extent=12) == 0  # the crop is the whole side


@pytest.mark.parametrize("box_labeled", [False, True])
def test_after_scale_jitter_and_crops_each_box_is_its_masks_bounding_box(box_labeled):
    augment = Augmenter(settings(scale_min=0.8, scale_max=2.5, crop_size=9, vflip=0.5, rot90=0.5), model_size=(10, 12))
    shapes, counts = set(), set()
    for seed in range(60):
        out = augment(sample(box_labeled), seed)
        shapes.add(out.image.shape)
        assert out.image.shape[0] <= 9 and out.image.shape[1] <= 9
        assert out.masks.shape[1:] == out.image.shape[:2] and len(out.labels) == len(out.masks) == len(out.boxes)
        assert len(out.masks) >= 1  # the window holds the centre of an instance
        counts.add(len(out.masks))
        for box, mask in zip(out.boxes, out.masks):
            assert mask.any() and box.tolist() == mask_box(mask)
            if box_labeled:  # a filled box stays a filled box, cut or not
                x0, y0, x1, y1 = (int(v) for v in box)
                assert mask[y0:y1, x0:x1].all() and mask.sum() == (x1 - x0) * (y1 - y0)
    # 10 x 12 at 0.8-2.5x, cut to at most 9 x 9 (a shrunk image's 8 rows stay 8); one instance or both kept
    assert shapes == {(8, 9, 3), (9, 8, 3), (9, 9, 3)} and counts == {1, 2}


def test_an_image_without_instances_is_scaled_and_cut_too():
    s = sample()
    empty = dataclasses.replace(s, boxes=s.boxes[:0], labels=s.labels[:0], masks=s.masks[:0])
    out = Augmenter(settings(scale_min=2.0, scale_max=2.0, crop_size=9), model_size=(10, 12))(empty, 0)
    assert out.image.shape == (9, 9, 3) and out.masks.shape == (0, 9, 9) and out.boxes.shape == (0, 4)


def test_training_on_crops_skips_the_models_resize_and_evaluation_does_not():
    from salis.engine.augment import skip_model_resize
    from salis.model.build import seeded_model
    from support import SMALL

    model = seeded_model(SMALL, 2, seed=0)  # min_size = max_size = 64
    image = torch.rand(3, 40, 40)
    with skip_model_resize(model, True):
        model.train()
        assert model.transform([image])[0].image_sizes == [(40, 40)]
        model.eval()
        assert model.transform([image])[0].image_sizes == [(64, 64)]
    model.train()
    assert model.transform([image])[0].image_sizes == [(64, 64)]  # put back


def test_training_with_crops_repeats():
    from salis.engine.training import train_model
    from salis.model.build import seeded_model
    from salis.params import TrainParams
    from support import SMALL
    from support import sample as labeled_sample

    source = [labeled_sample(i, False) for i in range(4)]
    params = TrainParams(min_iterations=2, max_iterations=2, warmup_iterations=1, batch_size=2)
    crops = AugmentParams(scale_min=0.5, scale_max=1.5, crop_size=40)

    def weights() -> torch.Tensor:
        model = seeded_model(SMALL, 2, seed=0)
        train_model(model, source, [], params, seed=3, device=torch.device("cpu"), amp=False, augment=crops)
        assert not model.transform._skip_resize
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    first = weights()
    assert torch.isfinite(first).all() and torch.equal(first, weights())


@pytest.mark.parametrize(("augment", "message"), [
    ({"scale_min": 1.5, "scale_max": 1.2}, r"0.1 <= scale_min <= scale_max <= 4, got 1.5 and 1.2"),
    ({"crop_size": 16}, r"augment.crop_size must be at least 32 pixels"),
    ({"crop_size": 128}, r"augment.crop_size \(128\) is not smaller than the training images, which are at most "
                         r"model.max_size x augment.scale_max = 128 pixels"),
    ({"crop_size": 128, "scale_max": 1.5}, None),
])
def test_scale_and_crop_params(augment, message):
    raw = {"model": {"min_size": 128, "max_size": 128}, "augment": augment}
    if message is None:
        assert parse_params(raw).augment.crop_size == 128
        return
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)
