import numpy as np
import pytest

from salis.params import TrainParams
from salis.engine.training import index_batches, lr_factor, schedule_iterations


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
