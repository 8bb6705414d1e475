"""Stage `train@k`: cycle k's model, from labeled@k and the pseudo-labels made at cycle k-1."""

from __future__ import annotations

import json
import time

import pandas as pd
from dvclive import Live

from salis.annotation.kinds import label_kind
from salis.artifacts.atomic import atomic_dir, write_csv
from salis.artifacts.layout import Layout
from salis.artifacts.tables import LABELED, PSEUDO, PSEUDO_UNCERTAIN, TEACHER_PSEUDO, WEAK, read_table, write_table
from salis.data.prepared import PreparedData
from salis.engine.datasets import ConcatSamples, EmptySamples, LabeledSamples, PseudoSamples
from salis.engine import distributed as dist
from salis.engine.device import configure_runtime, pick_device
from salis.engine.teacher import TeacherSettings
from salis.engine.training import schedule_iterations, train_model
from salis.errors import SalisError
from salis.loop.gate import GateReport
from salis.loop.labels import annotations_by_image, label_types_of, read_store
from salis.model.build import build_model
from salis.model.checkpoint import restore, save_checkpoint
from salis.model.heads import BoxSupervision
from salis.params import AugmentParams, Params
from salis.seeds import derive_seed


def stage_train(params: Params, layout: Layout, cycle: int) -> dict:
    configure_runtime(params.runtime)
    prepared = PreparedData(layout.prepared)
    cold = not params.train.warm_start or cycle == 1  # starts from the initial weights
    start = layout.model(0) if cold else layout.model(cycle - 1)
    t = params.train
    boxinst = BoxSupervision(t.box_projection_weight, t.box_pairwise_weight, t.box_pairwise_color_tau)
    model = build_model(params.model, len(prepared.categories), box_supervision=boxinst)
    restore(model, start)
    store = read_store(layout.annotations(cycle))
    route = {i: label_kind(t).training for i, t in label_types_of(store).items()}
    labeled_ids = read_table(layout.labeled(cycle), LABELED)["image_id"].tolist()
    # masks and boxes come from the annotators; weak kinds (points, image labels) through weak_label@k's targets
    expert_ids = [i for i in labeled_ids if route[int(i)] in ("full", "boxes")]
    boxes = {int(i) for i in expert_ids if route[int(i)] == "boxes"}
    expert = LabeledSamples(prepared, expert_ids, annotations_by_image(store), boxes)
    weak = read_table(layout.weak(cycle), WEAK)
    weak_full = PseudoSamples(prepared, weak[weak["supervision"] == "full"], positive_only=False)
    empty = EmptySamples(prepared, json.loads(layout.weak_summary(cycle).read_text()).get("weak_empty_image_ids", []))
    labeled = ConcatSamples(expert, weak_full, empty) if len(weak_full) or len(empty) else expert
    pseudo_table = read_table(layout.pseudo(cycle), PSEUDO)
    confident = params.pseudo.background == "confident"
    uncertain = read_table(layout.pseudo_uncertain(cycle), PSEUDO_UNCERTAIN) if confident else None
    pseudo = PseudoSamples(prepared, pseudo_table, uncertain=uncertain)
    weak_partial = weak[weak["supervision"] != "full"]
    if len(weak_partial):
        pseudo = ConcatSamples(pseudo, PseudoSamples(prepared, weak_partial))
    teacher = None
    if params.pseudo.mode == "teacher":
        pseudo, teacher = _teacher_inputs(params, layout, prepared, cycle, set(int(i) for i in labeled_ids) | set(weak["image_id"]))
    device = dist.device_for(params.runtime) or pick_device(params.runtime.device)
    iterations = schedule_iterations(params.train, len(labeled), cold)
    weak_note = f" ({len(boxes)} with boxes, {len(weak_full)} complete from points or image labels)" if boxes or len(weak_full) else ""
    if dist.is_main():
        print(f"cycle {cycle}: training on {len(labeled)} labeled{weak_note} + {len(pseudo)} pseudo-labeled images, "
              f"{iterations} iterations ({iterations * params.train.batch_size / max(len(labeled), 1):.1f} epochs), "
              f"{device}" + (f", {dist.world_size()} processes" if dist.world_size() > 1 else ""))

    t0 = time.perf_counter()
    seed = derive_seed(params.seed, cycle, "train")
    if not dist.is_main():  # the other ranks train their share; rank 0 logs and writes
        train_model(model, labeled, pseudo, params.train, seed, device, params.runtime.amp,
                    workers=params.runtime.workers, augment=params.augment, cold_start=cold,
                    teacher=teacher, strong=_strong_view(params))
        return {}
    with atomic_dir(layout.live(cycle)) as live_dir:
        with Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False) as live:

            logged: list[dict[str, float]] = []

            def log(step: int, values: dict[str, float]) -> None:
                live.step = step
                logged.append({"step": step, **values})
                for name, value in values.items():
                    live.log_metric(f"train/{name}", value, plot=True)

            made: list[dict] = []
            summary = train_model(
                model, labeled, pseudo, params.train, seed, device, params.runtime.amp, log,
                workers=params.runtime.workers, augment=params.augment, cold_start=cold,
                teacher=teacher, strong=_strong_view(params), teacher_labels=made,
            )
            summary["seconds"] = time.perf_counter() - t0
            for name, value in summary.items():
                live.summary[f"final/{name}"] = value
    rows = [{k: v for k, v in row.items() if k != "label"} | {"category_id": prepared.category_of(row["label"])}
            for row in made]
    write_table(layout.teacher_pseudo(cycle), pd.DataFrame(rows, columns=TEACHER_PSEUDO.schema.names), TEACHER_PSEUDO)
    columns = list(dict.fromkeys(["step", *(key for row in logged for key in row)]))
    write_csv(layout.train_log(cycle), pd.DataFrame(logged, columns=columns))
    save_checkpoint(
        layout.model(cycle), model, params.model, prepared.categories,
        {"cycle": cycle, "labeled_images": len(labeled), "pseudo_images": len(pseudo)},
    )
    return summary


def _teacher_inputs(params: Params, layout: Layout, prepared: PreparedData, cycle: int,
                    labeled: set[int]) -> tuple[EmptySamples, TeacherSettings | None]:
    """pseudo.mode teacher: the unlabeled pool images (the teacher labels them as training goes)
    and the teacher's gate: the cycle's gate (pseudo_label@k: fixed, or calibrated on model k-1's
    detections, which the teacher starts from); a closed gate makes no pseudo-labels."""
    unlabeled = [i for i in prepared.pool_ids() if int(i) not in labeled]
    if not unlabeled:
        raise SalisError("pseudo.mode teacher: every pool image is labeled, nothing is left for the teacher to label")
    gate = GateReport.from_json(json.loads(layout.pseudo_gate(cycle).read_text())).gate
    if gate is None:
        print(f"cycle {cycle}: the pseudo-label gate is closed: the teacher makes no pseudo-labels this cycle")
        return EmptySamples(prepared, []), None
    background = params.pseudo.background_score if params.pseudo.background == "confident" else None
    return EmptySamples(prepared, unlabeled), TeacherSettings(params.pseudo.ema_decay, gate.passes, gate.score, background)


def _strong_view(params: Params) -> AugmentParams:
    """The student's view of a teacher-labeled image: the strong preset with Unbiased Teacher's
    colour jitter strength (0.4)."""
    return AugmentParams(preset=params.pseudo.strong_augment, brightness=0.4, contrast=0.4)
