import numpy as np
import pytest

from salis.params import TrainParams
from salis.engine.training import index_batches, lr_factor


def test_lr_schedule_warmup_then_steps():
    p = TrainParams(iterations=100, warmup_iterations=10, lr_steps=(0.5, 0.8), gamma=0.1)
    assert lr_factor(0, p) == pytest.approx(0.001)
    assert lr_factor(5, p) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(10, p) == 1.0
    assert lr_factor(49, p) == 1.0
    assert lr_factor(50, p) == pytest.approx(0.1)
    assert lr_factor(80, p) == pytest.approx(0.01)


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
