"""Jointly trained IoU heads against heads refitted on the same frozen features, at several lengths.

    python bench/iou_refit.py --cycle 3 --iterations 150,600 [--test-images 100] [--out FILE]

Run in a project whose pipeline has run cycle K (a workspace of `dvc repro` or of the last `dvc exp
run`). Cycle K's checkpoint and its labeled images are read as train@K saw them; for each length
the two IoU heads are re-initialised and fitted on the frozen model (salis.engine.iou_refit, as
`train.iou_refit_iterations` does), then the test split is predicted and the heads' Pearson and
mean absolute error against the true IoU are reported over every detection and over the matched
ones (evaluate@K's definitions). Everything but the heads is the same weights in every row, so the
rows differ in how the heads were fitted only. Writes nothing into the project.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import pandas as pd
import torch

from salis.analysis.calibration import iou_head_metrics, iou_pairs
from salis.analysis.evaluation import detections_from_prediction
from salis.annotation.kinds import label_kind
from salis.artifacts.layout import Layout
from salis.artifacts.tables import LABELED, read_table
from salis.data.prepared import PreparedData
from salis.engine.augment import Augmenter, AugmentSettings, skip_model_resize
from salis.engine.datasets import LabeledSamples
from salis.engine.device import configure_runtime
from salis.engine.inference import predict
from salis.engine.iou_refit import refit_iou_heads
from salis.engine.training import PlannedBatches, rank_plan
from salis.geometry import rle
from salis.loop.labels import annotations_by_image, label_types_of, read_store
from salis.model.checkpoint import load_model
from salis.params import load_params
from salis.seeds import derive_seed

KEYS = ("box_iou_pearson_all", "mask_iou_pearson_all", "box_iou_pearson", "mask_iou_pearson",
        "box_iou_mae_all", "mask_iou_mae_all")


def head_quality(model, prepared: PreparedData, test_ids: list[int], batch_size: int) -> dict[str, float]:
    truth: dict[int, list[dict]] = {i: [] for i in test_ids}
    for ann in prepared.test_coco()["annotations"]:
        if int(ann["image_id"]) in truth:
            truth[int(ann["image_id"])].append(ann)
    pairs = []
    for pred in predict(model, prepared, test_ids, batch_size, torch.device("cpu"), False, "test"):
        dets = detections_from_prediction(pred.image_id, pred.boxes, pred.scores, pred.category_ids, pred.masks)
        pairs.append(iou_pairs(pred, truth[pred.image_id], [rle(d["segmentation"]) for d in dets]))
    metrics = iou_head_metrics(pd.concat([p for p in pairs if len(p)], ignore_index=True))
    return {k: round(float(metrics[k]), 4) for k in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycle", type=int, required=True)
    parser.add_argument("--iterations", default="150,600", help="refit lengths, comma-separated")
    parser.add_argument("--test-images", type=int, default=0, help="the first N test images (0: all)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    params = load_params(args.params)
    configure_runtime(params.runtime)
    layout = Layout()
    prepared = PreparedData(layout.prepared)
    trained, _ = load_model(layout.model(args.cycle))
    store = read_store(layout.annotations(args.cycle))
    kinds = label_types_of(store)  # the images train@K learned masks from (as its expert set, less boxes)
    ids = [int(i) for i in read_table(layout.labeled(args.cycle), LABELED)["image_id"]
           if label_kind(kinds[int(i)]).training == "full"]
    labeled = LabeledSamples(prepared, ids, annotations_by_image(store), set())
    test_ids = prepared.test_ids()[: args.test_images or None]
    settings = AugmentSettings.from_params(params.augment)
    model_size = (trained.transform.min_size[-1], trained.transform.max_size)
    augmenter = Augmenter(settings, model_size) if settings.active else None
    seed = derive_seed(derive_seed(params.seed, args.cycle, "train"), 0, "iou refit")

    rows = [{"heads": "joint (as trained)", "iterations": 0, "seconds": 0.0,
             **head_quality(trained, prepared, test_ids, params.eval.batch_size)}]
    print(json.dumps(rows[-1]))
    for iterations in [int(n) for n in args.iterations.split(",")]:
        model = copy.deepcopy(trained)
        plan = rank_plan(labeled, [], params.train, seed, iterations, False, 0, 1)
        views = PlannedBatches(plan, labeled, [], augmenter, seed)
        start = time.perf_counter()
        with skip_model_resize(model, settings.resizes):
            refit_iou_heads(model, (views[it][0] for it in range(iterations)), iterations, params.train,
                            torch.device("cpu"), seed)
        seconds = time.perf_counter() - start
        rows.append({"heads": "refit", "iterations": iterations, "seconds": round(seconds, 1),
                     **head_quality(model, prepared, test_ids, params.eval.batch_size)})
        print(json.dumps(rows[-1]))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
