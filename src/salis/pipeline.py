"""One function per DVC stage. The scripts in stages/ only parse arguments and call these."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from salis.atomic import atomic_dir, write_json, write_parquet, write_text
from salis.cycle import check_budget, empty_pseudo, initial_labeled, pseudo_labels, select_next
from salis.data.prepare import prepare_dataset
from salis.data.prepared import PreparedData, SimulatedOracle
from salis.errors import InputError
from salis.layout import Layout
from salis.params import Params, parse_model_params
from salis.report import write_report

# torch-dependent modules are imported inside the stages that need them: the bookkeeping
# stages (init, select, pseudo_label, report) then start in a fraction of a second.

def read_table(path: Path, stage_hint: str) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(path, f"missing; it is written by the {stage_hint} stage (run `dvc repro`)")
    return pd.read_parquet(path)


def stage_prepare(params: Params, layout: Layout) -> dict:
    return prepare_dataset(params, layout.prepared)


def stage_init(params: Params, layout: Layout) -> pd.DataFrame:
    """Cycle 1's random labeled set; refuses impossible budgets before any training."""
    prepared = PreparedData(layout.prepared)
    pool_ids = prepared.pool_ids()
    check_budget(len(pool_ids), params.select.initial, params.select.budget, params.num_cycles)
    labeled = initial_labeled(pool_ids, params.select.initial, params.seed)
    write_parquet(layout.labeled(1), labeled)
    write_parquet(layout.pseudo(1), empty_pseudo())
    return labeled


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
    labeled_ids = read_table(layout.labeled(cycle), "select")["image_id"].tolist()
    labeled = LabeledSamples(prepared, labeled_ids)
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
    labeled = set(read_table(layout.labeled(cycle), "select")["image_id"].tolist())
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
    prepared = PreparedData(layout.prepared)
    labeled = read_table(layout.labeled(cycle), "select")
    images = read_table(layout.images(cycle), "infer_score")
    merged = select_next(
        labeled, images, layout.instances(cycle), prepared.pool_ids(), params.sampler,
        params.select.budget, cycle, params.seed, len(prepared.categories),
        beta=params.select.beta, tsp_components=params.select.tsp_components,
        oracle=SimulatedOracle(prepared), aggregation=params.select.aggregation,
        embeddings_path=layout.embeddings(cycle),
    )
    write_parquet(layout.labeled(cycle + 1), merged)
    return merged


def stage_pseudo_label(params: Params, layout: Layout, cycle: int) -> pd.DataFrame:
    next_labeled = frozenset(read_table(layout.labeled(cycle + 1), "select")["image_id"].tolist())
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
    labeled_ids = read_table(layout.labeled(cycle), "select")["image_id"].tolist()
    pseudo = read_table(layout.pseudo(cycle), "pseudo_label")
    oracle = SimulatedOracle(prepared)
    metrics.update(pseudo_label_quality(pseudo, oracle.annotations))
    metrics.update(
        cycle=cycle,
        labeled_images=len(labeled_ids),
        labeled_instances=sum(len(oracle.annotations(i)) for i in labeled_ids),
        pseudo_images=int(pseudo["image_id"].nunique()),
        pseudo_instances=len(pseudo),
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
