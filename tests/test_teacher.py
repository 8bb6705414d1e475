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


def test_with_a_background_score_each_label_carries_the_teachers_detections_above_it():
    model = seeded_model(SMALL, 2, seed=0)
    images = [sample(0, False), sample(1, False)]
    cpu = torch.device("cpu")
    plain = Teacher(model, TeacherSettings(decay=0.99, passes=always, min_score=0.0)).pseudo_label(images, cpu, amp=False)
    assert plain and all(s.uncertain_boxes is None for s in plain)  # positive-only: no background at all
    with torch.inference_mode():
        outputs = model.eval()([torch.from_numpy(s.image).permute(2, 0, 1).float() / 255.0 for s in images])
    threshold = float(torch.cat([o["scores"] for o in outputs]).median())
    teacher = Teacher(model, TeacherSettings(decay=0.99, passes=always, min_score=0.0, background_score=threshold))
    made = {s.image_id: s for s in teacher.pseudo_label(images, cpu, amp=False)}
    assert made
    for image, output in zip(images, outputs):
        if image.image_id in made:
            expected = output["boxes"][output["scores"] >= threshold].numpy()
            assert np.allclose(made[image.image_id].uncertain_boxes, expected)
    assert 0 < sum(len(s.uncertain_boxes) for s in made.values()) < sum(len(o["boxes"]) for o in outputs)


def test_the_teacher_records_each_images_labels_from_the_last_time_it_labeled_it():
    from pycocotools import mask as mask_utils

    from salis.geometry import rles_from_counts

    model = seeded_model(SMALL, 2, seed=0)
    images = [sample(0, False), sample(1, False)]
    teacher = Teacher(model, TeacherSettings(decay=0.99, passes=always, min_score=0.0))
    made = teacher.pseudo_label(images, torch.device("cpu"), amp=False, iteration=3)
    rows = teacher.latest_rows()
    assert len(rows) == teacher.instances and [r["image_id"] for r in rows] == sorted(r["image_id"] for r in rows)
    for s in made:  # the recorded masks are the targets the student got, RLE-encoded
        mine = [r for r in rows if r["image_id"] == s.image_id]
        assert [r["label"] for r in mine] == s.labels.tolist() and {r["iteration"] for r in mine} == {3}
        decoded = mask_utils.decode(rles_from_counts([r["rle"] for r in mine], *s.image.shape[:2]))
        assert np.array_equal(decoded.transpose(2, 0, 1), s.masks)
    mirrored = teacher.pseudo_label([images[1].flipped()], torch.device("cpu"), amp=False, iteration=5)
    assert mirrored  # the plan's flip is the weak view: the student learns mirrored masks, the record is unmirrored
    mine = [r for r in teacher.latest_rows() if r["image_id"] == images[1].image_id]
    decoded = mask_utils.decode(rles_from_counts([r["rle"] for r in mine], *images[1].image.shape[:2]))
    assert {r["iteration"] for r in mine} == {5} and np.array_equal(decoded.transpose(2, 0, 1), mirrored[0].masks[:, :, ::-1])
    assert not np.array_equal(mirrored[0].masks, mirrored[0].masks[:, :, ::-1])  # not symmetric: the check can fail
    teacher.pseudo_label(images[:1], torch.device("cpu"), amp=False, iteration=7)  # image 0 again: replaced
    assert {r["iteration"] for r in teacher.latest_rows() if r["image_id"] == images[0].image_id} == {7}
    teacher.settings = TeacherSettings(decay=0.99, passes=never, min_score=0.0)
    teacher.pseudo_label(images[:1], torch.device("cpu"), amp=False, iteration=9)  # nothing passes now: stale labels go
    assert images[0].image_id not in {r["image_id"] for r in teacher.latest_rows()}


def test_ranks_merge_to_the_last_labeling_of_each_image():
    from salis.engine.training import _latest_over_ranks

    def rows(image_id, iteration, n):
        return [{"image_id": image_id, "iteration": iteration, "n": k} for k in range(n)]

    rank0 = rows(1, 5, 2) + rows(4, 2, 1)
    rank1 = rows(1, 8, 1) + rows(2, 3, 2) + rows(4, 2, 3)  # image 1 later on rank 1; image 4 a tie
    merged = _latest_over_ranks([rank0, rank1])
    assert merged == rows(1, 8, 1) + rows(2, 3, 2) + rows(4, 2, 1)


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
    with pytest.raises(ParamsError, match=r"pseudo.background_score must lie in \[model.box_score_thresh \(0.05\), 1\].*got 0.01"):
        parse_params(tiny(pseudo={"background": "confident", "background_score": 0.01}))
    with pytest.raises(ParamsError, match="pseudo.background_score .* got 1.5"):
        parse_params(tiny(pseudo={"background_score": 1.5}))
    with pytest.raises(ParamsError, match="pseudo.background"):
        parse_params(tiny(pseudo={"background": "trusted"}))


def test_the_stages_in_teacher_mode_train_on_the_teachers_labels_not_on_pseudo_parquet(tmp_path, monkeypatch):
    from salis.artifacts.layout import Layout
    from salis.artifacts.tables import PSEUDO, read_table
    from salis.data.prepared import PreparedData
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
    # what the teacher made, each image as last labeled: unlabeled pool images only, real categories
    from salis.artifacts.tables import LABELED, TEACHER_PSEUDO

    iterations = {k: int(summaries[k]["iterations"]) for k in (1, 2)}
    for k in (1, 2):
        made = read_table(layout.teacher_pseudo(k), TEACHER_PSEUDO)
        labeled_ids = set(read_table(layout.labeled(k), LABELED)["image_id"])
        assert 0 < len(made) <= summaries[k]["teacher_pseudo_instances"]
        assert not set(made["image_id"]) & labeled_ids
        assert set(made["category_id"]) <= {c["id"] for c in PreparedData(layout.prepared).categories}
        assert made["iteration"].between(1, iterations[k]).all() and (made["score"] >= 0.0).all()
    threads = torch.get_num_threads()
    try:
        metrics = run_stage("evaluate", params, layout, 2)  # measured against the hidden truth
    finally:
        torch.set_num_threads(threads)
    assert 0.0 <= metrics["teacher_pseudo_precision"] <= 1.0 and 0.0 <= metrics["teacher_pseudo_mask_iou"] <= 1.0
    assert metrics["teacher_pseudo_instances_last"] == len(made) and metrics["pseudo_precision"] is None
    # the pseudo-label gallery shows the teacher's labels (pseudo.parquet is empty in this mode)
    from salis.pipeline import pictures

    drawn = {}
    monkeypatch.setattr(pictures, "draw_grid", lambda rows, path, title, labels: drawn.update(labels=labels, rows=rows))
    pictures.pseudo_gallery(layout, PreparedData(layout.prepared), None, 2, 3, tmp_path / "pseudo.jpg")
    assert drawn["labels"] == ["teacher's labels"] and 0 < len(drawn["rows"][0]) <= 3
    # nothing left unlabeled: one line before any training
    from salis.errors import SalisError
    from salis.pipeline.train import _teacher_inputs

    prepared = PreparedData(layout.prepared)
    with pytest.raises(SalisError, match="every pool image is labeled, nothing is left for the teacher"):
        _teacher_inputs(params, layout, prepared, 2, set(prepared.pool_ids()))
