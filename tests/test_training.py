import dataclasses

import numpy as np
import pytest

from salis.params import TrainParams
from salis.engine.training import (aspect_ratio_groups, grouped_index_batches, index_batches, lr_factor, rank_plan,
                                   schedule_iterations)
from support import sample


def test_lr_schedule_warmup_then_steps():
    p = TrainParams(warmup_iterations=10, lr_steps=(0.5, 0.8), gamma=0.1)
    assert lr_factor(0, p, 100) == pytest.approx(0.001)
    assert lr_factor(5, p, 100) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(10, p, 100) == 1.0
    assert lr_factor(49, p, 100) == 1.0
    assert lr_factor(50, p, 100) == pytest.approx(0.1)
    assert lr_factor(80, p, 100) == pytest.approx(0.01)
    assert lr_factor(80, p, 200) == 1.0  # the steps follow the cycle's own schedule


def test_iterations_follow_the_labeled_set_within_floor_and_ceiling():
    p = TrainParams(epochs=15, min_iterations=100, max_iterations=250, batch_size=4)
    assert schedule_iterations(p, 20) == 100  # 15 x 20 / 4 = 75, raised to the floor
    assert schedule_iterations(p, 40) == 150  # 15 epochs exactly
    assert schedule_iterations(p, 41) == 154  # ceil(153.75)
    assert schedule_iterations(p, 100) == 250  # 375, capped
    paper = TrainParams(epochs=50, min_iterations=0, max_iterations=0, batch_size=2)
    assert schedule_iterations(paper, 1000) == 25000  # no ceiling: the TSP paper's 50 epochs
    # a cycle from the initial weights trains cold_start_iterations when set, others the rule
    cold = TrainParams(epochs=15, min_iterations=100, max_iterations=250, batch_size=4, cold_start_iterations=300)
    assert schedule_iterations(cold, 20, cold_start=True) == 300
    assert schedule_iterations(cold, 20) == 100 and schedule_iterations(p, 20, cold_start=True) == 100


def test_batches_cover_every_index_once_per_epoch():
    batches = index_batches(8, 4, np.random.default_rng(0))
    epoch = next(batches) + next(batches)
    assert sorted(epoch) == list(range(8))


def test_batches_repeat_indices_when_fewer_images_than_batch():
    batch = next(index_batches(3, 5, np.random.default_rng(0)))
    assert len(batch) == 5 and set(batch) == {0, 1, 2}


def test_batches_are_seeded():
    a = index_batches(10, 3, np.random.default_rng(4))
    b = index_batches(10, 3, np.random.default_rng(4))
    assert [next(a) for _ in range(5)] == [next(b) for _ in range(5)]


def test_aspect_ratio_groups_bin_width_over_height_as_torchvisions_references():
    # k = 3: bins 2 ** (-1, -2/3, -1/3, 0, 1/3, 2/3, 1) = 0.5, 0.63, 0.79, 1, 1.26, 1.59, 2
    sizes = [(100, 100), (256, 320), (100, 134), (200, 100), (100, 300), (360, 640), (256, 200)]
    assert aspect_ratio_groups(sizes, 3) == [4, 4, 5, 1, 7, 6, 2]  # 200 / 256 = 0.78 < 0.79
    assert aspect_ratio_groups(sizes, 0) == [1, 1, 1, 0, 1, 1, 0]  # landscape-or-square / portrait
    assert aspect_ratio_groups(sizes, -1) == [0] * 7


def test_grouped_batches_with_one_group_are_the_ungrouped_batches():
    a = grouped_index_batches([4] * 10, 3, np.random.default_rng(7))
    b = index_batches(10, 3, np.random.default_rng(7))
    assert [next(a) for _ in range(20)] == [next(b) for _ in range(20)]


def test_grouped_batches_draw_each_batch_from_one_group_and_cover_every_image():
    groups = [0] * 9 + [1] * 6 + [2]  # a lone portrait image fills its batch over several epochs
    batches = grouped_index_batches(groups, 3, np.random.default_rng(1))
    drawn = [next(batches) for _ in range(40)]  # 120 draws: 7.5 epochs of 16 images
    assert all(len({groups[i] for i in batch}) == 1 for batch in drawn)
    assert all(len(set(batch)) == 3 for batch in drawn if groups[batch[0]] != 2)
    assert set().union(*map(set, drawn)) == set(range(16))
    counts = np.bincount(np.concatenate(drawn), minlength=16)
    assert counts[:15].min() >= 6 and counts[:15].max() <= 8  # once per epoch, less what a buffer holds
    again = grouped_index_batches(groups, 3, np.random.default_rng(1))
    assert [next(again) for _ in range(40)] == drawn


def test_the_ranks_shares_make_up_the_one_process_batches_each_of_one_shape():
    square = [sample(i, False) for i in range(2)]  # 64 x 64
    tall = [dataclasses.replace(s, image=np.zeros((96, 48, 3), np.uint8), masks=np.zeros((len(s.boxes), 96, 48), np.uint8))
            for s in (sample(2, False), sample(3, False))]
    source = square + tall + [sample(4, False), sample(5, False)]
    params = TrainParams(batch_size=2, pseudo_batch_size=2, aspect_ratio_group_factor=3)
    one = rank_plan(source, [], params, seed=5, iterations=12, use_pseudo=False, rank=0, world=1)
    shares = [rank_plan(source, [], params, seed=5, iterations=12, use_pseudo=False, rank=r, world=2) for r in (0, 1)]
    shape = lambda i: source[i].image.shape[:2]  # noqa: E731
    for it, (batch, _) in enumerate(one):
        assert len({shape(i) for i, _ in batch}) == 1  # one padded shape per global batch
        assert shares[0][it][0] + shares[1][it][0] == batch  # batch[0::2] + batch[1::2], 2 images
    assert {shape(i) for batch, _ in one for i, _ in batch} == {(64, 64), (96, 48)}
    ungrouped = dataclasses.replace(params, aspect_ratio_group_factor=-1)
    mixed = rank_plan(source, [], ungrouped, seed=5, iterations=12, use_pseudo=False, rank=0, world=1)
    assert any(len({shape(i) for i, _ in batch}) == 2 for batch, _ in mixed)


def test_a_model_with_nan_weights_is_refused_before_it_is_saved():
    import torch

    from salis.engine.training import check_finite_weights
    from salis.errors import SalisError

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    check_finite_weights(model, 0.02)  # finite: nothing said
    with torch.no_grad():
        model[1].running_var[0] = float("inf")
    with pytest.raises(SalisError, match=r"training diverged: 1 weight tensors are NaN or infinite \(e.g. 1.running_var\)"):
        check_finite_weights(model, 0.02)
