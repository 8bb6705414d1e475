"""Core-set (Sener & Savarese, ICLR 2018): k-center greedy on per-image embeddings.

Each pick is the unlabeled image farthest (Euclidean) from its nearest center, the centers
being the labeled images and the images picked so far. The embeddings are the FPN levels
average-pooled and concatenated (D = fpn_channels x 4), written by infer_score for every pool
image, labeled ones included (salis.acquisition.embeddings).

Memory is O(N) whatever D: the N x D matrix stays memory-mapped on disk and is read in row
chunks; RAM holds the squared norms and the running distance to the nearest center (two
float64 vectors of N) plus one chunk. Distances use |x|^2 - 2 x.c + |c|^2, one
matrix-vector product per picked center (a matrix-matrix product per block of labeled
centers at the start), never an N x N matrix. Ties go to the lowest image id.
"""

from __future__ import annotations

import numpy as np

from salis.acquisition.embeddings import open_embeddings
from salis.errors import SalisError
from salis.acquisition.samplers.base import Sampler, SelectionContext, register

CHUNK_ROWS = 8192  # rows of the memory-mapped matrix multiplied at a time
CENTER_BLOCK = 64  # labeled centers compared at once when the distances are initialised
# so the largest temporary is CHUNK_ROWS x CENTER_BLOCK distances (8192 x 64 x 12 bytes = 6 MiB)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


def k_center_greedy(
    vectors: np.ndarray,
    ids: np.ndarray,
    candidates: np.ndarray,
    centers: np.ndarray,
    picks: int,
    chunk_rows: int = CHUNK_ROWS,
) -> list[int]:
    """Rows of `vectors` (N x D, may be a memmap) picked greedily, in order.

    candidates / centers: boolean masks over the rows (the unlabeled pool / the labeled set).
    Without any center, the first pick is the lowest id (every distance is infinite).
    """
    candidates = candidates.copy()
    n = vectors.shape[0]
    squares = np.empty(n, dtype=np.float64)
    for start, end in _chunks(n, chunk_rows):
        block = vectors[start:end]  # a view of the memory map: pages, not a heap copy
        squares[start:end] = np.einsum("ij,ij->i", block, block, dtype=np.float64)

    # distance to the nearest center for candidates; -inf elsewhere, so they are never picked
    nearest = np.where(candidates, np.inf, -np.inf)

    def update(center_rows: np.ndarray) -> None:
        center_rows = np.sort(center_rows)  # sorted: a forward read of the memory-mapped rows
        c = np.asarray(vectors[center_rows], dtype=np.float32)
        c_squares = squares[center_rows]
        for start, end in _chunks(n, chunk_rows):
            live = candidates[start:end]
            if not live.any():
                continue
            d = (vectors[start:end] @ c.T).astype(np.float64)  # chunk x centers: x.c
            d *= -2.0
            d += squares[start:end, None]
            d += c_squares[None, :]  # |x|^2 - 2 x.c + |c|^2, in place
            closest = np.maximum(d.min(axis=1), 0.0)  # rounding can go slightly below 0
            nearest[start:end] = np.where(live, np.minimum(nearest[start:end], closest), -np.inf)

    center_rows = np.flatnonzero(centers)
    for start, end in _chunks(len(center_rows), CENTER_BLOCK):
        update(center_rows[start:end])

    chosen: list[int] = []
    for _ in range(min(picks, int(candidates.sum()))):
        farthest = nearest.max()
        tied = np.flatnonzero(nearest == farthest)
        row = int(tied[np.argmin(ids[tied])])
        chosen.append(row)
        candidates[row] = False
        nearest[row] = -np.inf
        update(np.array([row]))
    return chosen


@register("coreset")
class CoresetSampler(Sampler):
    """Core-set: k-center greedy on FPN embeddings, distances to the labeled set included."""

    def _pick(self, ctx: SelectionContext, picks: int) -> list[int]:
        if ctx.embeddings_path is None:
            raise SalisError("sampler 'coreset' needs the cycle's embeddings (written by infer_score)")
        ids, vectors = open_embeddings(ctx.embeddings_path)
        wanted = ctx.images["image_id"].to_numpy(dtype=np.int64)
        candidates = np.isin(ids, wanted)
        centers = np.isin(ids, np.fromiter(ctx.labeled_ids, dtype=np.int64, count=len(ctx.labeled_ids)))
        for name, mask, expected in (("unlabeled", candidates, wanted), ("labeled", centers, ctx.labeled_ids)):
            if int(mask.sum()) != len(expected):
                raise SalisError(
                    f"{ctx.embeddings_path}: embeddings for {len(expected) - int(mask.sum())} {name} images are "
                    "missing; re-run infer_score"
                )
        rows = k_center_greedy(vectors, ids, candidates, centers, picks)
        return ids[rows].tolist()

    def rank(self, ctx: SelectionContext) -> list[int]:
        """Every unlabeled image in greedy order: O(N^2 D), for small pools; `select` picks only the budget."""
        return self._pick(ctx, len(ctx.images))

    def select(self, ctx: SelectionContext, budget: int) -> list[int]:
        chosen = self._pick(ctx, budget)
        unlabeled = set(ctx.images["image_id"].tolist())
        if len(set(chosen)) != len(chosen) or not set(chosen) <= unlabeled or len(chosen) != min(budget, len(unlabeled)):
            raise SalisError(f"sampler {self.name!r} must pick {budget} distinct unlabeled images")
        return chosen

