"""One function per DVC stage. The scripts in stages/ only parse arguments and call these."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from salis.atomic import atomic_dir, write_json, write_parquet, write_text
import dataclasses

from salis.annotation.cost import CostModel
from salis.annotation.export import write_request_batch
from salis.cycle import (
    add_labeled,
    check_budget,
    empty_labeled,
    empty_pseudo,
    initial_selection,
    pseudo_labels,
    select_batch,
)
from salis.data.prepare import prepare_dataset
from salis.data.prepared import PreparedData, SimulatedOracle
from salis.errors import InputError, SalisError
from salis.labels import (
    annotations_by_image,
    awaiting_message,
    empty_store,
    extend_store,
    human_batch,
    read_store,
    simulated_batch,
)
from salis.layout import Layout
from salis.params import Params, parse_model_params
from salis.report import write_report
from salis.tables import INSTANCE_SCHEMA

# torch-dependent modules are imported inside the stages that need them: the bookkeeping
# stages (init, select, pseudo_label, report) then start in a fraction of a second.

def read_table(path: Path, stage_hint: str) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(path, f"missing; it is written by the {stage_hint} stage (run `dvc repro`)")
    return pd.read_parquet(path)


def stage_prepare(params: Params, layout: Layout) -> dict:
    return prepare_dataset(params, layout.prepared)


def stage_init(params: Params, layout: Layout) -> pd.DataFrame:
    """The random initial batch (request batch 0); refuses impossible budgets before any training."""
    prepared = PreparedData(layout.prepared)
    pool_ids = prepared.pool_ids()
    check_budget(len(pool_ids), params.select.initial, params.select.budget, params.num_cycles)
    selected = initial_selection(pool_ids, params.select.initial, params.seed)
    write_parquet(layout.selected(0), selected)
    write_parquet(layout.labeled(0), empty_labeled())
    write_json(layout.annotations(0), empty_store(prepared.categories))
    write_parquet(layout.pseudo(1), empty_pseudo())
    no_predictions = INSTANCE_SCHEMA.empty_table().to_pandas()
    write_request_batch(layout.requests(0), prepared, selected["image_id"].tolist(), no_predictions, cycle=0)
    return selected


def cost_model(params: Params) -> CostModel:
    return CostModel(**dataclasses.asdict(params.cost))


def stage_annotate(params: Params, layout: Layout, cycle: int) -> pd.DataFrame:
    """labeled@k and its label store: cycle k-1's labeled set plus the batch selected after it.

    Labels come from the simulated oracle, or from humans through `salis labels import`; until
    those exist this stage stops the pipeline with the command to run.
    """
    prepared = PreparedData(layout.prepared)
    batch_cycle = cycle - 1
    selected = read_table(layout.selected(batch_cycle), "select")
    labeled = read_table(layout.labeled(batch_cycle), "annotate")
    store = read_store(layout.annotations(batch_cycle))
    ids = selected["image_id"].tolist()
    if params.oracle == "simulated":
        batch, returned, source = simulated_batch(prepared, ids), [], "simulated_oracle"
    else:
        labels_path = layout.imported_labels(batch_cycle)
        if not labels_path.is_file():
            raise SalisError(awaiting_message(batch_cycle, layout.requests(batch_cycle), labels_path))
        batch, returned = human_batch(labels_path, ids, set(prepared.category_ids))
        source = "human"
    cost = cost_model(params)
    seconds = {i: cost.image_seconds(len(anns), len(prepared.categories)) for i, anns in batch.items()}
    merged = add_labeled(labeled, selected, set(batch), seconds, cycle, source)
    infos = [prepared.image_info(i) for i in batch]
    write_json(layout.annotations(cycle), extend_store(store, infos, batch))
    write_parquet(layout.labeled(cycle), merged)
    note = f"; {len(returned)} returned to the pool unlabeled" if returned else ""
    print(f"cycle {cycle}: {len(batch)} images labeled by {source}{note}; {len(merged)} labeled in all")
    return merged


def stage_init_model(params: Params, layout: Layout) -> str:
    """The weights every cycle starts from: seeded random init, or a local weights file."""
    from salis.model.build import seeded_model
    from salis.model.checkpoint import load_initial_weights, save_checkpoint

    prepared = PreparedData(layout.prepared)
    model = seeded_model(params.model, len(prepared.categories), params.seed)
    note = "random init (seed {})".format(params.seed)
    if params.model.weights:
        note = load_initial_weights(model, params.model.weights)
    save_checkpoint(layout.model(0), model, params.model, prepared.categories, {"init": note})
    return note


def model_from_checkpoint(path: Path) -> tuple[object, dict]:
    from salis.model.build import build_model
    from salis.model.checkpoint import load_checkpoint, restore

    state = load_checkpoint(path)
    model_params = parse_model_params(state["model_params"], str(path))
    model = build_model(model_params, len(state["categories"]))
    restore(model, path)
    return model, state


def stage_train(params: Params, layout: Layout, cycle: int) -> dict:
    from dvclive import Live

    from salis.device import pick_device
    from salis.model.build import build_model
    from salis.model.checkpoint import restore, save_checkpoint
    from salis.samples import LabeledSamples, PseudoSamples
    from salis.training import train_model

    prepared = PreparedData(layout.prepared)
    start = layout.model(cycle - 1) if params.train.warm_start else layout.model(0)
    model = build_model(params.model, len(prepared.categories))
    restore(model, start)
    labeled_ids = read_table(layout.labeled(cycle), "annotate")["image_id"].tolist()
    labeled = LabeledSamples(prepared, labeled_ids, annotations_by_image(read_store(layout.annotations(cycle))))
    pseudo = PseudoSamples(prepared, read_table(layout.pseudo(cycle), "pseudo_label"))
    device = pick_device(params.train.device)
    print(f"cycle {cycle}: training on {len(labeled)} labeled + {len(pseudo)} pseudo-labeled images, {device}")

    t0 = time.perf_counter()
    with atomic_dir(layout.live(cycle)) as live_dir:
        with Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False) as live:

            def log(step: int, values: dict[str, float]) -> None:
                live.step = step
                for name, value in values.items():
                    live.log_metric(f"train/{name}", value, plot=True)

            summary = train_model(model, labeled, pseudo, params.train, params.seed * 1000 + cycle, device, log)
            summary["seconds"] = time.perf_counter() - t0
            for name, value in summary.items():
                live.summary[f"final/{name}"] = value
    save_checkpoint(
        layout.model(cycle), model, params.model, prepared.categories,
        {"cycle": cycle, "labeled_images": len(labeled), "pseudo_images": len(pseudo)},
    )
    return summary


def stage_infer_score(params: Params, layout: Layout, cycle: int) -> pd.DataFrame:
    """Score every unlabeled pool image (never a test image) with cycle k's model; embed every
    pool image, labeled ones included (core-set measures distances to them)."""
    from salis.device import pick_device
    from salis.embeddings import write_embeddings
    from salis.inference import embed, predict
    from salis.scoring import write_score_tables

    prepared = PreparedData(layout.prepared)
    labeled = set(read_table(layout.labeled(cycle), "annotate")["image_id"].tolist())
    pool = prepared.pool_ids()
    unlabeled = [i for i in pool if i not in labeled]
    labeled_pool = [i for i in pool if i in labeled]
    assert not set(pool) & set(prepared.test_ids()), "test images must never be scored or embedded"
    model, _ = model_from_checkpoint(layout.model(cycle))
    device = pick_device(params.train.device)
    size, amp = params.score.batch_size, params.train.amp
    preds = predict(
        model, prepared, unlabeled, size, device, amp, "score pool",
        mc_passes=params.score.mc_passes, seed=params.seed * 1000 + cycle,
    )
    with write_embeddings(layout.embeddings(cycle), len(pool)) as embeddings:
        images = write_score_tables(embeddings.tap(preds), layout.instances(cycle), layout.images(cycle))
        for image_id, vector in embed(model, prepared, labeled_pool, size, device, amp, "embed labeled"):
            embeddings.add(image_id, vector)
    return images


def stage_select(params: Params, layout: Layout, cycle: int) -> pd.DataFrame:
    """Pick the next batch and write it as a request batch (with the model's predictions)."""
    prepared = PreparedData(layout.prepared)
    labeled = read_table(layout.labeled(cycle), "annotate")
    images = read_table(layout.images(cycle), "infer_score")
    selected = select_batch(
        labeled, images, layout.instances(cycle), prepared.pool_ids(), params.sampler,
        params.select.budget, cycle, params.seed, len(prepared.categories),
        beta=params.select.beta, tsp_components=params.select.tsp_components,
        oracle=SimulatedOracle(prepared) if params.oracle == "simulated" else None,
        aggregation=params.select.aggregation, embeddings_path=layout.embeddings(cycle),
    )
    ids = selected["image_id"].tolist()
    predictions = pd.read_parquet(layout.instances(cycle), filters=[("image_id", "in", ids)])
    write_parquet(layout.selected(cycle), selected)
    write_request_batch(layout.requests(cycle), prepared, ids, predictions, cycle=cycle)
    return selected


def stage_pseudo_label(params: Params, layout: Layout, cycle: int) -> pd.DataFrame:
    # images labeled or about to be labeled never get pseudo-labels
    labeled = read_table(layout.labeled(cycle), "annotate")["image_id"].tolist()
    next_labeled = frozenset(labeled + read_table(layout.selected(cycle), "select")["image_id"].tolist())
    p = params.pseudo
    table = pseudo_labels(layout.instances(cycle), next_labeled, p.score_thresh, p.box_iou_thresh, p.mask_iou_thresh)
    if len(table) and table["mask_iou"].isna().all():
        print("pseudo_label: the scoring model has no IoU heads; only pseudo.score_thresh was applied")
    print(f"cycle {cycle}: {len(table)} pseudo-labels on {table['image_id'].nunique()} images for cycle {cycle + 1}")
    write_parquet(layout.pseudo(cycle + 1), table)
    return table


def stage_evaluate(params: Params, layout: Layout, cycle: int) -> dict:
    """COCO metrics of cycle k's model on the test split, plus what it was trained on."""
    from salis.calibration import iou_head_metrics, matched_iou_pairs, pseudo_label_quality
    from salis.device import pick_device
    from salis.evaluation import coco_metrics, detections_from_prediction
    from salis.inference import predict

    prepared = PreparedData(layout.prepared)
    model, _ = model_from_checkpoint(layout.model(cycle))
    device = pick_device(params.train.device)
    test_gt: dict[int, list[dict]] = {i: [] for i in prepared.test_ids()}
    for ann in prepared.test_coco()["annotations"]:
        test_gt[int(ann["image_id"])].append(ann)
    detections, pairs = [], []
    for pred in predict(model, prepared, prepared.test_ids(), params.eval.batch_size, device, params.train.amp, "test"):
        detections += detections_from_prediction(pred.image_id, pred.boxes, pred.scores, pred.category_ids, pred.masks)
        pairs.append(matched_iou_pairs(pred, test_gt[pred.image_id]))
    metrics = coco_metrics(prepared.test_coco(), detections)
    pairs_table = pd.concat([p for p in pairs if len(p)] or pairs, ignore_index=True)
    metrics.update(iou_head_metrics(pairs_table))
    write_text(layout.iou_pairs(cycle), pairs_table.to_csv(index=False, float_format="%.5f"))
    labeled = read_table(layout.labeled(cycle), "annotate")
    store = read_store(layout.annotations(cycle))
    pseudo = read_table(layout.pseudo(cycle), "pseudo_label")
    if params.oracle == "simulated":  # the hidden pool ground truth exists only then
        metrics.update(pseudo_label_quality(pseudo, SimulatedOracle(prepared).annotations))
    else:
        metrics.update(pseudo_precision=None, pseudo_mask_iou=None)
    seconds = float(labeled["seconds"].sum())
    metrics.update(
        cycle=cycle,
        labeled_images=len(labeled),
        labeled_instances=len(store["annotations"]),
        pseudo_images=int(pseudo["image_id"].nunique()),
        pseudo_instances=len(pseudo),
        annotation_hours=seconds / 3600.0,
        annotation_money=cost_model(params).money(seconds),
    )
    write_json(layout.metrics(cycle), metrics)
    return metrics


def stage_report(params: Params, layout: Layout) -> None:
    write_report(layout.metrics_dir, layout.curve, layout.summary)
    # predicted vs true mask IoU of the last cycle, for `dvc plots`
    last = max(c.k for c in params.cycles.values())
    source = layout.iou_pairs(last)
    if not source.is_file():
        raise InputError(source, f"missing; it is written by evaluate@c{last}")
    write_text(layout.calibration, source.read_text())
