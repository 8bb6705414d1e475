"""TypiClust (Hacohen et al., ICML 2022): at a small budget, label typical images, one per cluster.

With few labels, a model learns most from images that stand for many others, not from the odd
ones uncertainty would pick. The pool's embeddings (L2-normalised) are clustered by k-means into
as many clusters as images wanted (scipy's kmeans2, k-means++ start, seeded); from each cluster,
largest first, the image of highest typicality is taken, typicality being the inverse mean
distance to its K nearest images of the cluster (K = min(NEIGHBOURS, half the cluster), as in
TypiClust's code). Clusters k-means leaves empty are made up for by the most typical images not
taken yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.cluster.vq import kmeans2

NEIGHBOURS = 20  # TypiClust's K for typicality
_ROWS = 1024  # distance rows computed at a time: memory O(_ROWS x N), not O(N^2)


def typicality(vectors: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """1 / (mean Euclidean distance to the `neighbours` nearest other rows), per row."""
    x = np.asarray(vectors, dtype=np.float64)
    n = len(x)
    k = min(neighbours, n - 1)
    if k < 1:
        return np.ones(n)
    squared = (x * x).sum(axis=1)
    out = np.empty(n)
    for start in range(0, n, _ROWS):
        block = x[start:start + _ROWS]
        d2 = squared[start:start + _ROWS, None] + squared[None, :] - 2.0 * block @ x.T
        d2[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf  # not its own neighbour
        nearest = np.sqrt(np.maximum(np.partition(d2, k - 1, axis=1)[:, :k], 0.0))
        out[start:start + _ROWS] = 1.0 / np.maximum(nearest.mean(axis=1), 1e-12)
    return out


def typical_selection(vectors: np.ndarray, image_ids: Sequence[int], count: int, rng: np.random.Generator) -> list[int]:
    """`count` image ids, one per k-means cluster (largest cluster first), each its most typical image."""
    ids = np.asarray(image_ids, dtype=np.int64)
    if count >= len(ids):
        return ids.tolist()
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    _, labels = kmeans2(x, count, minit="++", seed=rng)
    sizes = np.bincount(labels, minlength=count)
    typical = np.zeros(len(ids))
    chosen: list[int] = []
    for cluster in sorted(range(count), key=lambda c: (-sizes[c], c)):
        members = np.flatnonzero(labels == cluster)
        if not len(members):
            continue
        # within the cluster, K at most half its size (as TypiClust's code does)
        typical[members] = typicality(x[members], min(NEIGHBOURS, max(1, len(members) // 2)))
        chosen.append(int(members[np.argmax(typical[members])]))
    taken = set(chosen)
    rest = [int(i) for i in np.argsort(-typical, kind="stable") if int(i) not in taken]
    chosen += rest[:count - len(chosen)]
    return ids[chosen].tolist()
