import numpy as np
import pandas as pd
import pytest

from salis.atomic import write_parquet
from salis.cycle import check_budget, empty_pseudo, initial_labeled, pseudo_labels, select_next
from salis.errors import SalisError
from salis.tables import INSTANCE_SCHEMA

MC_COLUMNS = ("mc_class_var", "mc_box_disagreement", "mc_mask_disagreement", "mc_disagreement")


def images_table(ids, entropy=None):
    entropy = entropy if entropy is not None else [0.1 * i for i in range(len(ids))]
    return pd.DataFrame({"image_id": ids, "num_detections": [1] * len(ids), "mean_entropy": entropy})


def test_budget_refused_with_the_numbers():
    check_budget(100, 20, 16, 5)  # exactly 100 fits
    with pytest.raises(SalisError, match=r"pool holds 100 images .*\(20\) \+ 5 cycles x select.budget \(17\) = 105"):
        check_budget(100, 20, 17, 5)


def test_initial_set_is_seeded_sized_and_from_the_pool():
    pool = list(range(1, 51))
    a = initial_labeled(pool, 10, seed=3)
    assert a.equals(initial_labeled(list(reversed(pool)), 10, seed=3))  # order of input irrelevant
    assert len(a) == 10 and a["image_id"].is_unique and set(a["image_id"]) <= set(pool)
    assert (a["cycle"] == 1).all() and (a["source"] == "simulated_oracle").all()
    assert not a.equals(initial_labeled(pool, 10, seed=4))


def test_select_keeps_every_labeled_image_and_adds_budget():
    pool = list(range(1, 21))
    labeled = initial_labeled(pool, 5, seed=0)
    images = images_table([i for i in pool if i not in set(labeled["image_id"])])
    nxt = select_next(labeled, images, None, pool, "entropy", 4, cycle=1, seed=0, num_classes=1)
    assert len(nxt) == 9 and nxt["image_id"].is_unique
    assert nxt.iloc[:5].equals(labeled)
    new = nxt.iloc[5:]
    # entropy grows with position in `images`: the last four are the most uncertain
    assert new["image_id"].tolist() == images["image_id"].tolist()[::-1][:4]
    assert (new["cycle"] == 2).all() and (new["sampler"] == "entropy").all()


def test_select_is_byte_identical_for_same_params(tmp_path):
    pool = list(range(1, 31))
    labeled = initial_labeled(pool, 5, seed=1)
    images = images_table([i for i in pool if i not in set(labeled["image_id"])])
    for name in ("a", "b"):
        write_parquet(tmp_path / f"{name}.parquet", select_next(labeled, images, None, pool, "random", 6, 1, 1, 1))
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_select_refuses_images_outside_pool_and_small_pools():
    pool = [1, 2, 3, 4]
    labeled = initial_labeled(pool, 2, seed=0)
    with pytest.raises(SalisError, match="outside the pool"):
        select_next(labeled, images_table([3, 4, 99]), None, pool, "random", 1, 1, 0, 1)
    unl = [i for i in pool if i not in set(labeled["image_id"])]
    with pytest.raises(SalisError, match="only 2 unlabeled images are left for a budget of 3"):
        select_next(labeled, images_table(unl), None, pool, "random", 3, 1, 0, 1)


def instance_table(path, **columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(columns["image_id"])
    rows = {
        "det": list(range(n)), "category_id": [1] * n, "entropy": [0.1] * n,
        "box_iou": [0.95] * n, "mask_iou": [0.85] * n, "tsp_score": [0.9] * n,
        **{c: [float("nan")] * n for c in MC_COLUMNS},
        "x": [0.0] * n, "y": [0.0] * n, "w": [2.0] * n, "h": [2.0] * n,
        "area": [4] * n, "height": [8] * n, "width": [8] * n, "rle": ["0"] * n,
    }
    rows.update(columns)
    pq.write_table(pa.table(rows, schema=INSTANCE_SCHEMA), path, row_group_size=2)
    return path


def test_pseudo_labels_keep_confident_detections_of_unlabeled_images(tmp_path):
    path = instance_table(tmp_path / "i.parquet", image_id=[1, 1, 2, 3], score=[0.95, 0.5, 0.99, 0.91])
    table = pseudo_labels(path, frozenset({3}), score_thresh=0.9)
    # image 3 was just labeled by the oracle; image 1's 0.5 detection is below threshold
    assert list(zip(table["image_id"], table["det"])) == [(1, 0), (2, 2)]
    assert pseudo_labels(path, frozenset(), 0.999).empty
    assert list(empty_pseudo().columns) == INSTANCE_SCHEMA.names
    assert np.issubdtype(table["score"].dtype, np.floating)


def test_pseudo_labels_need_all_three_scores_above_their_thresholds(tmp_path):
    path = instance_table(
        tmp_path / "i.parquet",
        image_id=[1, 2, 3, 4, 5],
        score=[0.95, 0.95, 0.95, 0.85, 0.95],
        box_iou=[0.95, 0.85, 0.95, 0.95, 0.91],
        mask_iou=[0.85, 0.85, 0.75, 0.85, 0.81],
    )
    table = pseudo_labels(path, frozenset(), 0.9, 0.9, 0.8)
    # 2 fails b, 3 fails m, 4 fails c; 1 and 5 pass all three
    assert table["image_id"].tolist() == [1, 5]


def test_pseudo_labels_without_iou_heads_fall_back_to_the_class_score(tmp_path):
    nan = float("nan")
    path = instance_table(tmp_path / "i.parquet", image_id=[1, 2], score=[0.95, 0.5], box_iou=[nan, nan], mask_iou=[nan, nan])
    assert pseudo_labels(path, frozenset(), 0.9, 0.9, 0.8)["image_id"].tolist() == [1]
