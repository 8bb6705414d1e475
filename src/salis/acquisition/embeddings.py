"""The per-image embedding artifact of a cycle: `data/cycles/k/embeddings/`, a folder holding

  vectors.npy        N x D float32, row i the embedding of image i of the index (np.load(mmap_mode="r") reads it)
  image_ids.parquet  the index: N image ids (tables.EMBEDDING_INDEX)

Every pool image has a row: the unlabeled ones (embedded while they are scored) and the
labeled ones (embedded only), since core-set measures distances to the labeled set too.
A .npy matrix rather than a parquet list column, so that readers can memory-map the matrix
and go through it in row chunks without loading it. The folder is written as a whole
(atomic_dir), so the matrix and its ids always belong together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from salis.artifacts.atomic import atomic_dir
from salis.artifacts.tables import EMBEDDING_INDEX, read_table, write_table
from salis.errors import InputError

VECTORS = "vectors.npy"
IMAGE_IDS = "image_ids.parquet"


class _HasEmbedding(Protocol):
    image_id: int
    embedding: np.ndarray | None


class EmbeddingWriter:
    """Rows go straight into a memory-mapped .npy in a temp folder: memory stays O(D) per row."""

    def __init__(self, tmp: Path, rows: int) -> None:
        self.rows = rows
        self._tmp = tmp
        self._ids = np.full(rows, -1, dtype=np.int64)
        self._count = 0
        self._matrix: np.memmap | None = None

    def add(self, image_id: int, vector: np.ndarray) -> None:
        if self._count >= self.rows:
            raise ValueError(f"more than the {self.rows} announced embeddings")
        if self._matrix is None:  # D is known from the first vector
            self._matrix = np.lib.format.open_memmap(
                self._tmp / VECTORS, mode="w+", dtype=np.float32, shape=(self.rows, len(vector))
            )
        self._matrix[self._count] = vector
        self._ids[self._count] = image_id
        self._count += 1

    def tap(self, predictions: Iterable[_HasEmbedding]) -> Iterator[_HasEmbedding]:
        """Pass predictions through, recording each one's embedding on the way."""
        for pred in predictions:
            if pred.embedding is None:
                raise ValueError(f"image {pred.image_id} was scored without an embedding")
            self.add(pred.image_id, pred.embedding)
            yield pred

    def finish(self) -> None:
        if self._count != self.rows:
            raise ValueError(f"{self._count} embeddings written, {self.rows} announced")
        if self._matrix is None:  # no image at all
            np.save(self._tmp / VECTORS, np.zeros((0, 0), dtype=np.float32))
        else:
            self._matrix.flush()
            self._matrix = None
        write_table(self._tmp / IMAGE_IDS, pd.DataFrame({"image_id": self._ids}), EMBEDDING_INDEX)


@contextlib.contextmanager
def write_embeddings(folder: Path, rows: int) -> Iterator[EmbeddingWriter]:
    """Yield a writer for exactly `rows` embeddings; the folder replaces the old one on success only."""
    with atomic_dir(folder) as tmp:
        writer = EmbeddingWriter(tmp, rows)
        yield writer
        writer.finish()


def open_embeddings(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image_ids, vectors): the ids in memory, the N x D matrix memory-mapped (read-only)."""
    folder = Path(folder)
    if not (folder / VECTORS).is_file():
        raise InputError(folder / VECTORS, "missing; it is written by the infer_score stage (run `dvc repro`)")
    ids = read_table(folder / IMAGE_IDS, EMBEDDING_INDEX)["image_id"].to_numpy(dtype=np.int64)
    vectors = np.load(folder / VECTORS, mmap_mode="r")
    if vectors.ndim != 2 or vectors.shape[0] != len(ids):
        raise InputError(folder, f"{VECTORS} has shape {vectors.shape} but {IMAGE_IDS} names {len(ids)} images")
    return ids, vectors
