"""Training datasets: samples of an image with its instances, from expert labels (masks or boxes),
from weak labels turned into targets, or from pseudo-labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch
from salis.data.prepared import PreparedData, target_arrays
from salis.geometry import decode_rles, rles_from_counts, xywh_to_xyxy
from salis.model.positive_only import UNCERTAIN_BOXES


@dataclasses.dataclass
class Sample:
    image_id: int
    image: np.ndarray  # H x W x 3 uint8
    boxes: np.ndarray  # N x 4 float32, xyxy
    labels: np.ndarray  # N int64, contiguous 1..C
    masks: np.ndarray  # N x H x W uint8 (the filled boxes when mask_from_box)
    positive_only: bool = False  # pseudo-labeled: classification loss on positives only
    mask_from_box: bool = False  # box-labeled: the mask head learns from the boxes (BoxInst)
    own_labels: bool = False  # targets the model made itself (no IoU-head loss)
    hflipped: bool = False  # seen mirrored (flipped()): what is recorded about it is flipped back
    # positive_only with pseudo.background confident: K x 4 xyxy boxes of the labeling model's
    # detections; background is trusted away from them (salis.model.positive_only)
    uncertain_boxes: np.ndarray | None = None

    def flipped(self) -> "Sample":
        width = self.image.shape[1]
        return dataclasses.replace(
            self,
            image=np.ascontiguousarray(self.image[:, ::-1]),
            boxes=_mirrored(self.boxes, width),
            uncertain_boxes=None if self.uncertain_boxes is None else _mirrored(self.uncertain_boxes, width),
            masks=np.ascontiguousarray(self.masks[:, :, ::-1]),
            hflipped=not self.hflipped,
        )

    def to_model_input(self, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = torch.from_numpy(self.image).permute(2, 0, 1).to(device, torch.float32) / 255.0
        target = {
            "boxes": torch.from_numpy(self.boxes).to(device, torch.float32).reshape(-1, 4),
            "labels": torch.from_numpy(self.labels).to(device, torch.int64),
            "masks": torch.from_numpy(self.masks).to(device, torch.uint8),
            "positive_only": torch.tensor(self.positive_only, device=device),
        }
        if self.mask_from_box:
            target["mask_from_box"] = torch.tensor(True, device=device)
        if self.own_labels:
            target["own_labels"] = torch.tensor(True, device=device)
        if self.uncertain_boxes is not None:
            target[UNCERTAIN_BOXES] = torch.from_numpy(self.uncertain_boxes).to(device, torch.float32).reshape(-1, 4)
        return image, target


def _mirrored(boxes: np.ndarray, width: int) -> np.ndarray:
    out = boxes.copy()
    out[:, [0, 2]] = width - boxes[:, [2, 0]]
    return out


def _sizes_of(prepared: PreparedData, image_ids: list[int]) -> list[tuple[int, int]]:
    infos = (prepared.image_info(int(i)) for i in image_ids)
    return [(int(info["height"]), int(info["width"])) for info in infos]


def sample_sizes(source) -> list[tuple[int, int]]:
    """(height, width) of every sample of a source, from the prepared data's image table where the
    source knows it (nothing decoded), else from the samples themselves (a list of Samples)."""
    if hasattr(source, "image_sizes"):
        return source.image_sizes()
    return [tuple(source[i].image.shape[:2]) for i in range(len(source))]


class LabeledSamples:
    """Expert-labeled pool images with their labels from the cycle's label store: full masks, or
    boxes (the ids in box_supervised), whose targets are the filled boxes.

    Samples are decoded once and kept: the labeled set is the small, expensive one.
    """

    def __init__(
        self, prepared: PreparedData, image_ids: list[int], labels: dict[int, list[dict]],
        box_supervised: set[int] | None = None,
    ) -> None:
        missing = [i for i in image_ids if int(i) not in labels]
        if missing:
            raise ValueError(f"no labels for labeled images {missing[:5]}")
        self.prepared = prepared
        self.image_ids = list(image_ids)
        self.labels = labels
        self.box_supervised = {int(i) for i in box_supervised or ()}
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_sizes(self) -> list[tuple[int, int]]:
        return _sizes_of(self.prepared, self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        if image_id not in self._cache:
            image = self.prepared.load_image(image_id)
            anns = self.labels[int(image_id)]
            if int(image_id) in self.box_supervised:
                arrays = box_target_arrays(anns, image.shape[0], image.shape[1], self.prepared.label_of)
                self._cache[image_id] = Sample(image_id, image, **arrays, mask_from_box=True)
            else:
                arrays = target_arrays(anns, image.shape[0], image.shape[1], self.prepared.label_of)
                self._cache[image_id] = Sample(image_id, image, **arrays)
        return self._cache[image_id]


def box_target_arrays(anns: list[dict], height: int, width: int, label_of) -> dict[str, np.ndarray]:
    """Targets of a box-labeled image: its boxes, labels, and each box filled as its "mask" (the
    pixels whose centres lie inside it), which BoxInst's losses project onto the RoIs."""
    boxes = xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float32)) if anns else np.zeros((0, 4), np.float32)
    masks = np.zeros((len(anns), height, width), dtype=np.uint8)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        rows = slice(max(int(np.round(y0)), 0), min(int(np.round(y1)), height))
        cols = slice(max(int(np.round(x0)), 0), min(int(np.round(x1)), width))
        mask[rows, cols] = 1
    labels = np.array([label_of(a["category_id"]) for a in anns], dtype=np.int64)
    return {"boxes": boxes, "labels": labels, "masks": masks}


class EmptySamples:
    """Images known to hold no instance (a weak label saying so): background-only targets."""

    def __init__(self, prepared: PreparedData, image_ids: list[int]) -> None:
        self.prepared, self.image_ids = prepared, list(image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_sizes(self) -> list[tuple[int, int]]:
        return _sizes_of(self.prepared, self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        image = self.prepared.load_image(self.image_ids[index])
        arrays = target_arrays([], image.shape[0], image.shape[1], self.prepared.label_of)
        return Sample(self.image_ids[index], image, **arrays, own_labels=True)


class ConcatSamples:
    """Several sample sources as one (the labeled batch draws from all of them)."""

    def __init__(self, *sources) -> None:
        self.sources = [s for s in sources if len(s)]
        self._starts = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def image_sizes(self) -> list[tuple[int, int]]:
        return [size for source in self.sources for size in sample_sizes(source)]

    def __getitem__(self, index: int) -> Sample:
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.sources[k][index - int(self._starts[k])]


class PseudoSamples:
    """Pseudo-labeled images from a pseudo table (one row per kept detection, mask as RLE).

    positive_only (TSP's pseudo-labels): the image's background is not trusted; False where every
    instance is known (point-guided pseudo-labels, complete image-level counts). Decoded on
    demand: the pseudo set can be most of the pool.
    """

    def __init__(self, prepared: PreparedData, table: pd.DataFrame, positive_only: bool = True,
                 uncertain: pd.DataFrame | None = None) -> None:
        """uncertain (pseudo.background confident): a PSEUDO_UNCERTAIN table, the boxes near which
        each image's background stays untrusted; None: its whole background is (positive-only)."""
        self.prepared = prepared
        self.positive_only = positive_only
        self.uncertain = None if uncertain is None else {
            int(k): xywh_to_xyxy(g[["x", "y", "w", "h"]].to_numpy(np.float32)) for k, g in uncertain.groupby("image_id")}
        if len(table):  # a detection whose mask binarised to nothing has no box to train on
            table = table[(table["area"] > 0) & (table["w"] > 0) & (table["h"] > 0)]
        self.groups = {int(k): g for k, g in table.groupby("image_id", sort=True)} if len(table) else {}
        self.image_ids = sorted(self.groups)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_sizes(self) -> list[tuple[int, int]]:
        return _sizes_of(self.prepared, self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        rows = self.groups[image_id]
        image = self.prepared.load_image(image_id)
        height, width = image.shape[:2]
        masks = decode_rles(rles_from_counts(rows["rle"], height, width), height, width)
        boxes = xywh_to_xyxy(rows[["x", "y", "w", "h"]].to_numpy(np.float32))
        labels = np.array([self.prepared.label_of(int(c)) for c in rows["category_id"]], dtype=np.int64)
        uncertain = None if self.uncertain is None else self.uncertain.get(image_id, np.zeros((0, 4), np.float32))
        return Sample(image_id, image, boxes, labels, masks, positive_only=self.positive_only, own_labels=True,
                      uncertain_boxes=uncertain)
