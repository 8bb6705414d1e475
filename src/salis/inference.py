"""Batched, streamed prediction over a list of images (pool scoring and test evaluation)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from salis.data.prepared import PreparedData
from salis.device import autocast

MASK_THRESHOLD = 0.5  # torchvision's mask probabilities are binarised here, as in its references


@dataclasses.dataclass
class Prediction:
    image_id: int
    boxes: np.ndarray  # N x 4 float32, xyxy in image pixels
    scores: np.ndarray  # N float32: class score c
    category_ids: np.ndarray  # N int64
    masks: np.ndarray  # N x H x W bool
    posteriors: np.ndarray  # N x (C+1) float32, column 0 is background
    box_ious: np.ndarray  # N float32: predicted box IoU b (NaN without IoU heads)
    mask_ious: np.ndarray  # N float32: predicted mask IoU m (NaN without IoU heads)

    def __len__(self) -> int:
        return len(self.scores)


def _to_prediction(image_id: int, output: dict[str, torch.Tensor], prepared: PreparedData) -> Prediction:
    labels = output["labels"].cpu().numpy()
    missing = np.full(len(labels), np.nan, dtype=np.float32)
    return Prediction(
        image_id=image_id,
        boxes=output["boxes"].float().cpu().numpy(),
        scores=output["scores"].float().cpu().numpy(),
        category_ids=np.array([prepared.category_of(int(label)) for label in labels], dtype=np.int64),
        masks=(output["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy(),
        posteriors=output["class_posterior"].float().cpu().numpy(),
        box_ious=output["box_iou"].float().cpu().numpy() if "box_iou" in output else missing,
        mask_ious=output["mask_iou"].float().cpu().numpy() if "mask_iou" in output else missing,
    )


@torch.inference_mode()
def predict(
    model: nn.Module,
    prepared: PreparedData,
    image_ids: Sequence[int],
    batch_size: int,
    device: torch.device,
    amp: bool = True,
    desc: str = "predict",
) -> Iterator[Prediction]:
    """Yield one Prediction per image, in order; only one batch is held in memory at a time."""
    model.to(device).eval()
    with tqdm(total=len(image_ids), desc=desc, unit="img", mininterval=2.0, leave=False) as bar:
        for start in range(0, len(image_ids), batch_size):
            batch_ids = list(image_ids[start : start + batch_size])
            images = [
                torch.from_numpy(prepared.load_image(i)).permute(2, 0, 1).to(device, torch.float32) / 255.0
                for i in batch_ids
            ]
            with autocast(device, amp):
                outputs = model(images)
            for image_id, output in zip(batch_ids, outputs):
                yield _to_prediction(image_id, output, prepared)
            bar.update(len(batch_ids))


def entropy(posteriors: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of class posteriors, background included."""
    p = np.clip(posteriors.astype(np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)
