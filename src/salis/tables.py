"""Schemas of the parquet tables the stages hand to each other (no torch import here)."""

import pyarrow as pa

# One row per detection: written by infer_score, filtered into pseudo-labels.
INSTANCE_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("det", pa.int32()),
        ("category_id", pa.int64()),
        ("score", pa.float32()),
        ("entropy", pa.float32()),
        ("box_iou", pa.float32()),
        ("mask_iou", pa.float32()),
        ("tsp_score", pa.float32()),
        # MC dropout (NaN when scored with score.mc_passes = 0): see salis.model.heads
        ("mc_class_var", pa.float32()),
        ("mc_box_disagreement", pa.float32()),
        ("mc_mask_disagreement", pa.float32()),
        ("mc_disagreement", pa.float32()),
        ("x", pa.float32()),
        ("y", pa.float32()),
        ("w", pa.float32()),
        ("h", pa.float32()),
        ("area", pa.int64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("rle", pa.string()),
    ]
)
