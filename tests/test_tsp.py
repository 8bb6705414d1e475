"""tsp, beta_iou and oracle_iou on hand-built tables."""

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

from salis.errors import SalisError
from salis.acquisition.samplers import get_sampler
from salis.acquisition.measures import image_score, instance_scores
from salis.artifacts.tables import INSTANCE_SCHEMA
from salis.params import SelectParams
from support import selection_context


def test_instance_score_hand_values():
    assert instance_scores(np.array([[0.9, 0.9, 0.9]])).tolist() == pytest.approx([0.9])
    std = math.sqrt((0.25 + 0.25 + 0.0) / 3)  # population std of (1, 0, 0.5)
    assert instance_scores(np.array([[1.0, 0.0, 0.5]]))[0] == pytest.approx(math.exp(-std) * 0.5)
    assert instance_scores(np.array([[0.7]]))[0] == pytest.approx(0.7)  # one component: s = c


def test_image_score_hand_values_and_empty_image():
    assert image_score(np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert image_score(np.array([0.2, 0.6])) == pytest.approx(math.exp(-0.2) * 0.4)
    assert image_score(np.array([])) == 0.0


def square_rle(x0: int, x1: int, size: int = 10) -> dict:
    m = np.zeros((size, size), dtype=np.uint8, order="F")
    m[0:4, x0:x1] = 1
    rle = mask_utils.encode(m)
    return {"size": [size, size], "counts": rle["counts"].decode()}


def write_instances(path, rows: list[tuple]) -> None:
    """rows: (image_id, c, b, m, rle)."""
    n = len(rows)
    table = {
        "image_id": [r[0] for r in rows], "det": list(range(n)), "category_id": [1] * n,
        "score": [r[1] for r in rows], "entropy": [0.0] * n, "box_iou": [r[2] for r in rows],
        "mask_iou": [r[3] for r in rows], "tsp_score": [0.0] * n,
        **{c: [float("nan")] * n for c in ("mc_class_var", "mc_box_disagreement", "mc_mask_disagreement", "mc_disagreement")},
        "x": [0.0] * n, "y": [0.0] * n, "w": [1.0] * n, "h": [1.0] * n, "area": [1] * n,
        "height": [10] * n, "width": [10] * n, "rle": [r[4]["counts"] for r in rows],
    }
    pq.write_table(pa.table(table, schema=INSTANCE_SCHEMA), path, row_group_size=1)  # images span row groups


def sampler(name: str, **knobs):
    """A sampler built from the select params, as the select stage builds it."""
    return get_sampler(name, SelectParams(**knobs))


@pytest.fixture
def pool(tmp_path):
    path = tmp_path / "instances.parquet"
    write_instances(path, [
        (1, 0.9, 0.9, 0.9, square_rle(0, 4)),    # A: confident everywhere, S = 0.9
        (2, 0.95, 0.5, 0.4, square_rle(0, 2)),   # B: confident class, doubtful box and mask
        (2, 0.95, 0.5, 0.4, square_rle(0, 2)),
    ])
    images = pd.DataFrame({"image_id": [1, 2, 3], "mean_mask_iou": [0.9, 0.4, float("nan")]})  # 3: no detection
    return path, images


def test_tsp_ranks_least_confident_first(pool):
    path, images = pool
    # S(3) = 0 (no detection) < S(2) = exp(-std(.95,.5,.4)) * .6167 < S(1) = 0.9
    assert get_sampler("tsp").rank(selection_context(images, path)) == [3, 2, 1]


def test_tsp_ablation_class_only_changes_the_order(pool):
    path, images = pool
    assert sampler("tsp", tsp_components=("class",)).rank(selection_context(images, path)) == [3, 1, 2]


def test_beta_iou_picks_mean_mask_iou_closest_to_beta(tmp_path):
    images = pd.DataFrame({"image_id": [1, 2, 3, 4], "mean_mask_iou": [0.2, 0.45, 0.9, float("nan")]})
    # |m - 0.4| = 0.2, 0.05, 0.5 and 0.4 (no detection counts as IoU 0)
    assert sampler("beta_iou", beta=0.4).rank(selection_context(images, None)) == [2, 1, 4, 3]


class FakeOracle:
    def __init__(self, gt: dict[int, list[dict]]) -> None:
        self.gt = gt

    def annotations(self, image_id: int) -> list[dict]:
        return [{"segmentation": seg} for seg in self.gt[image_id]]


def test_oracle_iou_uses_true_mask_iou(pool):
    path, images = pool
    gt = {1: [square_rle(0, 4)], 2: [square_rle(0, 4)], 3: [square_rle(0, 4)]}
    # true IoU: image 1 -> 1.0, image 2 -> 8/16 = 0.5 (both detections), image 3 -> 0 (none)
    ranked = sampler("oracle_iou", beta=0.5).rank(selection_context(images, path, oracle=FakeOracle(gt)))
    assert ranked == [2, 1, 3] or ranked == [2, 3, 1]  # 1 and 3 are both 0.5 away from beta
    assert ranked[0] == 2


def test_oracle_iou_is_refused_without_ground_truth(pool):
    path, images = pool
    with pytest.raises(SalisError, match="oracle: human"):
        get_sampler("oracle_iou").rank(selection_context(images, path, oracle=None))


def test_tsp_refuses_a_table_without_iou_scores(tmp_path):
    path = tmp_path / "i.parquet"
    nan = float("nan")
    write_instances(path, [(1, 0.9, nan, nan, square_rle(0, 4))])
    with pytest.raises(SalisError, match="lacks IoU heads"):
        get_sampler("tsp").rank(selection_context(pd.DataFrame({"image_id": [1]}), path))
