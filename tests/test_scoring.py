import math

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from salis.acquisition.measures import entropy
from salis.engine.inference import Prediction
from salis.acquisition.scoring import write_score_tables
from salis.artifacts.tables import INSTANCE_SCHEMA


def prediction(image_id: int, n: int) -> Prediction:
    masks = np.zeros((n, 16, 20), dtype=bool)
    boxes = np.zeros((n, 4), dtype=np.float32)
    for i in range(n):
        masks[i, 2 + i : 6 + i, 3:9] = True  # 4 x 6 = 24 pixels
        boxes[i] = [3, 2 + i, 9, 6 + i]
    posteriors = np.tile(np.array([[0.1, 0.7, 0.2]], dtype=np.float32), (n, 1))
    box_ious = np.full(n, 0.8, np.float32)
    mask_ious = np.linspace(0.3, 0.6, n).astype(np.float32) if n else np.zeros(0, np.float32)
    return Prediction(
        image_id, boxes, np.full(n, 0.7, np.float32), np.full(n, 5, np.int64), masks, posteriors, box_ious, mask_ious
    )


def test_entropy_hand_values():
    assert entropy(np.array([[1.0, 0.0]]))[0] == pytest.approx(0.0, abs=1e-9)
    assert entropy(np.array([[0.25] * 4]))[0] == pytest.approx(math.log(4))


def test_tables_hold_every_image_and_round_trip_masks(tmp_path):
    preds = [prediction(1, 2), prediction(2, 0), prediction(3, 1)]
    images = write_score_tables(iter(preds), tmp_path / "inst.parquet", tmp_path / "img.parquet")
    assert images["image_id"].tolist() == [1, 2, 3]
    assert images["num_detections"].tolist() == [2, 0, 1]
    assert np.isnan(images.loc[1, "mean_entropy"])  # no detection: NaN, decided by the sampler
    expected_h = -(0.1 * math.log(0.1) + 0.7 * math.log(0.7) + 0.2 * math.log(0.2))
    assert images.loc[0, "mean_entropy"] == pytest.approx(expected_h, rel=1e-6)
    assert pd.read_parquet(tmp_path / "img.parquet").equals(images)
    # TSP: image 1 has (c, b, m) = (0.7, 0.8, 0.3) and (0.7, 0.8, 0.6)
    s = [math.exp(-np.std(t)) * np.mean(t) for t in ([0.7, 0.8, 0.3], [0.7, 0.8, 0.6])]
    assert images.loc[0, "tsp_score"] == pytest.approx(math.exp(-np.std(s)) * np.mean(s), rel=1e-5)
    assert images.loc[1, "tsp_score"] == 0.0  # no detection: S = 0, labeled first by tsp
    assert images.loc[0, "mean_mask_iou"] == pytest.approx(0.45, rel=1e-6)

    inst = pd.read_parquet(tmp_path / "inst.parquet")
    assert list(inst.columns) == INSTANCE_SCHEMA.names
    assert inst["image_id"].tolist() == [1, 1, 3]
    assert inst["area"].tolist() == [24, 24, 24]
    assert inst[["x", "y", "w", "h"]].iloc[1].tolist() == [3.0, 3.0, 6.0, 4.0]
    row = inst.iloc[1]
    decoded = mask_utils.decode({"size": [int(row.height), int(row.width)], "counts": row.rle.encode()})
    assert np.array_equal(decoded.astype(bool), preds[0].masks[1])


def test_no_detection_anywhere_still_writes_a_readable_table(tmp_path):
    write_score_tables(iter([prediction(1, 0)]), tmp_path / "i.parquet", tmp_path / "m.parquet")
    assert pd.read_parquet(tmp_path / "i.parquet").empty
    assert len(pd.read_parquet(tmp_path / "m.parquet")) == 1


def test_detections_scored_without_their_mask_get_null_mask_columns(tmp_path):
    full = prediction(4, 3)
    part = Prediction(4, full.boxes, full.scores, full.category_ids, full.masks[[1]], full.posteriors, full.box_ious,
                      full.mask_ious, mask_index=np.array([1]))
    assert part.image_size == (16, 20) and part.mask_index.tolist() == [1] and full.mask_index.tolist() == [0, 1, 2]
    write_score_tables(iter([part]), tmp_path / "inst.parquet", tmp_path / "img.parquet")
    inst = pd.read_parquet(tmp_path / "inst.parquet")
    assert inst["height"].tolist() == [16] * 3 and inst["width"].tolist() == [20] * 3
    assert inst["rle"].isna().tolist() == [True, False, True]
    assert inst["area"].isna().tolist() == [True, False, True] and inst["area"][1] == 24
    row = inst.iloc[1]
    decoded = mask_utils.decode({"size": [16, 20], "counts": row.rle.encode()})
    assert np.array_equal(decoded.astype(bool), full.masks[1])


def test_binary_paste_equals_torchvision_paste_then_threshold():
    """paste_binary_masks is torchvision's paste_masks_in_image > 0.5, pixel for pixel: boxes inside,
    across the borders (the mask expanded by a pixel each side) and thinner than a pixel."""
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from salis.engine.inference import paste_binary_masks

    generator = torch.Generator().manual_seed(0)
    probs = torch.rand((7, 1, 28, 28), generator=generator)
    boxes = torch.tensor([[3.2, 4.7, 20.1, 15.9], [-5.0, -3.0, 12.0, 9.0], [30.0, 20.0, 45.0, 40.0],
                          [10.0, 10.0, 10.4, 10.2], [35.0, 28.0, 39.9, 31.9], [0.0, 0.0, 39.0, 31.0],
                          [17.5, 2.5, 18.5, 30.5]])
    expected = paste_masks_in_image(probs, boxes, (32, 40))[:, 0] > 0.5
    got = paste_binary_masks(probs, boxes, (32, 40))
    assert got.dtype == torch.bool and got.shape == (7, 32, 40)
    assert torch.equal(got, expected)
    assert all(got[k].any() for k in (0, 1, 5))
    assert paste_binary_masks(probs[:0], boxes[:0], (32, 40)).shape == (0, 32, 40)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "foreign", "old_marker", "missing"])
def test_a_damaged_shard_is_scored_again_never_read(tmp_path, damage):
    """A shard counts as scored only when every file matches the checksum its marker recorded: a
    flipped byte, a truncated, empty or foreign file, a marker of the old format or a missing file
    sends it back to scoring, with a log line, instead of into a pyarrow traceback."""
    from salis.acquisition.shards import ShardCache, plan_shards, score_shards

    cache = ShardCache(tmp_path / "shards", "infer_score@c1", "key")
    shards = plan_shards([1, 2], [], shard_images=2, batch_size=2)
    calls = []

    def predict_shard(shard):
        calls.append(shard.name)
        for image_id in shard.image_ids:
            pred = prediction(image_id, 2)
            pred.embedding = np.zeros(4, np.float32)
            yield pred

    assert score_shards(cache, shards, lambda s: True, predict_shard, log=lambda line: None) == 1
    assert cache.done(shards[0]) and calls == ["score-00000"]
    instances = cache.folder / "score-00000.instances.parquet"
    data = instances.read_bytes()
    if damage == "flip":
        instances.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "truncate":
        instances.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        instances.write_bytes(b"")
    elif damage == "foreign":
        instances.write_bytes((cache.folder / "score-00000.images.parquet").read_bytes())
    elif damage == "old_marker":
        (cache.folder / "score-00000.done").write_text("2\n")
    else:
        instances.unlink()
    assert not cache.done(shards[0])
    lines = []
    assert score_shards(cache, shards, lambda s: True, predict_shard, log=lines.append) == 1
    assert calls == ["score-00000"] * 2 and cache.done(shards[0])
    assert len(lines) == 1 and "unusable" in lines[0] and "scoring it again" in lines[0]
    merged = cache.merge(shards, tmp_path / "inst.parquet", tmp_path / "img.parquet", tmp_path / "emb")
    assert merged["image_id"].tolist() == [1, 2]
    assert len(pd.read_parquet(tmp_path / "inst.parquet")) == 4


def test_a_corrupt_instance_table_names_its_stage_and_the_command_that_rebuilds_it(tmp_path):
    """A data page flipped inside instances.parquet: every reader says which stage writes it and how
    to rebuild it, in one line, instead of a pyarrow traceback."""
    from salis.acquisition.samplers.aggregate import aggregate_instances
    from salis.artifacts.tables import INSTANCES, PSEUDO, SELECTED
    from salis.errors import InputError
    from salis.loop.cycle import pseudo_labels

    path = tmp_path / "data" / "cycles" / "2" / "instances.parquet"
    path.parent.mkdir(parents=True)
    write_score_tables(iter([prediction(1, 40)]), path, tmp_path / "img.parquet")
    data = bytearray(path.read_bytes())
    for offset in range(8, len(data) // 2, 7):  # the column chunks: pages, not the footer
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    expected = (r"instances.parquet: not a readable instances table \(.*\); the infer_score stage writes it: "
                r"`dvc repro --force --single-item infer_score@c2`")
    with pytest.raises(InputError, match=expected) as caught:
        pseudo_labels(path, frozenset(), 0.5)
    assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match=expected):
        aggregate_instances(path, np.array([1]), "mean", ["score"])
    with pytest.raises(InputError, match=expected):
        INSTANCES.read_rows(path, filters=[("image_id", "in", [1])])
    assert PSEUDO.rebuild_command("data/cycles/3/pseudo.parquet") == "dvc repro --force --single-item pseudo_label@c3"
    assert INSTANCES.rebuild_command("data/cycles/0/instances.parquet") == "dvc repro --force --single-item init"
    assert SELECTED.rebuild_command("data/cycles/0/selected.parquet") == "dvc repro --force --single-item init"
