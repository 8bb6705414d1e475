"""Training augmentation with torchvision.transforms.v2 on tv_tensors: the image, its instance masks
and their boxes go through one transform, so they stay consistent.

Presets (`augment.preset`) fit the data; every knob overrides its preset's value:

- none: nothing beyond train.hflip (the horizontal flip every preset keeps; it is drawn with the
  batch plan, as before presets existed, so `none` trains exactly as earlier versions did);
- natural: photometric jitter (brightness, contrast, saturation, hue) for photographs, whose
  up and down are not interchangeable;
- microscopy: vertical flips and 90-degree rotations (a slide has no up), brightness and
  contrast jitter (stains and exposure vary), no hue (stains carry meaning).

Geometric transforms here are exact (flips, quarter turns): no resampling, so every box equals
its mask's bounding box afterwards and a box-labeled image's filled box stays a box. Scale jitter
and crops (`augment.scale_min`/`scale_max`, `augment.crop_size`; off in every preset) resize the
image to the model's own scale times a random factor and cut a window around a random instance;
masks are resampled nearest-neighbour, each box is then taken from its mask again, and instances
left without a pixel are dropped. The model's resize is skipped while it trains on such images;
evaluation and scoring see full images at the model's scale. Each
sample's randomness comes from a seed derived from (run seed, iteration, image), so a run
repeats byte for byte and every rank of a torchrun job draws the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2

from salis.engine.datasets import Sample
from salis.params import AugmentParams

_NO_SCALE = {"scale_min": 1.0, "scale_max": 1.0, "crop_size": 0.0}
PRESETS: dict[str, dict[str, float]] = {
    "none": {"vflip": 0.0, "rot90": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0} | _NO_SCALE,
    "natural": {"vflip": 0.0, "rot90": 0.0, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02}
    | _NO_SCALE,
    "microscopy": {"vflip": 0.5, "rot90": 0.75, "brightness": 0.2, "contrast": 0.2, "saturation": 0.0, "hue": 0.0}
    | _NO_SCALE,
}


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """The knobs after the preset: probabilities of a vertical flip and of a quarter turn (90, 180
    or 270 degrees, equally likely), ColorJitter's strengths, the scale jitter around the model's
    own scale and the crop side (0: none)."""

    vflip: float
    rot90: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    scale_min: float = 1.0
    scale_max: float = 1.0
    crop_size: int = 0

    @classmethod
    def from_params(cls, params: AugmentParams) -> AugmentSettings:
        preset = PRESETS[params.preset]
        knobs = {k: preset[k] if getattr(params, k) is None else float(getattr(params, k)) for k in preset}
        return cls(**knobs | {"crop_size": int(knobs["crop_size"])})

    @property
    def resizes(self) -> bool:
        """Whether the images are scaled here (jitter or crops) rather than by the model's transform."""
        return self.crop_size > 0 or (self.scale_min, self.scale_max) != (1.0, 1.0)

    @property
    def active(self) -> bool:
        return self.resizes or any((self.vflip, self.rot90, self.brightness, self.contrast, self.saturation, self.hue))


class RandomQuarterTurn(v2.Transform):
    """With probability p, turn the image, masks and boxes by 90, 180 or 270 degrees
    counter-clockwise (torch.rot90: exact, no resampling; boxes by the same map of their corners)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        turn = torch.rand(1).item() < self.p
        return {"k": int(torch.randint(1, 4, (1,)).item()) if turn else 0}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        k = params["k"]
        if k == 0:
            return inpt
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return _turn_boxes(inpt, k)
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return tv_tensors.wrap(torch.rot90(inpt.as_subclass(torch.Tensor), k, dims=(-2, -1)), like=inpt)
        return inpt


def _turn_boxes(boxes: tv_tensors.BoundingBoxes, k: int) -> tv_tensors.BoundingBoxes:
    """XYXY boxes on an H x W canvas after k counter-clockwise quarter turns (canvas W x H for odd k)."""
    height, width = boxes.canvas_size
    x0, y0, x1, y1 = boxes.as_subclass(torch.Tensor).unbind(-1)
    for _ in range(k):  # one turn: (x, y) -> (y, W - x) on the new H' = W, W' = H canvas
        x0, y0, x1, y1 = y0, width - x1, y1, width - x0
        height, width = width, height
    return tv_tensors.BoundingBoxes(torch.stack([x0, y0, x1, y1], -1), format="XYXY", canvas_size=(height, width))


class ModelScaleJitter(v2.Transform):
    """Resize to the scale the model's transform would give the image (short side min_size, long
    side at most max_size) times a factor drawn uniformly from [low, high]: large-scale jitter
    (Ghiasi et al. 2021) around the test scale, so a crop sees objects at the size evaluation does.
    Masks are resampled nearest-neighbour; boxes are scaled (Augmenter then takes them from the masks)."""

    def __init__(self, min_size: int, max_size: int, low: float, high: float) -> None:
        super().__init__()
        self.min_size, self.max_size, self.low, self.high = min_size, max_size, low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = min(self.min_size / min(height, width), self.max_size / max(height, width))
        scale *= self.low + (self.high - self.low) * torch.rand(1).item()
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask, tv_tensors.BoundingBoxes)):
            return self._call_kernel(v2.functional.resize, inpt, size=params["size"], antialias=True)
        return inpt


class InstanceAwareCrop(v2.Transform):
    """A size x size window (the whole side where the image is smaller) around a random instance:
    an instance is drawn uniformly, and the window uniformly among those holding its box's centre,
    so crowded images give crops with instances, not background. Without instances, any window."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_h, crop_w = min(self.size, height), min(self.size, width)
        boxes = next((x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes)), None)
        if boxes is not None and len(boxes):
            x0, y0, x1, y1 = boxes[int(torch.randint(len(boxes), (1,)).item())].tolist()
            cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        else:
            cx, cy = int(torch.randint(width, (1,)).item()), int(torch.randint(height, (1,)).item())
        return {"top": _window_start(cy, crop_h, height), "left": _window_start(cx, crop_w, width),
                "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask, tv_tensors.BoundingBoxes)):
            return self._call_kernel(v2.functional.crop, inpt, **params)
        return inpt


def _window_start(centre: int, side: int, extent: int) -> int:
    """A uniform start among the windows [start, start + side) inside [0, extent) holding centre."""
    low, high = max(0, centre - side + 1), min(centre, extent - side)
    return low + int(torch.randint(max(high - low + 1, 1), (1,)).item())


def boxes_of_masks(masks: np.ndarray) -> np.ndarray:
    """[x0, y0, x1, y1] per mask in pixel edges (x1 = last column + 1); masks must not be empty."""
    if not len(masks):
        return np.zeros((0, 4), dtype=np.float32)
    boxes = masks_to_boxes(torch.from_numpy(masks)).numpy()
    boxes[:, 2:] += 1
    return boxes.astype(np.float32)


def _inside(boxes: tv_tensors.BoundingBoxes) -> np.ndarray:
    """Boxes as float32 xyxy, those a crop left with no area dropped (clamped to the canvas)."""
    array = boxes.as_subclass(torch.Tensor).numpy().astype(np.float32).reshape(-1, 4)
    keep = (array[:, 2] > array[:, 0]) & (array[:, 3] > array[:, 1])
    return np.ascontiguousarray(array[keep])


class Augmenter:
    """A Sample in, an augmented Sample out (the input is left untouched). model_size: the model's
    (min_size, max_size), needed when the settings resize (scale jitter or crops): the images then
    arrive at the model's scale and the model's own resize is skipped in training
    (skip_model_resize)."""

    def __init__(self, settings: AugmentSettings, model_size: tuple[int, int] | None = None) -> None:
        self.settings = settings
        s = settings
        steps: list[v2.Transform] = []
        if s.resizes:
            if model_size is None:
                raise ValueError("scale jitter and crops need the model's (min_size, max_size)")
            steps.append(ModelScaleJitter(*model_size, s.scale_min, s.scale_max))
            if s.crop_size:
                steps.append(InstanceAwareCrop(s.crop_size))
        if s.vflip:
            steps.append(v2.RandomVerticalFlip(s.vflip))
        if s.rot90:
            steps.append(RandomQuarterTurn(s.rot90))
        if s.brightness or s.contrast or s.saturation or s.hue:
            steps.append(v2.ColorJitter(s.brightness or None, s.contrast or None, s.saturation or None, s.hue or None))
        self.transform = v2.Compose(steps)

    def __call__(self, sample: Sample, seed: int) -> Sample:
        height, width = sample.image.shape[:2]
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1))
        masks = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(sample.masks)))
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(sample.boxes).reshape(-1, 4), format="XYXY",
                                         canvas_size=(height, width))
        # a pseudo-labeled image's uncertain boxes ride along (after the boxes: a crop centres on those)
        uncertain = None if sample.uncertain_boxes is None else tv_tensors.BoundingBoxes(
            torch.from_numpy(sample.uncertain_boxes).reshape(-1, 4), format="XYXY", canvas_size=(height, width))
        with torch.random.fork_rng(devices=[]):  # the sample's own stream; the global one is left as it was
            torch.manual_seed(seed)
            if uncertain is None:
                image, masks, boxes = self.transform(image, masks, boxes)
            else:
                image, masks, boxes, uncertain = self.transform(image, masks, boxes, uncertain)
        masks_np = np.ascontiguousarray(masks.numpy())
        boxes_np = np.ascontiguousarray(boxes.as_subclass(torch.Tensor).numpy().astype(np.float32))
        labels = sample.labels
        if self.settings.resizes:
            # resampled or cut: each box becomes its mask's bounding box again, and instances the
            # crop (or a shrink) left without a pixel leave the sample
            keep = masks_np.any(axis=(1, 2))
            masks_np, labels = np.ascontiguousarray(masks_np[keep]), labels[keep]
            boxes_np = boxes_of_masks(masks_np)
        return dataclasses.replace(
            sample,
            image=np.ascontiguousarray(image.permute(1, 2, 0).numpy()),
            masks=masks_np,
            boxes=boxes_np,
            labels=labels,
            uncertain_boxes=None if uncertain is None else _inside(uncertain),
        )


@contextlib.contextmanager
def skip_model_resize(model: nn.Module, skip: bool) -> Iterator[None]:
    """While training on images the Augmenter already scaled, torchvision's transform leaves them
    as they are (GeneralizedRCNNTransform._skip_resize, read in training mode only: evaluation and
    scoring still resize to the model's scale at full size)."""
    transform = model.transform
    before = transform._skip_resize
    transform._skip_resize = skip or before
    try:
        yield
    finally:
        transform._skip_resize = before
