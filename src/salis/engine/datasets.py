"""Training datasets: samples of an image with its instances, from expert labels or from pseudo-labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch
from salis.data.prepared import PreparedData, target_arrays
from salis.geometry import decode_rles, rles_from_counts, xywh_to_xyxy


@dataclasses.dataclass
class Sample:
    image_id: int
    image: np.ndarray  # H x W x 3 uint8
    boxes: np.ndarray  # N x 4 float32, xyxy
    labels: np.ndarray  # N int64, contiguous 1..C
    masks: np.ndarray  # N x H x W uint8
    positive_only: bool = False  # pseudo-labeled: classification loss on positives only

    def flipped(self) -> "Sample":
        width = self.image.shape[1]
        boxes = self.boxes.copy()
        boxes[:, [0, 2]] = width - self.boxes[:, [2, 0]]
        return dataclasses.replace(
            self,
            image=np.ascontiguousarray(self.image[:, ::-1]),
            boxes=boxes,
            masks=np.ascontiguousarray(self.masks[:, :, ::-1]),
        )

    def to_model_input(self, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = torch.from_numpy(self.image).permute(2, 0, 1).to(device, torch.float32) / 255.0
        target = {
            "boxes": torch.from_numpy(self.boxes).to(device, torch.float32).reshape(-1, 4),
            "labels": torch.from_numpy(self.labels).to(device, torch.int64),
            "masks": torch.from_numpy(self.masks).to(device, torch.uint8),
            "positive_only": torch.tensor(self.positive_only, device=device),
        }
        return image, target


class LabeledSamples:
    """Expert-labeled pool images with their labels from the cycle's label store.

    Samples are decoded once and kept: the labeled set is the small, expensive one.
    """

    def __init__(self, prepared: PreparedData, image_ids: list[int], labels: dict[int, list[dict]]) -> None:
        missing = [i for i in image_ids if int(i) not in labels]
        if missing:
            raise ValueError(f"no labels for labeled images {missing[:5]}")
        self.prepared = prepared
        self.image_ids = list(image_ids)
        self.labels = labels
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        if image_id not in self._cache:
            image = self.prepared.load_image(image_id)
            arrays = target_arrays(self.labels[int(image_id)], image.shape[0], image.shape[1], self.prepared.label_of)
            self._cache[image_id] = Sample(image_id, image, **arrays)
        return self._cache[image_id]


class PseudoSamples:
    """Pseudo-labeled images from a pseudo table (one row per kept detection, mask as RLE).

    Decoded on demand: the pseudo set can be most of the pool.
    """

    def __init__(self, prepared: PreparedData, table: pd.DataFrame) -> None:
        self.prepared = prepared
        self.groups = {int(k): g for k, g in table.groupby("image_id", sort=True)} if len(table) else {}
        self.image_ids = sorted(self.groups)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        rows = self.groups[image_id]
        image = self.prepared.load_image(image_id)
        height, width = image.shape[:2]
        masks = decode_rles(rles_from_counts(rows["rle"], height, width), height, width)
        boxes = xywh_to_xyxy(rows[["x", "y", "w", "h"]].to_numpy(np.float32))
        labels = np.array([self.prepared.label_of(int(c)) for c in rows["category_id"]], dtype=np.int64)
        return Sample(image_id, image, boxes, labels, masks, positive_only=True)
