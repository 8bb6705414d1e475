"""MC dropout: hand-computed disagreement, exactness at p = 0, the deterministic pass untouched,
the instance/image columns, and the sampler on a hand-built table."""

import dataclasses
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from salis.errors import SalisError
from salis.model.build import seeded_model
from salis.model.mc_dropout import MCDropout, MCSources, mc_disagreement, paired_box_iou, paired_mask_iou
from salis.params import ModelParams, SelectParams
from salis.acquisition.samplers import get_sampler
from salis.artifacts.tables import INSTANCE_SCHEMA
from support import SMALL, selection_context




def test_paired_ious_hand_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    assert paired_box_iou(a, b).tolist() == pytest.approx([50 / 150, 1.0])
    left = torch.zeros(3, 4, 4, dtype=torch.bool)
    left[:, :, :2] = True
    other = torch.zeros(3, 4, 4, dtype=torch.bool)
    other[0] = True  # full vs left half: 8/16
    other[1, :, :2] = True  # identical
    # row 2: empty vs left half: 0
    assert paired_mask_iou(left, other).tolist() == pytest.approx([0.5, 1.0, 0.0])
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert paired_mask_iou(empty, empty).tolist() == [1.0]  # two empty masks agree


class Scripted(nn.Module):
    """Returns the next scripted output on every call, whatever its (dropped-out) input."""

    def __init__(self, outputs: list) -> None:
        super().__init__()
        self.outputs = outputs
        self.calls = 0

    def forward(self, x):
        out = self.outputs[self.calls]
        self.calls += 1
        return out


def test_disagreement_of_two_scripted_passes_hand_values():
    heads = seeded_model(SMALL, 2, seed=0).eval().roi_heads
    # one image, one detection of class 1 regressed from proposal [0, 0, 10, 10]
    proposal = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    no_shift = torch.zeros(1, 12)
    shift = torch.zeros(1, 12)
    shift[0, 4] = 5.0  # class 1's dx: 5 / weight 10 * width 10 = a 5 px shift to the right
    heads.box_predictor = Scripted([
        (torch.log(torch.tensor([[0.2, 0.8, 1e-30]])), no_shift),
        (torch.log(torch.tensor([[0.6, 0.4, 1e-30]])), shift),
    ])
    full = torch.full((1, 3, 4, 4), 1.0)
    nothing = torch.full((1, 3, 4, 4), -1.0)
    heads.mask_predictor = Scripted([full, nothing])
    reference_logits = torch.full((1, 3, 4, 4), -1.0)
    reference_logits[0, 1, :, :2] = 1.0  # the deterministic mask: left half
    sources = MCSources(
        box_features=torch.zeros(1, 32), proposals=[proposal], boxes=[proposal.clone()], labels=[torch.tensor([1])],
        mask_features=torch.zeros(1, 8, 2, 2), mask_logits=reference_logits, image_shapes=[(20, 20)],
    )
    (class_var, box_dis, mask_dis), = mc_disagreement(heads, MCDropout(passes=2, p=0.5), sources)
    # class posteriors (.2, .8, 0) and (.6, .4, 0): population variance .04 + .04 + 0
    assert class_var.tolist() == pytest.approx([0.08], abs=1e-6)
    # box IoUs 1 and 50/150: 1 - mean
    assert box_dis.tolist() == pytest.approx([1 - (1 + 1 / 3) / 2])
    # mask IoUs with the left half: full mask 0.5, empty mask 0
    assert mask_dis.tolist() == pytest.approx([1 - 0.25])


def _images() -> list[torch.Tensor]:
    return [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]


def test_zero_dropout_reproduces_the_deterministic_detections_exactly():
    model = seeded_model(SMALL, 2, seed=0).eval()
    with torch.no_grad(), model.roi_heads.mc_dropout(passes=3, p=0.0):
        outputs = model(_images())
    assert sum(len(o["scores"]) for o in outputs) > 0
    for out in outputs:
        for key in ("mc_class_var", "mc_box_disagreement", "mc_mask_disagreement"):
            assert out[key].shape == out["scores"].shape
            assert torch.all(out[key].abs() < 1e-6), key


def test_mc_passes_leave_the_deterministic_pass_untouched_and_disagree():
    model = seeded_model(SMALL, 2, seed=0).eval()
    with torch.no_grad():
        plain = model(_images())
        with model.roi_heads.mc_dropout(passes=4, p=0.5):
            torch.manual_seed(0)
            mc = model(_images())
            torch.manual_seed(0)
            again = model(_images())
        after = model(_images())
    for p, m, a, f in zip(plain, mc, again, after):
        assert "mc_class_var" not in p and "mc_class_var" not in f  # off again after the block
        for key in ("boxes", "scores", "labels", "masks", "class_posterior", "embedding"):
            assert torch.equal(p[key], m[key]), key
        for key in ("mc_class_var", "mc_box_disagreement", "mc_mask_disagreement"):
            assert torch.equal(m[key], a[key])  # same seed, same masks
            assert ((m[key] >= 0) & (m[key] <= 1)).all()
    assert any((m["mc_box_disagreement"] > 0).any() for m in mc)
    assert any((m["mc_class_var"] > 0).any() for m in mc)


def test_dropout_while_training_only_when_asked():
    images = _images()[:1]
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 8:40, 8:40] = 1
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1]), "masks": masks}]

    def losses(params: ModelParams, seed: int) -> float:
        model = seeded_model(params, 2, seed=0).train()
        torch.manual_seed(seed)  # the same RoI sampling; only dropout may differ
        return float(model(images, targets)["loss_classifier"].detach())

    # the same sampling seed for both calls: only dropout masks could make them differ
    assert losses(SMALL, 1) == losses(SMALL, 1)
    with_dropout = dataclasses.replace(SMALL, train_dropout_p=0.5)
    assert losses(with_dropout, 1) != losses(SMALL, 1)


def test_mc_dropout_block_restores_the_previous_setting_even_after_an_exception():
    heads = seeded_model(SMALL, 2, seed=0).eval().roi_heads
    assert not heads.mc_settings.enabled  # off unless asked for
    with pytest.raises(RuntimeError, match="boom"):
        with heads.mc_dropout(passes=5, p=0.2):
            assert heads.mc_settings == MCDropout(passes=5, p=0.2)
            raise RuntimeError("boom")
    assert heads.mc_settings == MCDropout()
    with heads.mc_dropout(passes=3, p=0.1):
        with heads.mc_dropout(passes=2, p=0.0):
            assert heads.mc_settings == MCDropout(passes=2, p=0.0)
        assert heads.mc_settings == MCDropout(passes=3, p=0.1)  # nested blocks unwind in order
    assert heads.mc_settings == MCDropout()


# --- the sampler ------------------------------------------------------------------------

MC = ("mc_class_var", "mc_box_disagreement", "mc_mask_disagreement", "mc_disagreement")


def write_instances(path, rows: list[tuple[int, float]]) -> None:
    """rows: (image_id, mc_disagreement); one row per row group, so images span groups."""
    n = len(rows)
    nan = [float("nan")] * n
    table = {name: [0.0] * n for name in INSTANCE_SCHEMA.names}
    table.update({
        "image_id": [r[0] for r in rows], "det": list(range(n)), "category_id": [1] * n,
        "area": [1] * n, "height": [4] * n, "width": [4] * n, "rle": ["0"] * n,
        "mc_class_var": nan, "mc_box_disagreement": nan, "mc_mask_disagreement": nan,
        "mc_disagreement": [r[1] for r in rows],
    })
    pq.write_table(pa.table(table, schema=INSTANCE_SCHEMA), path, row_group_size=1)


@pytest.fixture
def pool(tmp_path):
    path = tmp_path / "instances.parquet"
    # image 1: 0.2, 0.4 (mean .3, max .4); image 2: 0.1, 0.7 (mean .4, min .1); 3: none; 4: 0.35
    write_instances(path, [(1, 0.2), (2, 0.1), (1, 0.4), (2, 0.7), (4, 0.35)])
    images = pd.DataFrame({
        "image_id": [1, 2, 3, 4], "num_detections": [2, 2, 0, 1], "mc_passes": [10] * 4,
        "mc_disagreement": [0.3, 0.4, float("nan"), 0.35],
    })
    return path, images


def sampler(aggregation="default"):
    return get_sampler("mc_dropout", SelectParams(aggregation=aggregation))


def test_mc_dropout_sampler_ranks_by_aggregated_disagreement(pool):
    path, images = pool
    # no detection counts as maximal disagreement (1), then mean .4 > .35 > .3
    assert sampler().rank(selection_context(images, path)) == [3, 2, 4, 1]
    # max: .7 (2) > .4 (1) > .35 (4)
    assert sampler("max").rank(selection_context(images, path)) == [3, 2, 1, 4]
    # min: .35 (4) > .2 (1) > .1 (2)
    assert sampler("min").rank(selection_context(images, path)) == [3, 4, 1, 2]
    # tsp: exp(-std) * mean: image 1: exp(-.1) * .3 = .2715; image 2: exp(-.3) * .4 = .2963; 4: .35
    assert sampler("tsp").score(selection_context(images, path))[:2] == pytest.approx([math.exp(-0.1) * 0.3, math.exp(-0.3) * 0.4])
    assert sampler("tsp").rank(selection_context(images, path)) == [3, 4, 2, 1]


def test_mc_dropout_sampler_refuses_a_pool_scored_without_passes(pool):
    path, images = pool
    images = images.assign(mc_passes=0)
    with pytest.raises(SalisError, match=r"score.mc_passes = 0.*dvc exp run -S sampler=mc_dropout -S score.mc_passes=10"):
        sampler().rank(selection_context(images, path))
