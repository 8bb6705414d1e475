"""Core-set: k-center greedy with known picks, against brute force, in bounded memory."""

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from salis.acquisition.embeddings import open_embeddings, write_embeddings
from salis.errors import SalisError
from salis.acquisition.samplers import get_sampler
from salis.acquisition.samplers.coreset import k_center_greedy
from support import selection_context


def write(folder, ids, points) -> None:
    points = np.asarray(points, dtype=np.float32).reshape(len(ids), -1)
    with write_embeddings(folder, len(ids)) as writer:
        for image_id, vector in zip(ids, points):
            writer.add(image_id, vector)


# points on a line: labeled image 10 at x = 0; unlabeled 11..16 at x = 1, 2, 4, 10, 11, 6
LINE_IDS = [13, 10, 16, 11, 15, 12, 14]  # rows deliberately not in id order
LINE_X = {10: 0, 11: 1, 12: 2, 13: 4, 14: 10, 15: 11, 16: 6}


def test_greedy_picks_on_a_line(tmp_path):
    write(tmp_path / "emb", LINE_IDS, [LINE_X[i] for i in LINE_IDS])
    c = selection_context(pd.DataFrame({"image_id": [11, 12, 13, 14, 15, 16]}), labeled=[10], embeddings_path=tmp_path / "emb")
    # nearest-center distances^2: 11:1 12:4 13:16 14:100 15:121 16:36 -> 15 (x = 11)
    # then 14: 1, 16: 25 -> 16 (x = 6); then 12 and 13 tie at 4 -> lowest id 12 (x = 2);
    # then 13 (4); then 11 and 14 tie at 1 -> 11, then 14
    assert get_sampler("coreset").select(c, 3) == [15, 16, 12]
    assert get_sampler("coreset").rank(c) == [15, 16, 12, 13, 11, 14]


def test_labeled_images_are_centers_not_candidates(tmp_path):
    write(tmp_path / "emb", LINE_IDS, [LINE_X[i] for i in LINE_IDS])
    # with 15 (x = 11) labeled too, 14 (x = 10) is close to a center: 16 (x = 6) is farthest
    assert get_sampler("coreset").select(selection_context(pd.DataFrame({"image_id": [11, 12, 13, 14, 16]}), labeled=[10, 15], embeddings_path=tmp_path / "emb"), 1) == [16]


def test_without_labeled_images_the_first_pick_is_the_lowest_id():
    vectors = np.array([[0.0], [5.0], [1.0]], dtype=np.float32)
    ids = np.array([7, 3, 9])
    rows = k_center_greedy(vectors, ids, np.ones(3, bool), np.zeros(3, bool), 2)
    assert ids[rows].tolist() == [3, 7]  # 3 (lowest id), then the farthest from x = 5: x = 0


@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])
def test_greedy_matches_brute_force_in_any_chunking(chunk_rows):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(40, 5)).astype(np.float32)
    ids = np.arange(100, 140)
    centers = np.zeros(40, bool)
    centers[[3, 17, 29]] = True
    rows = k_center_greedy(vectors, ids, ~centers, centers, 8, chunk_rows=chunk_rows)

    full = ((vectors[:, None, :].astype(np.float64) - vectors[None, :, :]) ** 2).sum(-1)
    chosen, picked = list(np.flatnonzero(centers)), []
    for _ in range(8):
        nearest = full[:, chosen].min(axis=1)
        nearest[chosen] = -1
        best = int(np.argmax(nearest))
        picked.append(best)
        chosen.append(best)
    assert rows == picked


def test_memory_stays_o_n_not_o_n_times_d(tmp_path):
    n, d = 50_000, 64
    rng = np.random.default_rng(0)
    ids = np.arange(n)
    with write_embeddings(tmp_path / "emb", n) as writer:
        for start in range(0, n, 5000):
            for row in rng.normal(size=(5000, d)).astype(np.float32):
                writer.add(start, row)
                start += 1
    _, vectors = open_embeddings(tmp_path / "emb")
    centers = np.zeros(n, bool)
    centers[:500] = True
    tracemalloc.start()
    k_center_greedy(vectors, ids, ~centers, centers, 5, chunk_rows=1024)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    matrix = n * d * 4  # 12.8 MB on disk
    # O(N) state (squared norms, nearest distances, masks: ~1.3 MB) plus one chunk; never the matrix
    assert peak < matrix / 4, f"peak {peak / 1e6:.1f} MB for a {matrix / 1e6:.1f} MB matrix"


def test_missing_embeddings_are_refused(tmp_path):
    write(tmp_path / "emb", [1, 2], [0.0, 1.0])
    with pytest.raises(SalisError, match="1 unlabeled images are missing"):
        get_sampler("coreset").select(selection_context(pd.DataFrame({"image_id": [2, 3]}), labeled=[1], embeddings_path=tmp_path / "emb"), 1)
    with pytest.raises(SalisError, match="written by the infer_score stage"):
        get_sampler("coreset").select(selection_context(pd.DataFrame({"image_id": [2]}), labeled=[1], embeddings_path=tmp_path / "nothing"), 1)


def test_embedding_writer_is_all_or_nothing(tmp_path):
    folder = tmp_path / "emb"
    with pytest.raises(ValueError, match="1 embeddings written, 2 announced"):
        with write_embeddings(folder, 2) as writer:
            writer.add(1, np.zeros(3, np.float32))
    assert not folder.exists()
    write(folder, [4, 5], [[1.0, 2.0], [3.0, 4.0]])
    ids, vectors = open_embeddings(folder)
    assert ids.tolist() == [4, 5] and vectors.dtype == np.float32 and vectors.tolist() == [[1, 2], [3, 4]]
