"""Checkpoints as DVC sees them: the same weights are the same bytes."""

from __future__ import annotations

import torch

from salis.model.build import seeded_model
from salis.model.checkpoint import load_checkpoint, save_checkpoint
from test_iou_heads import SMALL

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def test_the_same_weights_save_to_the_same_bytes_whatever_the_file_name(tmp_path):
    # torch.save names its zip records after the target file; saved through a temp file of a
    # random name, each save of cycle 1's unchanged model differed and DVC reran what followed
    model = seeded_model(SMALL, 2, seed=0)
    first, second = tmp_path / "a" / "model.pt", tmp_path / "other.pt"
    save_checkpoint(first, model, SMALL, CATEGORIES, {"cycle": 1})
    save_checkpoint(second, model, SMALL, CATEGORIES, {"cycle": 1})
    assert first.read_bytes() == second.read_bytes()
    state = load_checkpoint(second)
    assert state["extra"] == {"cycle": 1} and torch.equal(
        state["state_dict"]["roi_heads.box_predictor.cls_score.weight"], model.roi_heads.box_predictor.cls_score.weight)
    changed = seeded_model(SMALL, 2, seed=1)
    save_checkpoint(second, changed, SMALL, CATEGORIES, {"cycle": 1})
    assert first.read_bytes() != second.read_bytes()
