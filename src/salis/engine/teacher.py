"""A mean teacher (pseudo.mode: teacher): pseudo-labels made on the fly, every iteration.

An exponential-moving-average copy of the model being trained (Tarvainen & Valpola 2017; Unbiased
Teacher, Liu et al. 2021; Soft Teacher, Xu et al. 2021) labels each unlabeled image of the pseudo
batch from its weak view (the plan's flip only); its detections that pass the gate (TSP's triplet:
class score, predicted box IoU, predicted mask IoU; Polite Teacher gates by mask score alike)
become targets, and the student learns them from a strong view (the same image and targets through
salis.engine.augment's strong preset), with TSP's positive-only loss (the teacher's background is
not trusted; with pseudo.background confident, only near the teacher's detections) and no IoU-head
loss (targets the model made itself). After each optimiser step the
teacher moves towards the student: t <- decay * t + (1 - decay) * s; buffers (BatchNorm's running
statistics) are copied. Every rank keeps its own teacher; the students agree after DDP's averaged
step, so the teachers do too.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from salis.engine.datasets import Sample
from salis.engine.device import autocast
from salis.engine.inference import paste_binary_masks
from salis.geometry import encode_masks

# c, b, m per detection -> which pass (salis.loop.gate.Gate.passes)
Passes = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class TeacherSettings:
    decay: float  # EMA decay per step, in [0, 1)
    passes: Passes
    min_score: float  # masks are made only for detections scoring at least this (the gate's score)
    # pseudo.background confident: background is trusted away from the teacher's detections
    # scoring at least this (the sample's uncertain_boxes); None: positive-only, no background
    background_score: float | None = None


class Teacher:
    """The EMA copy of a student and the pseudo-labels it makes."""

    def __init__(self, student: nn.Module, settings: TeacherSettings) -> None:
        self.settings = settings
        self.model = copy.deepcopy(student).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.instances = 0  # pseudo-labels made over the cycle
        self.images = 0  # images that got at least one
        # each image's pseudo-labels from the last time it was labeled (bounded by the pool, not
        # by the iterations): what evaluate measures against the hidden truth
        self.latest: dict[int, list[dict]] = {}

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """t <- decay * t + (1 - decay) * s for every parameter; buffers copied from the student."""
        decay = self.settings.decay
        for mine, theirs in zip(self.model.parameters(), student.parameters()):
            mine.mul_(decay).add_(theirs.detach(), alpha=1.0 - decay)
        for mine, theirs in zip(self.model.buffers(), student.buffers()):
            mine.copy_(theirs)

    @torch.inference_mode()
    def pseudo_label(self, samples: Sequence[Sample], device: torch.device, amp: bool,
                     iteration: int = 0) -> list[Sample]:
        """Each sample's image with the teacher's gated detections as its targets (positive-only,
        own labels); images where nothing passes are left out. `iteration` tags what it records."""
        if not samples:
            return []
        self.model.eval()
        heads = self.model.roi_heads
        images = [torch.from_numpy(s.image).permute(2, 0, 1).to(device, torch.float32) / 255.0 for s in samples]
        with autocast(device, amp), heads.masks_from(self.settings.min_score):
            outputs = self.model(images)
        out = []
        for sample, output in zip(samples, outputs):
            target = self._targets(output, sample.image.shape[:2])
            self.latest.pop(int(sample.image_id), None)  # labeled again: the old labels are stale
            if target is not None:
                boxes, labels, masks, scores = target
                # recorded as the image is stored: the weak view may be the plan's mirror image
                self._record(int(sample.image_id), labels, masks[:, :, ::-1] if sample.hflipped else masks, scores,
                             iteration)
                out.append(Sample(sample.image_id, sample.image, boxes, labels, masks, positive_only=True, own_labels=True,
                                  uncertain_boxes=self._uncertain(output)))
                self.instances += len(labels)
                self.images += 1
        return out

    def _uncertain(self, output: dict[str, torch.Tensor]) -> np.ndarray | None:
        if self.settings.background_score is None:
            return None
        near = output["scores"] >= self.settings.background_score
        return np.ascontiguousarray(output["boxes"][near].float().cpu().numpy().reshape(-1, 4))

    def _targets(self, output: dict[str, torch.Tensor], size: tuple[int, int]) -> tuple | None:
        scores = output["scores"].float().cpu().numpy()
        missing = np.full(len(scores), np.nan)
        box_iou = output["box_iou"].float().cpu().numpy() if "box_iou" in output else missing
        mask_iou = output["mask_iou"].float().cpu().numpy() if "mask_iou" in output else missing
        index = output["mask_index"].cpu().numpy().astype(np.int64)  # the detections with a mask
        keep = self.settings.passes(scores[index], box_iou[index], mask_iou[index])
        if not keep.any():
            return None
        chosen = torch.from_numpy(np.flatnonzero(keep))
        boxes = output["boxes"][index][chosen].float()
        masks = paste_binary_masks(output["roi_masks"][chosen].float(), boxes, size).cpu().numpy()
        filled = masks.reshape(len(masks), -1).any(axis=1)  # a mask binarised to nothing has no box to learn
        if not filled.any():
            return None
        labels = output["labels"][index][chosen].cpu().numpy().astype(np.int64)
        picked = index[np.flatnonzero(keep)][filled]
        scores = np.stack([scores[picked], box_iou[picked], mask_iou[picked]], axis=1)  # c, b, m
        return (boxes.cpu().numpy()[filled].astype(np.float32), labels[filled], masks[filled].astype(np.uint8), scores)

    def _record(self, image_id: int, labels: np.ndarray, masks: np.ndarray, cbm: np.ndarray, iteration: int) -> None:
        height, width = masks.shape[1:]
        self.latest[image_id] = [
            {"image_id": image_id, "label": int(label), "score": float(c), "box_iou": float(b), "mask_iou": float(m),
             "iteration": iteration, "height": height, "width": width, "rle": rle}
            for label, (c, b, m), rle in zip(labels, cbm, encode_masks(masks))]

    def latest_rows(self) -> list[dict]:
        """The recorded pseudo-labels, image by image in id order."""
        return [row for image_id in sorted(self.latest) for row in self.latest[image_id]]
