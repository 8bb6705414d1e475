"""infer_score: predict on every unlabeled pool image, stream per-instance and per-image tables.

instances.parquet (tables.INSTANCES): one row per detection (scores, box, mask as RLE), written
in row groups as the pool is scored, so memory stays flat however large the pool.
images.parquet (tables.IMAGES): one row per scored image, images without detections included.
The per-image embeddings go to their own artifact (salis.acquisition.embeddings), through
write_embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from salis.acquisition.measures import entropy, image_score, instance_scores, mc_disagreement
from salis.artifacts.atomic import atomic_path
from salis.artifacts.tables import IMAGES, INSTANCES, write_table
from salis.engine.inference import Prediction
from salis.geometry import encode_masks, xyxy_to_xywh

ROWS_PER_GROUP = 4096


def mc_columns(pred: Prediction) -> dict[str, np.ndarray]:
    """The three MC-dropout disagreements per detection and their combination
    (measures.mc_disagreement). All NaN without MC passes."""
    n = len(pred)
    if pred.mc_class_var is None or pred.mc_box_disagreement is None or pred.mc_mask_disagreement is None:
        nan = np.full(n, np.nan, dtype=np.float32)
        return {"mc_class_var": nan, "mc_box_disagreement": nan, "mc_mask_disagreement": nan, "mc_disagreement": nan}
    class_var, box, mask = (np.asarray(a, dtype=np.float64) for a in
                            (pred.mc_class_var, pred.mc_box_disagreement, pred.mc_mask_disagreement))
    return {"mc_class_var": class_var, "mc_box_disagreement": box, "mc_mask_disagreement": mask,
            "mc_disagreement": mc_disagreement(class_var, box, mask)}


def instance_rows(pred: Prediction) -> dict[str, list]:
    """Columns for one image's detections; the mask RLE-encoded, its area and RLE null for a
    detection scored without its mask (below score.mask_min_score)."""
    n = len(pred)
    mc = mc_columns(pred)
    height, width = pred.image_size if n else (0, 0)
    xywh = xyxy_to_xywh(pred.boxes)
    areas: list[int | None] = [None] * n
    rles: list[str | None] = [None] * n
    for d, area, counts in zip(pred.mask_index.tolist(), pred.masks.sum(axis=(1, 2)).tolist(),
                               encode_masks(pred.masks)):
        areas[d], rles[d] = int(area), counts
    return {
        "image_id": [pred.image_id] * n,
        "det": list(range(n)),
        "category_id": pred.category_ids.tolist(),
        "score": pred.scores.tolist(),
        "entropy": entropy(pred.posteriors).tolist(),
        "box_iou": pred.box_ious.tolist(),
        "mask_iou": pred.mask_ious.tolist(),
        "tsp_score": tsp_instance_scores(pred).tolist(),
        **{name: values.tolist() for name, values in mc.items()},
        "x": xywh[:, 0].tolist(),
        "y": xywh[:, 1].tolist(),
        "w": xywh[:, 2].tolist(),
        "h": xywh[:, 3].tolist(),
        "area": areas,
        "height": [int(height)] * n,
        "width": [int(width)] * n,
        "rle": rles,
    }


def tsp_instance_scores(pred: Prediction) -> np.ndarray:
    """s = exp(-std(c, b, m)) * mean(c, b, m) per detection; NaN without IoU heads."""
    return instance_scores(np.column_stack([pred.scores, pred.box_ious, pred.mask_ious]))


def image_row(pred: Prediction) -> dict[str, float | int]:
    """Per-image aggregates; NaN where an image has no detection (samplers decide what that means),
    except the TSP score S, which the method defines as 0 for an image without detections."""
    n = len(pred)
    ent = entropy(pred.posteriors) if n else np.array([])
    mc = mc_columns(pred)["mc_disagreement"]
    mean = lambda values: float(values.mean()) if n else float("nan")  # noqa: E731
    return {
        "image_id": pred.image_id,
        "num_detections": n,
        "mean_score": mean(pred.scores),
        "max_score": float(pred.scores.max()) if n else float("nan"),
        "mean_entropy": mean(ent),
        "max_entropy": float(ent.max()) if n else float("nan"),
        "mean_box_iou": mean(pred.box_ious),
        "mean_mask_iou": mean(pred.mask_ious),
        "tsp_score": image_score(tsp_instance_scores(pred)),
        "mc_passes": pred.mc_passes,
        "mc_disagreement": mean(mc),
        "predicted_loss": pred.predicted_loss,
    }


def instance_table(pred: Prediction) -> pa.Table:
    """One image's detections as an INSTANCES table."""
    return pa.table(instance_rows(pred), schema=INSTANCES.schema)


def stream_instances(per_image: Iterable[pa.Table], instances_path: Path) -> None:
    """Write one table per image, in order, into instances.parquet atomically: a row group is cut
    after the image that brings it to ROWS_PER_GROUP rows, and the last (possibly empty) one at the
    end, so the same images give the same bytes however they were computed (salis.acquisition.shards)."""
    with atomic_path(instances_path) as tmp:
        with pq.ParquetWriter(tmp, INSTANCES.schema) as writer:
            pending: list[pa.Table] = []
            rows = 0
            for table in per_image:
                pending.append(table)
                rows += len(table)
                if rows >= ROWS_PER_GROUP:
                    writer.write_table(pa.concat_tables(pending).combine_chunks())
                    pending, rows = [], 0
            # also writes the schema when there were no detections at all
            writer.write_table(pa.concat_tables(pending).combine_chunks() if pending else INSTANCES.schema.empty_table())


def write_image_table(image_rows: list[dict], images_path: Path) -> pd.DataFrame:
    images = IMAGES.to_arrow(pd.DataFrame(image_rows, columns=IMAGES.schema.names)).to_pandas()
    write_table(images_path, images, IMAGES)
    return images


def write_score_tables(predictions: Iterable[Prediction], instances_path: Path, images_path: Path) -> pd.DataFrame:
    """Stream predictions into instances.parquet; write images.parquet; both atomically."""
    image_rows: list[dict] = []

    def tables() -> Iterable[pa.Table]:
        for pred in predictions:
            image_rows.append(image_row(pred))
            yield instance_table(pred)

    stream_instances(tables(), instances_path)
    return write_image_table(image_rows, images_path)
