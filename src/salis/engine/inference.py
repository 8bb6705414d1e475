"""Batched, streamed prediction over a list of images (pool scoring and test evaluation)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks, maskrcnn_inference
from tqdm import tqdm

from salis.data.prepared import PreparedData
from salis.engine.device import autocast
from salis.model.heads import SalisRoIHeads
from salis.errors import SalisError
from salis.seeds import derive_seed

MASK_THRESHOLD = 0.5  # torchvision's mask probabilities are binarised here, as in its references


@dataclasses.dataclass
class Prediction:
    image_id: int
    boxes: np.ndarray  # N x 4 float32, xyxy in image pixels
    scores: np.ndarray  # N float32: class score c
    category_ids: np.ndarray  # N int64
    masks: np.ndarray  # M x H x W bool: the masks of detections mask_index (all N unless scored with a mask floor)
    posteriors: np.ndarray  # N x (C+1) float32, column 0 is background
    box_ious: np.ndarray  # N float32: predicted box IoU b (NaN without IoU heads)
    mask_ious: np.ndarray  # N float32: predicted mask IoU m (NaN without IoU heads)
    # MC dropout, per detection (None when scored without MC passes): see salis.model.mc_dropout
    mc_class_var: np.ndarray | None = None  # N float32: class posterior variance summed over classes
    mc_box_disagreement: np.ndarray | None = None  # N float32: 1 - mean box IoU with the deterministic box
    mc_mask_disagreement: np.ndarray | None = None  # N float32: 1 - mean mask IoU with the deterministic mask
    mc_passes: int = 0
    embedding: np.ndarray | None = None  # D float32: the FPN levels average-pooled and concatenated
    predicted_loss: float = float("nan")  # learning loss's prediction (NaN without the module)
    mask_index: np.ndarray | None = None  # M int64: the detections `masks` belong to (None: all N, in order)

    def __post_init__(self) -> None:
        if self.mask_index is None:
            self.mask_index = np.arange(len(self.masks), dtype=np.int64)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def __len__(self) -> int:
        return len(self.scores)


def _numpy(output: dict[str, torch.Tensor], key: str) -> np.ndarray | None:
    return output[key].float().cpu().numpy() if key in output else None


def paste_binary_masks(probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                       threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """N x H x W bool: torchvision's paste_masks_in_image(probs, boxes, image_size) > threshold, the
    same values, made from its own parts (expand_masks, expand_boxes, the bilinear resize into the
    box) but thresholded inside each box into a bool canvas: no N x H x W float stack, which was
    most of the paste's time and memory on crowded images."""
    masks, scale = expand_masks(probs, padding=1)
    corners = expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()
    height, width = image_size
    out = torch.zeros((len(masks), height, width), dtype=torch.bool, device=probs.device)
    for k, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks, corners)):
        size = (max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1))
        resized = F.interpolate(mask[None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, width), max(y0, 0), min(y1 + 1, height)
        out[k, ya:yb, xa:xb] = resized[ya - y0 : yb - y0, xa - x0 : xb - x0] > threshold
    return out


def _binary_masks(output: dict[str, torch.Tensor], image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The masks the model kept at RoI resolution, pasted at image size and binarised, and the
    detections they belong to."""
    index = output["mask_index"]
    masks = paste_binary_masks(output["roi_masks"].float(), output["boxes"][index].float(), image_size)
    return masks.cpu().numpy(), index.cpu().numpy().astype(np.int64)


def _to_prediction(image_id: int, output: dict[str, torch.Tensor], prepared: PreparedData, mc_passes: int,
                   image_size: tuple[int, int]) -> Prediction:
    labels = output["labels"].cpu().numpy()
    missing = np.full(len(labels), np.nan, dtype=np.float32)
    masks, mask_index = _binary_masks(output, image_size)
    return Prediction(
        image_id=image_id,
        boxes=output["boxes"].float().cpu().numpy(),
        scores=output["scores"].float().cpu().numpy(),
        category_ids=np.array([prepared.category_of(int(label)) for label in labels], dtype=np.int64),
        masks=masks,
        mask_index=mask_index,
        posteriors=output["class_posterior"].float().cpu().numpy(),
        box_ious=output["box_iou"].float().cpu().numpy() if "box_iou" in output else missing,
        mask_ious=output["mask_iou"].float().cpu().numpy() if "mask_iou" in output else missing,
        mc_class_var=_numpy(output, "mc_class_var"),
        mc_box_disagreement=_numpy(output, "mc_box_disagreement"),
        mc_mask_disagreement=_numpy(output, "mc_mask_disagreement"),
        mc_passes=mc_passes if "mc_class_var" in output else 0,
        embedding=_numpy(output, "embedding"),
        predicted_loss=float(output["predicted_loss"]) if "predicted_loss" in output else float("nan"),
    )


def for_inference(model: nn.Module, device: torch.device, channels_last: bool = False) -> nn.Module:
    """The model on `device` in eval mode. channels_last: on the CPU, weights in oneDNN's fast layout
    for convolutions (the mask head's transposed convolution runs ~2.5x faster), at the price of
    scores that move in the 6th decimal; only evaluation asks for it, since its outputs train and
    select nothing (a pseudo-label moved by 1e-6 would change every later cycle)."""
    model.to(device).eval()
    model.to(memory_format=torch.channels_last if channels_last and device.type == "cpu" else torch.contiguous_format)
    return model


def _load_batch(prepared: PreparedData, image_ids: Sequence[int], device: torch.device) -> list[torch.Tensor]:
    return [
        torch.from_numpy(prepared.load_image(i)).permute(2, 0, 1).to(device, torch.float32) / 255.0
        for i in image_ids
    ]


class _ImageBatches(torch.utils.data.Dataset):
    """Batch b of the id list, decoded (in a DataLoader worker when there are workers)."""

    def __init__(self, prepared: PreparedData, image_ids: Sequence[int], batch_size: int) -> None:
        self.prepared, self.image_ids, self.batch_size = prepared, list(image_ids), batch_size

    def __len__(self) -> int:
        return (len(self.image_ids) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, b: int) -> tuple[int, list[int], list[torch.Tensor]]:
        ids = self.image_ids[b * self.batch_size : (b + 1) * self.batch_size]
        return b * self.batch_size, ids, [torch.from_numpy(self.prepared.load_image(i)).permute(2, 0, 1) for i in ids]


def _batches(
    prepared: PreparedData, image_ids: Sequence[int], batch_size: int, device: torch.device, desc: str,
    workers: int = 0,
) -> Iterator[tuple[int, list[int], list[torch.Tensor]]]:
    """(start, ids, image tensors) per batch, in order, with a progress bar over the images;
    with workers > 0 a DataLoader decodes the images in that many processes (pinned memory on CUDA)."""
    dataset = _ImageBatches(prepared, image_ids, batch_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda" and workers > 0,
        persistent_workers=False,
    ) if workers > 0 else (dataset[b] for b in range(len(dataset)))
    with tqdm(total=len(image_ids), desc=desc, unit="img", mininterval=2.0, leave=False) as bar:
        for start, batch_ids, images in loader:
            yield start, batch_ids, [im.to(device, torch.float32, non_blocking=True) / 255.0 for im in images]
            bar.update(len(batch_ids))


@torch.inference_mode()
def predict(
    model: nn.Module,
    prepared: PreparedData,
    image_ids: Sequence[int],
    batch_size: int,
    device: torch.device,
    amp: bool = True,
    desc: str = "predict",
    mc_passes: int = 0,
    mc_dropout_p: float = 0.5,
    seed: int = 0,
    offset: int = 0,
    workers: int = 0,
    mask_min_score: float | None = None,
    channels_last: bool = False,
) -> Iterator[Prediction]:
    """Yield one Prediction per image, in order; only one batch is held in memory at a time.

    mask_min_score: masks only for detections with class score >= it (the mask head, pasting and
    binarising skipped for the others: most of a crowded image's inference time); None: all.
    Masks are pasted here (paste_binary_masks), not by the model's transform. channels_last: see
    for_inference (evaluation only).

    mc_passes > 0 adds the MC-dropout disagreement of every detection, with dropout probability
    mc_dropout_p on the heads' last features; each batch's dropout masks come from a generator
    seeded with (seed, offset + batch start), offset being the list's place in a longer one
    (a shard of the pool), so scores are reproducible however the pool is split and the global
    random state is left as it was. workers: DataLoader processes decoding the images.
    """
    for_inference(model, device, channels_last)
    heads = model.roi_heads
    if not isinstance(heads, SalisRoIHeads):  # the mask floor and MC dropout are salis's
        raise SalisError("prediction needs salis's RoI heads (salis.model.build.build_model)")
    for start, batch_ids, images in _batches(prepared, image_ids, batch_size, device, desc, workers):
        # floor 0 keeps every detection's mask (scores are > model.box_score_thresh >= 0)
        with autocast(device, amp), heads.masks_from(0.0 if mask_min_score is None else mask_min_score):
            if mc_passes:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(derive_seed(seed, 0, "mc_dropout_batch", index=offset + start))
                    with heads.mc_dropout(mc_passes, mc_dropout_p):
                        outputs = model(images)
            else:
                outputs = model(images)
        for image_id, image, output in zip(batch_ids, images, outputs):
            yield _to_prediction(image_id, output, prepared, mc_passes, (int(image.shape[-2]), int(image.shape[-1])))


@torch.inference_mode()
def embed(
    model: nn.Module,
    prepared: PreparedData,
    image_ids: Sequence[int],
    batch_size: int,
    device: torch.device,
    amp: bool = True,
    desc: str = "embed",
    workers: int = 0,
) -> Iterator[tuple[int, np.ndarray]]:
    """(image_id, embedding) per image: the backbone and FPN only, pooled as in inference
    (SalisRoIHeads.image_features), for images that need a vector but no scores."""
    for_inference(model, device)
    for _, batch_ids, images in _batches(prepared, image_ids, batch_size, device, desc, workers):
        with autocast(device, amp):
            batch, _ = model.transform(images)
            features = model.backbone(batch.tensors)
            vectors = torch.cat(model.roi_heads.image_features(features, batch.image_sizes), dim=1)
        for image_id, vector in zip(batch_ids, vectors.float().cpu().numpy()):
            yield image_id, vector


@torch.inference_mode()
def masks_at_boxes(
    model: nn.Module,
    prepared: PreparedData,
    image_id: int,
    boxes: np.ndarray,
    category_ids: Sequence[int],
    device: torch.device,
    amp: bool = True,
) -> np.ndarray:
    """The mask head's masks (N x H x W bool, binarised at MASK_THRESHOLD) for given boxes (N x 4
    xyxy, image pixels) and categories: the mask branch alone, run where the detector did not
    look (a point-labeled instance nothing was detected on)."""
    image = _load_batch(prepared, [image_id], device)[0]
    height, width = image.shape[-2:]
    if len(boxes) == 0:
        return np.zeros((0, height, width), dtype=bool)
    for_inference(model, device)
    with autocast(device, amp):
        batch, _ = model.transform([image])
        features = model.backbone(batch.tensors)
        (new_h, new_w), = batch.image_sizes
        scale = torch.tensor([new_w / width, new_h / height] * 2, device=device)
        scaled = torch.as_tensor(np.asarray(boxes, dtype=np.float32), device=device) * scale
        labels = torch.tensor([prepared.label_of(int(c)) for c in category_ids], device=device)
        heads = model.roi_heads
        logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, [scaled], batch.image_sizes)))
        probs = maskrcnn_inference(logits, [labels])[0]
        pasted = model.transform.postprocess([{"boxes": scaled, "masks": probs}], batch.image_sizes, [(height, width)])
    return (pasted[0]["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy()
