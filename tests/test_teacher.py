"""The mean teacher (pseudo.mode: teacher): EMA by hand, gated pseudo-labels, a training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from salis.engine.teacher import Teacher, TeacherSettings
from salis.engine.training import train_model
from salis.errors import ParamsError
from salis.model.build import seeded_model
from salis.params import AugmentParams, TrainParams, parse_params
from support import SMALL, sample, tiny


def always(c, b, m):
    return np.ones(len(c), dtype=bool)


def never(c, b, m):
    return np.zeros(len(c), dtype=bool)


def test_the_ema_moves_the_teacher_by_one_minus_decay_and_copies_buffers():
    student = nn.BatchNorm1d(2)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([1.0, 3.0]))
    teacher = Teacher(student, TeacherSettings(decay=0.75, passes=always, min_score=0.0))
    assert not any(p.requires_grad for p in teacher.model.parameters())
    with torch.no_grad():
        student.weight.copy_(torch.tensor([5.0, -1.0]))
        student.running_mean.copy_(torch.tensor([0.5, 0.25]))
    teacher.update(student)
    # 0.75 x old + 0.25 x new
    assert teacher.model.weight.tolist() == pytest.approx([0.75 * 1 + 0.25 * 5, 0.75 * 3 + 0.25 * -1])
    assert teacher.model.running_mean.tolist() == [0.5, 0.25]
    zero = Teacher(student, TeacherSettings(decay=0.0, passes=always, min_score=0.0))
    with torch.no_grad():
        student.weight.copy_(torch.tensor([7.0, 8.0]))
    zero.update(student)
    assert zero.model.weight.tolist() == [7.0, 8.0]  # decay 0: the teacher is the student


def test_pseudo_labels_are_the_gated_detections_with_their_masks_boxes_and_labels():
    model = seeded_model(SMALL, 2, seed=0)
    images = [sample(0, False), sample(1, False)]
    teacher = Teacher(model, TeacherSettings(decay=0.99, passes=always, min_score=0.0))
    made = teacher.pseudo_label(images, torch.device("cpu"), amp=False)
    assert made and teacher.images == len(made) and teacher.instances == sum(len(s.labels) for s in made)
    for s in made:
        assert s.positive_only and s.own_labels
        assert s.masks.shape[1:] == s.image.shape[:2] and len(s.boxes) == len(s.labels) == len(s.masks)
        assert set(s.labels.tolist()) <= {1, 2}
        for box, mask in zip(s.boxes, s.masks):  # every kept mask has pixels, inside (or on) its box
            ys, xs = np.nonzero(mask)
            assert len(ys) and xs.min() >= np.floor(box[0]) - 1 and xs.max() <= np.ceil(box[2]) + 1
    closed = Teacher(model, TeacherSettings(decay=0.99, passes=never, min_score=0.0))
    assert closed.pseudo_label(images, torch.device("cpu"), amp=False) == [] and closed.instances == 0


def test_training_with_a_teacher_learns_from_its_pseudo_labels():
    params = TrainParams(epochs=1, min_iterations=3, max_iterations=3, batch_size=2, pseudo_batch_size=2,
                         warmup_iterations=1, semi_loss_weight=1.0)
    labeled = [sample(0, False), sample(1, False)]
    unlabeled = [sample(2, False), sample(3, False)]  # their targets are never read: the teacher labels them

    def run(teacher):
        torch.manual_seed(0)
        model = seeded_model(SMALL, 2, seed=0)
        summary = train_model(model, labeled, unlabeled, params, seed=0, device=torch.device("cpu"), amp=False,
                              teacher=teacher, strong=AugmentParams(preset="microscopy"))
        return model, summary

    with_teacher, summary = run(TeacherSettings(decay=0.5, passes=always, min_score=0.0))
    assert summary["teacher_pseudo_instances"] > 0 and "semi_loss_mask" in summary
    again, _ = run(TeacherSettings(decay=0.5, passes=always, min_score=0.0))
    shut, closed = run(TeacherSettings(decay=0.5, passes=never, min_score=0.0))
    assert closed["teacher_pseudo_instances"] == 0 and "semi_loss_mask" not in closed
    weights = [dict(m.state_dict()) for m in (with_teacher, again, shut)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # seeded: the same bytes
    assert any(not torch.equal(weights[0][k], weights[2][k]) for k in weights[0])  # the pseudo-labels taught


def test_teacher_params_are_checked_before_work():
    with pytest.raises(ParamsError, match=r"pseudo.ema_decay must lie in \[0, 1\), got 1.0"):
        parse_params(tiny(pseudo={"mode": "teacher", "ema_decay": 1.0}))
    with pytest.raises(ParamsError, match="point labels need pseudo.mode: cycle"):
        parse_params(tiny(pseudo={"mode": "teacher"}, annotation={"policy": "point"}))
    assert parse_params(tiny(pseudo={"mode": "teacher"}, annotation={"policy": "box"})).pseudo.mode == "teacher"


def test_the_stages_in_teacher_mode_train_on_the_teachers_labels_not_on_pseudo_parquet(tmp_path):
    from salis.artifacts.layout import Layout
    from salis.artifacts.tables import PSEUDO, read_table
    from support import run_stage

    threads = torch.get_num_threads()
    params = parse_params(tiny(pseudo={"mode": "teacher", "ema_decay": 0.9}, train={"semi_loss_weight": 1.0}))
    layout = Layout(tmp_path)
    try:
        for name in ("prepare", "init_model", "init"):
            run_stage(name, params, layout)
        summaries = {}
        for k in (1, 2):
            for name in ("annotate", "pseudo_label", "weak_label"):
                run_stage(name, params, layout, k)
            summaries[k] = run_stage("train", params, layout, k)
            if k == 1:
                run_stage("infer_score", params, layout, k)
                run_stage("select", params, layout, k)
    finally:
        torch.set_num_threads(threads)
    # the fixed gate is open at both cycles: the teacher labels unlabeled images as training goes,
    # and pseudo_label writes no table of its own for train to read
    assert all(len(read_table(layout.pseudo(k), PSEUDO)) == 0 for k in (1, 2))
    assert summaries[1]["teacher_pseudo_instances"] > 0 and summaries[2]["teacher_pseudo_instances"] > 0
    # nothing left unlabeled: one line before any training
    from salis.data.prepared import PreparedData
    from salis.errors import SalisError
    from salis.pipeline.train import _teacher_inputs

    prepared = PreparedData(layout.prepared)
    with pytest.raises(SalisError, match="every pool image is labeled, nothing is left for the teacher"):
        _teacher_inputs(params, layout, prepared, 2, set(prepared.pool_ids()))
