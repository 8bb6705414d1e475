"""Value per hour: a sampler's ranking re-ordered by what each image is worth per annotator second.

Cost-aware selection after BLAD (Wang et al., 2022) and ComPAS (Xie et al., 2023): an image's value
is its usefulness divided by its predicted annotation cost. Samplers' scores have no common unit
(entropy in nats, tsp lowest-first), so usefulness is the image's place in the sampler's ranking,
u = (N - r) / N for rank r = 0..N-1 of N images: every sampler (random and coreset included) keeps
its order of preference, and cost decides between images it values alike.

An image's predicted seconds come from the model's detections, never from its labels:

- predicted instances: the sum of its detections' class scores (a soft count: no image of a
  crowded pool counts 0 because the model is unsure), scaled so the scored images' mean equals the
  labeled images' mean instance count (the model's bias in counting cancels out);
- the label kind prices them (LabelKind.predicted_image_seconds); corrected masks also read the
  predicted mask IoU of each detection the request would pre-annotate (score >=
  annotation.pre_annotation_score): expected accepted, fixed or deleted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from salis.annotation.cost import CostModel
from salis.params import AnnotationParams


@dataclass(frozen=True)
class DetectionForecast:
    """What the detections of one cycle say about each scored image's annotation cost."""

    soft_counts: dict[int, float]  # sum of class scores per image (0 for an image without detections)
    pre_mask_ious: dict[int, np.ndarray]  # predicted mask IoU of each pre-annotation-worthy detection

    @classmethod
    def read(cls, instances_path: Path, image_ids: Sequence[int], pre_annotation_score: float) -> "DetectionForecast":
        """Streams instances.parquet one row group at a time (columns image_id, score, mask_iou)."""
        wanted = {int(i) for i in image_ids}
        counts = {i: 0.0 for i in wanted}
        ious: dict[int, list[np.ndarray]] = {i: [] for i in wanted}
        parquet = pq.ParquetFile(instances_path)
        for group in range(parquet.num_row_groups):
            frame = parquet.read_row_group(group, columns=["image_id", "score", "mask_iou"]).to_pandas()
            frame = frame[frame["image_id"].isin(wanted)]
            for image_id, score in frame.groupby("image_id")["score"].sum().items():
                counts[int(image_id)] += float(score)
            shown = frame[frame["score"] >= pre_annotation_score]
            for image_id, mask_iou in shown.groupby("image_id")["mask_iou"]:
                ious[int(image_id)].append(mask_iou.to_numpy(dtype=np.float64))
        return cls(counts, {i: np.concatenate(parts) if parts else np.zeros(0) for i, parts in ious.items()})

    def predicted_instances(self, labeled_mean: float) -> dict[int, float]:
        """Soft counts scaled to the labeled images' mean; all at that mean where nothing is detected."""
        mean = float(np.mean(list(self.soft_counts.values()))) if self.soft_counts else 0.0
        if mean <= 0.0:
            return {i: float(labeled_mean) for i in self.soft_counts}
        return {i: count * labeled_mean / mean for i, count in self.soft_counts.items()}


def predicted_seconds(forecast: DetectionForecast, label_type: str, labeled_mean: float, num_categories: int,
                      cost: CostModel, annotation: AnnotationParams) -> dict[int, float]:
    """Each scored image's predicted seconds with `label_type` labels."""
    instances = forecast.predicted_instances(labeled_mean)
    return {
        image_id: cost.predicted_image_seconds(n, num_categories, label_type, forecast.pre_mask_ious[image_id], annotation)
        for image_id, n in instances.items()
    }


def per_hour_order(ranked: Sequence[int], seconds: Mapping[int, float]) -> list[int]:
    """`ranked` (the sampler's whole ranking) re-ordered by u / seconds, highest first; ties keep the
    sampler's order. Every image must have seconds > 0."""
    n = len(ranked)
    value = np.array([(n - r) / n / seconds[int(i)] for r, i in enumerate(ranked)], dtype=np.float64)
    order = np.lexsort((np.arange(n), -value))
    return [int(ranked[k]) for k in order]
