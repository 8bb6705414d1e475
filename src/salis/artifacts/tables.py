"""The contract between stages: every table one stage writes and another reads.

Each table is a `Table`: a pyarrow schema, the stage that writes it and the file format.
All of them go through `write_table` / `read_table`, which check the schema on the way out
and on the way in, and name the producing stage when a file is missing or malformed.
(No torch import here: every layer writes through this module.)
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from salis.artifacts.atomic import atomic_path
from salis.errors import InputError


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    schema: pa.Schema
    producer: str  # the stage that writes it (named in errors)
    format: Literal["parquet", "csv"] = "parquet"

    def rebuild_command(self, path: str | Path) -> str:
        """The `dvc repro` that writes the file at `path` again."""
        path = Path(path)
        stage = self.producer.split()[0]
        cycle = next((int(n) for n in (path.parent.name, path.stem) if n.isdigit()), None)
        if cycle is not None:  # cycle k's file comes from stage@c<k>; cycle 0's from init
            stage = "init" if cycle == 0 else f"{stage}@c{cycle}"
        return f"dvc repro --force --single-item {stage}"

    def unreadable(self, path: str | Path, err: BaseException) -> InputError:
        """The one-line error for a file of this table that cannot be read."""
        detail = "".join(c if c.isprintable() else " " for c in " ".join(str(err).split()))[:200]  # one line
        return InputError(path, f"not a readable {self.name} table ({type(err).__name__}: {detail}); "
                                f"the {self.producer.split()[0]} stage writes it: `{self.rebuild_command(path)}`")

    def batches(self, path: str | Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The parquet file's rows one row group at a time; a corrupt page is one clear line."""
        try:
            for batch in pq.ParquetFile(path).iter_batches(columns=columns):
                yield batch
        except (pa.ArrowException, OSError) as err:
            raise self.unreadable(path, err) from None

    def read_rows(self, path: str | Path, filters: list | None = None) -> pd.DataFrame:
        """pandas rows of the parquet file (optionally filtered); a corrupt file is one clear line."""
        try:
            return pd.read_parquet(path, filters=filters)
        except (pa.ArrowException, OSError) as err:
            raise self.unreadable(path, err) from None

    def empty(self) -> pd.DataFrame:
        return self.schema.empty_table().to_pandas()

    def to_arrow(self, frame: pd.DataFrame) -> pa.Table:
        """`frame` as this table's schema; extra, missing or unconvertible columns are refused."""
        names = list(frame.columns)
        if sorted(names) != sorted(self.schema.names):
            missing = sorted(set(self.schema.names) - set(names))
            extra = sorted(set(names) - set(self.schema.names))
            raise ValueError(f"{self.name} table: missing columns {missing}, unexpected columns {extra}")
        try:
            return pa.Table.from_pandas(frame[self.schema.names], schema=self.schema, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(f"{self.name} table does not fit its schema: {err}") from None


# One row per detection: written by infer_score (streamed), filtered into pseudo-labels.
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
        # MC dropout (NaN when scored with score.mc_passes = 0): see salis.model.mc_dropout
        ("mc_class_var", pa.float32()),
        ("mc_box_disagreement", pa.float32()),
        ("mc_mask_disagreement", pa.float32()),
        ("mc_disagreement", pa.float32()),
        ("x", pa.float32()),
        ("y", pa.float32()),
        ("w", pa.float32()),
        ("h", pa.float32()),
        # the mask: null (area and rle) for a detection scoring below score.mask_min_score, whose
        # mask nothing reads; pseudo-labels, request batches and pictures read higher scores only
        ("area", pa.int64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("rle", pa.string()),
    ]
)
INSTANCES = Table("instances", INSTANCE_SCHEMA, "infer_score")

# One row per scored (unlabeled pool) image; NaN aggregates where an image has no detection.
IMAGES = Table(
    "images",
    pa.schema(
        [
            ("image_id", pa.int64()),
            ("num_detections", pa.int64()),
            ("mean_score", pa.float64()),
            ("max_score", pa.float64()),
            ("mean_entropy", pa.float64()),
            ("max_entropy", pa.float64()),
            ("mean_box_iou", pa.float64()),
            ("mean_mask_iou", pa.float64()),
            ("tsp_score", pa.float64()),
            ("mc_passes", pa.int64()),
            ("mc_disagreement", pa.float64()),
            ("predicted_loss", pa.float64()),
        ]
    ),
    "infer_score",
)

_SELECTED_FIELDS = [
    ("image_id", pa.int64()),
    ("cycle", pa.int64()),  # the cycle whose model picked it (0: init's random set)
    ("sampler", pa.string()),  # what picked it (initial_random for the initial set)
    ("rank", pa.int64()),  # its place in that pick
    ("label_type", pa.string()),  # what the annotator is asked for: mask | box | point | image
    # the annotation seconds the selection priced it at before labeling (value per hour: its own
    # forecast from the detections; else the labeled images' mean); NaN for the initial set
    ("forecast_seconds", pa.float64()),
]
SELECTED = Table("selected", pa.schema(_SELECTED_FIELDS), "select (init for cycle 0)")

LABELED = Table(
    "labeled",
    pa.schema(
        [
            ("image_id", pa.int64()),
            ("cycle", pa.int64()),  # the first cycle whose training uses the image
            ("source", pa.string()),  # simulated_oracle | human
            *_SELECTED_FIELDS[2:],
            ("seconds", pa.float64()),  # annotation time, from the cost model
        ]
    ),
    "annotate (init for cycle 0)",
)

# Detections kept as pseudo-labels for cycle k's training (model k-1's, gated): instance rows.
PSEUDO = Table("pseudo", INSTANCE_SCHEMA, "pseudo_label")

# pseudo.background confident: per image pseudo-labeled for cycle k, the box of every detection of
# model k-1 scoring >= pseudo.background_score, near which its background stays untrusted (the
# rest of the image teaches background); empty otherwise.
PSEUDO_UNCERTAIN = Table(
    "pseudo_uncertain",
    pa.schema([("image_id", pa.int64()), ("score", pa.float32()),
               ("x", pa.float32()), ("y", pa.float32()), ("w", pa.float32()), ("h", pa.float32())]),
    "pseudo_label",
)

# pseudo.mode teacher: the pseudo-labels train@k's EMA teacher made, each image's from the last
# time the teacher labeled it (evaluate@k measures them against the hidden truth); empty otherwise.
TEACHER_PSEUDO = Table(
    "teacher_pseudo",
    pa.schema(
        [
            ("image_id", pa.int64()),
            ("category_id", pa.int64()),
            ("score", pa.float32()),
            ("box_iou", pa.float32()),  # predicted (NaN without IoU heads)
            ("mask_iou", pa.float32()),
            ("iteration", pa.int32()),  # the training iteration that made it (1-based)
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("rle", pa.string()),
        ]
    ),
    "train",
)

# Weak labels turned into training targets for cycle k (weak_label@k): point-guided pseudo-labels
# of point-labeled images and image-label-filtered detections of image-labeled images.
WEAK = Table(
    "weak",
    pa.schema(
        [
            ("image_id", pa.int64()),
            ("category_id", pa.int64()),
            ("score", pa.float32()),  # the detection's class score (NaN for a refined point)
            ("x", pa.float32()),
            ("y", pa.float32()),
            ("w", pa.float32()),
            ("h", pa.float32()),
            ("area", pa.int64()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("rle", pa.string()),
            ("label_type", pa.string()),  # point | image: the weak label it came from
            ("supervision", pa.string()),  # full (every instance known) | positive_only
            ("origin", pa.string()),  # detection (claimed) | refined (the mask head at the point)
        ]
    ),
    "weak_label",
)

# The test split's detections of cycle k's model, only for pictures of the worst test images
# (nothing that trains, scores or selects reads it).
TEST_DETECTIONS = Table(
    "test_detections",
    pa.schema([("image_id", pa.int64()), ("category_id", pa.int64()), ("score", pa.float32()),
               ("height", pa.int32()), ("width", pa.int32()), ("rle", pa.string())]),
    "evaluate",
)

# Per test image: its instances, the model's detections and its mask AP50 (a `dvc plots` source).
TEST_IMAGES = Table(
    "test_images",
    pa.schema([("image_id", pa.int64()), ("instances", pa.int64()), ("detections", pa.int64()),
               ("mask_AP50", pa.float64())]),
    "evaluate",
    format="csv",
)

# Predicted vs true IoU of every test detection (matched: best box IoU > 0.5): a CSV, since `dvc plots` reads it.
IOU_PAIRS = Table(
    "iou_pairs",
    pa.schema(
        [
            ("image_id", pa.int64()),
            ("score", pa.float64()),
            ("matched", pa.bool_()),
            ("pred_box_iou", pa.float64()),
            ("true_box_iou", pa.float64()),
            ("pred_mask_iou", pa.float64()),
            ("true_mask_iou", pa.float64()),
        ]
    ),
    "evaluate",
    format="csv",
)

# Row i of the embedding matrix (salis.acquisition.embeddings) belongs to image_id i.
EMBEDDING_INDEX = Table("embedding_index", pa.schema([("image_id", pa.int64())]), "infer_score")

ALL_TABLES = (INSTANCES, IMAGES, SELECTED, LABELED, PSEUDO, PSEUDO_UNCERTAIN, WEAK, TEST_DETECTIONS, TEST_IMAGES, IOU_PAIRS,
              EMBEDDING_INDEX)


def write_table(path: str | Path, frame: pd.DataFrame, table: Table) -> None:
    """Write `frame` atomically after checking it against `table`'s schema."""
    data = table.to_arrow(frame)
    with atomic_path(path) as tmp:
        if table.format == "csv":
            tmp.write_text(_csv_text(frame[table.schema.names]))
        else:
            pq.write_table(data, tmp)


def _csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format="%.5f")


def read_table(path: str | Path, table: Table, columns: list[str] | None = None) -> pd.DataFrame:
    """The table at `path` as pandas; InputError naming the producing stage when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"missing; the {table.producer} stage writes it (run `dvc repro`)")
    try:
        if table.format == "csv":
            options = pa_csv.ConvertOptions(column_types=table.schema)
            data = pa_csv.read_csv(io.BytesIO(path.read_bytes()), convert_options=options)
        else:
            data = pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise table.unreadable(path, err) from None
    expected = table.schema if columns is None else pa.schema([table.schema.field(c) for c in columns])
    if not data.schema.equals(expected, check_metadata=False):
        raise InputError(
            path,
            f"does not match the {table.name} table schema (has {_describe(data.schema)}, expected "
            f"{_describe(expected)}); re-run the {table.producer} stage",
        )
    return data.to_pandas()


def check_parquet_schema(path: str | Path, table: Table) -> None:
    """Refuse a parquet file whose schema is not `table`'s, without reading its rows."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"missing; the {table.producer} stage writes it (run `dvc repro`)")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise table.unreadable(path, err) from None
    if not schema.equals(table.schema, check_metadata=False):
        raise InputError(path, f"does not match the {table.name} table schema; re-run the {table.producer} stage")


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)
