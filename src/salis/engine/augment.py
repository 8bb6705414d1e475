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
its mask's bounding box afterwards and a box-labeled image's filled box stays a box. Each
sample's randomness comes from a seed derived from (run seed, iteration, image), so a run
repeats byte for byte and every rank of a torchrun job draws the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from salis.engine.datasets import Sample
from salis.params import AugmentParams

PRESETS: dict[str, dict[str, float]] = {
    "none": {"vflip": 0.0, "rot90": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0},
    "natural": {"vflip": 0.0, "rot90": 0.0, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02},
    "microscopy": {"vflip": 0.5, "rot90": 0.75, "brightness": 0.2, "contrast": 0.2, "saturation": 0.0, "hue": 0.0},
}


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """The knobs after the preset: probabilities of a vertical flip and of a quarter turn (90, 180
    or 270 degrees, equally likely), and ColorJitter's strengths."""

    vflip: float
    rot90: float
    brightness: float
    contrast: float
    saturation: float
    hue: float

    @classmethod
    def from_params(cls, params: AugmentParams) -> AugmentSettings:
        preset = PRESETS[params.preset]
        return cls(**{k: preset[k] if getattr(params, k) is None else float(getattr(params, k)) for k in preset})

    @property
    def active(self) -> bool:
        return any(dataclasses.astuple(self))


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


class Augmenter:
    """A Sample in, an augmented Sample out (the input is left untouched)."""

    def __init__(self, settings: AugmentSettings) -> None:
        self.settings = settings
        s = settings
        steps: list[v2.Transform] = []
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
        with torch.random.fork_rng(devices=[]):  # the sample's own stream; the global one is left as it was
            torch.manual_seed(seed)
            image, masks, boxes = self.transform(image, masks, boxes)
        return dataclasses.replace(
            sample,
            image=np.ascontiguousarray(image.permute(1, 2, 0).numpy()),
            masks=np.ascontiguousarray(masks.numpy()),
            boxes=np.ascontiguousarray(boxes.as_subclass(torch.Tensor).numpy().astype(np.float32)),
        )
