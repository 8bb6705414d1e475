"""Cost of each acquisition function: infer_score plus select, per 1,000 pool images.

On the built-in synthetic data at the default (CPU) model size, one torch thread, CPU seconds
(process time) next to wall time, since the 2-core machine it was written on is shared:

1. infer_score itself (scores, instance tables, embeddings), without and with MC passes and
   the loss-prediction module, at two detection counts: random weights, which hit the
   100-detections-per-image cap (the worst case), and a cap of 20, standing in for a trained
   model on this data (at most 18 objects per image). Embedding the labeled images (backbone
   and FPN only) is timed on its own, and so is the embedding's average pooling.
2. select: the score tables and embeddings tiled to larger pools, each sampler in a fresh
   process: time, traced heap peak (numpy/pandas; Arrow's own buffers are bounded by a row
   group), growth per image.
3. core-set at N = 100,000, D = 1,024 on random embeddings: time, traced heap peak and RSS.

    python bench/sampler_cost.py                  # about 5 minutes on 2 busy CPU cores
    python bench/sampler_cost.py --quick          # smaller, for a smoke test

Writes bench/results/sampler_cost.json and .md (the README's table comes from there).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = ["random", "entropy", "tsp", "beta_iou", "mc_dropout", "coreset", "learning_loss"]
BUDGET = 20


# --- workers: run in a fresh process so that peak RSS belongs to one measurement -----------

def _status_mb(field: str) -> float:
    """A field of /proc/self/status in MiB (RssAnon: heap and other private memory; RssFile:
    resident pages of mapped files, which the kernel can drop and read again)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def worker_select(root: Path, sampler: str, num_classes: int) -> dict:
    from salis.acquisition.samplers import get_sampler
    from salis.loop.selection import select_batch

    labeled = pd.read_parquet(root / "labeled.parquet")
    images = pd.read_parquet(root / "images.parquet")
    pool_ids = np.load(root / "pool_ids.npy")
    args = (get_sampler(sampler), labeled, images, pool_ids, BUDGET, 1, 0, num_classes)
    kwargs = {"instances_path": root / "instances.parquet", "embeddings_path": root / "embeddings"}
    t0 = time.perf_counter()
    select_batch(*args, **kwargs)
    seconds = time.perf_counter() - t0
    tracemalloc.start()  # a second run, traced (tracing slows allocation-heavy code down)
    select_batch(*args, **kwargs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": seconds, "traced_peak_mb": peak / 2**20}


def worker_coreset(root: Path, labeled: int, budget: int) -> dict:
    from salis.acquisition.embeddings import open_embeddings
    from salis.acquisition.samplers.coreset import k_center_greedy

    ids, vectors = open_embeddings(root)
    centers = np.zeros(len(ids), dtype=bool)
    centers[:labeled] = True
    anon, mapped = _status_mb("RssAnon"), _status_mb("RssFile")
    tracemalloc.start()
    t0 = time.perf_counter()
    k_center_greedy(vectors, ids, ~centers, centers, budget)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": seconds, "traced_peak_mb": peak / 2**20, "rss_anon_growth_mb": _status_mb("RssAnon") - anon,
            "rss_file_growth_mb": _status_mb("RssFile") - mapped, "matrix_mb": vectors.nbytes / 2**20}


def worker_infer(work: Path, pool: int, cap: int) -> dict:
    """The whole infer_score stage at T = 0 with whichever salis is on the path: only APIs that
    predate this benchmark, so a baseline source tree can run it too (--baseline-src)."""
    import shutil

    import torch

    from salis.artifacts.layout import Layout
    from salis.params import parse_params
    from salis.pipeline.infer_score import stage_infer_score
    from salis.pipeline.init import stage_init
    from salis.pipeline.init_model import stage_init_model
    from salis.pipeline.prepare import stage_prepare

    torch.set_num_threads(1)
    params = parse_params({
        "data": {"synthetic": {"pool_images": pool, "test_images": 4}},
        "model": {"detections_per_image": cap}, "runtime": {"device": "cpu"},
        "select": {"initial": BUDGET, "budget": BUDGET}, "cycles": {"c1": {"k": 1, "prev": 0, "next": 2}},
    })
    layout = Layout(work)
    stage_prepare(params, layout)
    stage_init(params, layout)
    stage_init_model(params, layout)
    layout.model(1).parent.mkdir(parents=True)
    shutil.copy(layout.model(0), layout.model(1))
    stage_infer_score(params, layout, 1)  # warm-up
    w0, c0 = time.perf_counter(), time.process_time()
    stage_infer_score(params, layout, 1)
    unlabeled = pool - BUDGET
    return {"cpu_per_1000_s": (time.process_time() - c0) / unlabeled * 1000,
            "wall_per_1000_s": (time.perf_counter() - w0) / unlabeled * 1000}


def run_worker(*args: str, src: Path = ROOT / "src") -> dict:
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")  # one thread, as torch
    out = subprocess.run([sys.executable, __file__, "--worker", *args], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the benchmark -------------------------------------------------------------------------

def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem / 2**20, 1),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": os.getloadavg()}


def make_project(work: Path, pool: int) -> tuple:
    """A prepared synthetic pool and its initial labeled set (cycle 1)."""
    from salis.artifacts.layout import Layout
    from salis.params import parse_params
    from salis.pipeline.init import stage_init
    from salis.pipeline.prepare import stage_prepare

    params = parse_params({
        "data": {"synthetic": {"pool_images": pool, "test_images": 4}},
        "runtime": {"device": "cpu"},
        "select": {"initial": BUDGET, "budget": BUDGET},
        "cycles": {"c1": {"k": 1, "prev": 0, "next": 2}},
    })
    layout = Layout(work)
    stage_prepare(params, layout)
    stage_init(params, layout)
    return params, layout


def variant(project, params, name: str, **model_changes):
    """A layout sharing the project's data whose cycle-1 model is the seeded initial model with
    `model_changes` (the same weights for every variant: extra modules are created last)."""
    from salis.artifacts.layout import Layout
    from salis.pipeline.init_model import stage_init_model

    layout = Layout(project.root / name)
    (layout.root / "data").mkdir(parents=True)
    os.symlink(project.prepared.resolve(), layout.prepared)
    layout.labeled(1).parent.mkdir(parents=True)
    layout.labeled(1).write_bytes(project.labeled(1).read_bytes())
    params = dataclasses.replace(params, model=dataclasses.replace(params.model, **model_changes))
    stage_init_model(params, layout)
    layout.model(1).parent.mkdir(parents=True)
    os.replace(layout.model(0), layout.model(1))
    return params, layout


def time_infer_score(params, layout, mc_passes: int) -> tuple[float, float, pd.DataFrame]:
    """(wall seconds, CPU seconds, images table) of one infer_score run."""
    from salis.pipeline.infer_score import stage_infer_score

    scored = dataclasses.replace(params, score=dataclasses.replace(params.score, mc_passes=mc_passes))
    w0, c0 = time.perf_counter(), time.process_time()
    images = stage_infer_score(scored, layout, 1)
    return time.perf_counter() - w0, time.process_time() - c0, images


def time_labeled_embedding(layout, labeled_ids: list[int]) -> tuple[float, float]:
    import torch

    from salis.data.prepared import PreparedData
    from salis.engine.inference import embed
    from salis.model.checkpoint import load_model as model_from_checkpoint

    model, _ = model_from_checkpoint(layout.model(1))
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in embed(model, PreparedData(layout.prepared), labeled_ids, 8, torch.device("cpu")):
        pass
    return time.perf_counter() - w0, time.process_time() - c0


def time_pooling(layout) -> float:
    """Seconds per image of the embedding's average pooling alone (what T = 0 scoring adds)."""
    import torch

    from salis.data.prepared import PreparedData
    from salis.model.checkpoint import load_model as model_from_checkpoint

    prepared = PreparedData(layout.prepared)
    model, _ = model_from_checkpoint(layout.model(1))
    model.eval()
    ids = prepared.pool_ids()[:8]
    with torch.inference_mode():
        images = [torch.from_numpy(prepared.load_image(i)).permute(2, 0, 1).float() / 255 for i in ids]
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        t0 = time.process_time()
        for _ in range(50):
            model.roi_heads.image_features(features, batch.image_sizes)
    return (time.process_time() - t0) / 50 / len(ids)


def infer_rows_bytes_per_image(work: Path, n: int = 20_000) -> float:
    """infer_score's state that grows with the pool: one images.parquet row per scored image
    (instances are streamed out in row groups). Traced heap peak per image, with images that
    have no detection, so only the per-image part is measured."""
    from salis.engine.inference import Prediction
    from salis.acquisition.scoring import write_score_tables

    def empty(i: int) -> Prediction:
        z = np.zeros(0, np.float32)
        return Prediction(i, np.zeros((0, 4), np.float32), z, np.zeros(0, np.int64), np.zeros((0, 8, 8), bool),
                          np.zeros((0, 4), np.float32), z, z)

    tracemalloc.start()
    write_score_tables((empty(i) for i in range(n)), work / "rows_inst.parquet", work / "rows_img.parquet")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / n


def tile(layout, out: Path, size: int) -> int:
    """Score tables and embeddings of `size` unlabeled images, tiled from cycle 1's, plus the
    labeled set (its embeddings once)."""
    from salis.acquisition.embeddings import open_embeddings, write_embeddings
    from salis.acquisition.scoring import ROWS_PER_GROUP
    from salis.artifacts.tables import INSTANCE_SCHEMA

    out.mkdir(parents=True, exist_ok=True)
    images = pd.read_parquet(layout.images(1))
    instances = pd.read_parquet(layout.instances(1))
    labeled = pd.read_parquet(layout.labeled(1))
    ids, vectors = open_embeddings(layout.embeddings(1))
    row = {int(i): r for r, i in enumerate(ids)}
    offset = int(max(ids.max(), 0)) + 1
    copies = math.ceil(size / len(images))
    rng = np.random.default_rng(0)

    tiled = pd.concat([images.assign(image_id=images["image_id"] + k * offset) for k in range(copies)])
    tiled = tiled.iloc[:size].reset_index(drop=True)
    wanted = set(tiled["image_id"])
    tiled.to_parquet(out / "images.parquet", index=False)
    labeled.to_parquet(out / "labeled.parquet", index=False)
    with pq.ParquetWriter(out / "instances.parquet", INSTANCE_SCHEMA) as writer:
        for k in range(copies):
            part = instances.assign(image_id=instances["image_id"] + k * offset)
            part = part[part["image_id"].isin(wanted)]
            writer.write_table(pa.Table.from_pandas(part, schema=INSTANCE_SCHEMA, preserve_index=False),
                               row_group_size=ROWS_PER_GROUP)
    labeled_ids = labeled["image_id"].tolist()
    with write_embeddings(out / "embeddings", size + len(labeled_ids)) as emb:
        for image_id in tiled["image_id"].tolist():
            source = vectors[row[image_id % offset]]
            emb.add(image_id, source + rng.normal(0, 1e-3, source.shape).astype(np.float32))
        for image_id in labeled_ids:
            emb.add(image_id, vectors[row[image_id]])
    np.save(out / "pool_ids.npy", np.array(sorted(wanted | set(labeled_ids)), dtype=np.int64))
    return len(instances) * copies


def random_embeddings(folder: Path, n: int, d: int) -> None:
    from salis.acquisition.embeddings import write_embeddings

    rng = np.random.default_rng(0)
    with write_embeddings(folder, n) as writer:
        for start in range(0, n, 10_000):
            block = rng.normal(size=(min(10_000, n - start), d)).astype(np.float32)
            for i, vector in enumerate(block):
                writer.add(start + i, vector)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=80, help="synthetic pool images (20 of them labeled)")
    parser.add_argument("--mc-passes", type=int, default=10)
    parser.add_argument("--select-sizes", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--coreset-n", type=int, default=100_000)
    parser.add_argument("--coreset-d", type=int, default=1024)
    parser.add_argument("--coreset-labeled", type=int, default=200)
    parser.add_argument("--baseline-src", type=Path, help="another salis src/ tree: time its infer_score at T = 0 "
                        "against this one's (e.g. the commit before the acquisition functions, via git archive)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sampler_cost")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "select":
            print(json.dumps(worker_select(Path(rest[0]), rest[1], int(rest[2]))))
        elif kind == "infer":
            print(json.dumps(worker_infer(Path(rest[0]), int(rest[1]), int(rest[2]))))
        else:
            print(json.dumps(worker_coreset(Path(rest[0]), int(rest[1]), int(rest[2]))))
        return
    if args.quick:
        args.pool, args.mc_passes = 44, 2
        args.select_sizes, args.coreset_n, args.coreset_d, args.coreset_labeled = [500, 1000], 5000, 64, 20

    import torch

    torch.set_num_threads(1)  # CPU seconds that mean the same on a busy machine
    result: dict = {"machine": machine(), "args": {k: str(v) if isinstance(v, Path) else v
                                                   for k, v in vars(args).items() if k not in ("out", "worker")}}
    with tempfile.TemporaryDirectory(prefix="salis-bench-") as tmp:
        work = Path(tmp)
        params, project = make_project(work / "project", args.pool)
        labeled_ids = pd.read_parquet(project.labeled(1))["image_id"].tolist()
        unlabeled = args.pool - len(labeled_ids)
        T = args.mc_passes
        variants = {
            "cap100": variant(project, params, "cap100", detections_per_image=100),
            "cap20": variant(project, params, "cap20", detections_per_image=20),
            "cap20_ll": variant(project, params, "cap20_ll", detections_per_image=20, learning_loss=True),
        }
        print("timing infer_score ...", flush=True)
        embed_wall, embed_cpu = time_labeled_embedding(variants["cap20"][1], labeled_ids)
        time_infer_score(*variants["cap20"], 0)  # warm-up: file caches, lazy initialisation
        rows = {}
        for name, key, passes in (
            ("random weights (100 detections / image), T = 0", "cap100", 0),
            (f"random weights (100 detections / image), T = {T}", "cap100", T),
            ("20 detections / image, T = 0", "cap20", 0),
            (f"20 detections / image, T = {T}", "cap20", T),
            ("20 detections / image, loss-prediction module, T = 0", "cap20_ll", 0),
        ):
            wall, cpu, images = time_infer_score(*variants[key], passes)
            rows[name] = {
                "wall_s": wall, "cpu_s": cpu,
                "wall_per_1000_s": (wall - embed_wall) / unlabeled * 1000,
                "cpu_per_1000_s": (cpu - embed_cpu) / unlabeled * 1000,
                "detections_per_image": float(images["num_detections"].mean()),
            }
            print(f"  {name}: {rows[name]['cpu_per_1000_s']:.0f} CPU s / 1000 images", flush=True)
        layout = variants["cap20_ll"][1]
        time_infer_score(*variants["cap20_ll"], T)  # tables with every sampler's inputs, for select
        result["infer_score"] = rows
        result["embed_labeled_per_1000"] = {"wall_s": embed_wall / len(labeled_ids) * 1000,
                                            "cpu_s": embed_cpu / len(labeled_ids) * 1000}
        result["pooling_cpu_per_1000_s"] = time_pooling(layout) * 1000
        result["infer_rows_bytes_per_image"] = infer_rows_bytes_per_image(work)
        loaded = pd.read_parquet(layout.images(1))
        result["images_table_bytes_per_image"] = float(loaded.memory_usage(deep=True).sum() / len(loaded))

        if args.baseline_src:
            print("infer_score at T = 0: this tree against the baseline ...", flush=True)
            runs: dict[str, list] = {"this": [], "baseline": []}
            for rep in range(2):  # interleaved, so a change in the machine's load hits both
                for name, src in (("this", ROOT / "src"), ("baseline", args.baseline_src.resolve())):
                    runs[name].append(run_worker("infer", str(work / f"infer_{name}_{rep}"), str(args.pool), "20", src=src))
            result["baseline"] = {"src": str(args.baseline_src), **{
                name: {"cpu_per_1000_s": float(np.mean([r["cpu_per_1000_s"] for r in rs])),
                       "wall_per_1000_s": float(np.mean([r["wall_per_1000_s"] for r in rs]))}
                for name, rs in runs.items()}}

        num_classes = len(json.loads((layout.prepared / "meta.json").read_text())["categories"])
        result["select"] = {}
        for size in args.select_sizes:
            print(f"timing select on {size} images ...", flush=True)
            folder = work / f"tiled_{size}"
            detections = tile(layout, folder, size)
            result["select"][size] = {"detections": detections, "samplers": {
                s: run_worker("select", str(folder), s, str(num_classes)) for s in SAMPLERS
            }}

        print(f"core-set on {args.coreset_n} x {args.coreset_d} random embeddings ...", flush=True)
        random_embeddings(work / "coreset", args.coreset_n, args.coreset_d)
        result["coreset"] = {"n": args.coreset_n, "d": args.coreset_d, "labeled": args.coreset_labeled,
                             "budget": BUDGET, **run_worker("coreset", str(work / "coreset"),
                                                            str(args.coreset_labeled), str(BUDGET))}
    result["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)


def markdown(r: dict) -> str:
    m = r["machine"]
    sizes = sorted(r["select"], key=int)
    small, large = sizes[0], sizes[-1]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, torch {m['torch']}, one torch thread, "
        f"{'GPU ' + m['cuda'] if m['cuda'] else 'no GPU'}; shared with other jobs (load average "
        f"{m['load_average_at_start'][0]:.1f} at start, {m['load_average_at_end'][0]:.1f} at end), so CPU "
        "seconds are the figure to compare; wall time is what this busy machine gave.",
        "",
        "infer_score per 1,000 unlabeled pool images (scores, instance tables and embeddings written):",
        "",
        "| model | CPU s / 1,000 images | wall s / 1,000 images | detections / image |",
        "|---|---:|---:|---:|",
    ]
    for name, row in r["infer_score"].items():
        lines.append(f"| {name} | {row['cpu_per_1000_s']:.0f} | {row['wall_per_1000_s']:.0f} | "
                     f"{row['detections_per_image']:.1f} |")
    e = r["embed_labeled_per_1000"]
    lines += [
        f"| embedding labeled images (backbone + FPN only), per 1,000 | {e['cpu_s']:.0f} | {e['wall_s']:.0f} | |",
        f"| the embedding's average pooling alone, per 1,000 | {r['pooling_cpu_per_1000_s']:.3f} | | |",
        "",
        f"select (budget {BUDGET}, {BUDGET} labeled images), per 1,000 pool images, timed at {int(large):,} "
        f"images ({r['select'][large]['detections']:,} detections); traced heap peak at {int(small):,} and "
        f"{int(large):,} images and its growth per image:",
        "",
        "| sampler | s / 1,000 images | traced peak (MiB) | bytes / image |",
        "|---|---:|---:|---:|",
    ]
    for s in SAMPLERS:
        a, b = r["select"][small]["samplers"][s], r["select"][large]["samplers"][s]
        slope = (b["traced_peak_mb"] - a["traced_peak_mb"]) * 2**20 / (int(large) - int(small))
        lines.append(f"| {s} | {b['seconds'] / int(large) * 1000:.3f} | {a['traced_peak_mb']:.1f} / "
                     f"{b['traced_peak_mb']:.1f} | {slope:.0f} |")
    lines += [
        "",
        f"Per-image state that grows with the pool: infer_score {r['infer_rows_bytes_per_image']:.0f} bytes "
        f"(its images.parquet rows; detections are streamed out); the images table each select loads "
        f"{r['images_table_bytes_per_image']:.0f} bytes.",
    ]
    if "baseline" in r:
        b = r["baseline"]
        lines += [
            "",
            f"The whole infer_score stage at T = 0 (20 detections / image), CPU s per 1,000 unlabeled images, "
            f"mean of two interleaved runs: this tree {b['this']['cpu_per_1000_s']:.1f} (embeddings of the labeled "
            f"images included), the baseline {b['baseline']['cpu_per_1000_s']:.1f} ({b['src']}).",
        ]
    c = r["coreset"]
    lines += [
        "",
        f"core-set at N = {c['n']:,}, D = {c['d']:,} (random embeddings, {c['labeled']} labeled, budget "
        f"{c['budget']}): {c['seconds']:.1f} s wall; the {c['matrix_mb']:.0f} MiB matrix stays memory-mapped "
        f"on disk; traced heap peak {c['traced_peak_mb']:.1f} MiB, private memory (RssAnon) growth "
        f"{c['rss_anon_growth_mb']:.0f} MiB; resident mapped-file pages grew by {c['rss_file_growth_mb']:.0f} MiB "
        "(the matrix read through the page cache, which the kernel can drop).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
