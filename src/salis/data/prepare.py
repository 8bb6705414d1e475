"""The `prepare` stage: turn the configured data source into the prepared layout.

Layout of out_dir (written as a whole through atomic_dir, so a crash leaves the old one):
  pool.json, test.json   normalised COCO dicts, byte-stable (sorted keys)
  meta.json              source, image roots, categories, counts, dropped annotations
  pool.parquet           one ground-truth-free row per pool image (what selection may see)
  images/                synthetic source only: the generated PNGs
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
from PIL import Image

from salis.artifacts.atomic import atomic_dir, write_json, write_parquet, write_text
from salis.data import synthetic
from salis.data.coco_import import (
    DROP_REASONS, check_no_shared_files, check_same_categories, load_coco, renumber_images, split_test,
)
from salis.errors import InputError, ParamsError
from salis.params import DataParams
from salis.seeds import derive_seed



def prepare_dataset(data: DataParams, out_dir: Path) -> dict:
    """Write the prepared layout for the data params into out_dir; return the meta dict.

    Every random choice here (the synthetic images, the test split) comes from data.seed, not
    from the run's seed: runs that differ in `seed` share one dataset and one test split.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if data.source == "synthetic":
            pool, test, meta = _synthetic(data, out_dir, tmp)
        else:
            pool, test, meta = _coco(data)
        meta |= {
            "num_pool_images": len(pool["images"]),
            "num_test_images": len(test["images"]),
            "num_pool_instances": len(pool["annotations"]),
            "num_test_instances": len(test["annotations"]),
        }
        write_text(tmp / "pool.json", _dumps(pool))
        write_text(tmp / "test.json", _dumps(test))
        write_json(tmp / "meta.json", meta)
        write_parquet(tmp / "pool.parquet", pool_table(pool))
    return meta


def pool_table(pool: dict) -> pd.DataFrame:
    """The pool without ground truth: selection code reads this, never pool.json."""
    rows = sorted(pool["images"], key=lambda img: img["id"])
    return pd.DataFrame(
        {
            "image_id": pd.Series([img["id"] for img in rows], dtype="int64"),
            "file_name": pd.Series([img["file_name"] for img in rows], dtype=object),
            "width": pd.Series([img["width"] for img in rows], dtype="int64"),
            "height": pd.Series([img["height"] for img in rows], dtype="int64"),
        }
    )


def _dumps(coco: dict) -> str:
    return json.dumps(coco, sort_keys=True, separators=(",", ":")) + "\n"


def _no_drops() -> dict[str, int]:
    return {reason: 0 for reason in DROP_REASONS}


def _synthetic(data: DataParams, out_dir: Path, tmp: Path) -> tuple[dict, dict, dict]:
    syn = data.synthetic
    for name, value, low in (
        ("pool_images", syn.pool_images, 1),
        ("test_images", syn.test_images, 1),
        ("image_size", syn.image_size, 16),
        ("max_instances", syn.max_instances, 1),
    ):
        if value < low:
            raise ParamsError(f"params.yaml: data.synthetic.{name} must be at least {low}, got {value}")
    pool_images, pool_anns, pool_pixels = synthetic.generate(
        syn.pool_images, syn.image_size, syn.max_instances, seed=data.seed
    )
    # Test ids start after the pool's, so image and annotation ids never collide.
    test_images, test_anns, test_pixels = synthetic.generate(
        syn.test_images, syn.image_size, syn.max_instances, seed=derive_seed(data.seed, 0, "synthetic_test"),
        id_offset=syn.pool_images,
    )
    image_dir = tmp / "images"
    image_dir.mkdir()
    for entry, pixels in zip(pool_images + test_images, pool_pixels + test_pixels):
        Image.fromarray(pixels).save(image_dir / entry["file_name"])
    categories = [dict(c) for c in synthetic.CATEGORIES]
    pool = {"images": pool_images, "annotations": pool_anns, "categories": categories}
    test = {"images": test_images, "annotations": test_anns, "categories": categories}
    image_root = (out_dir / "images").as_posix()  # the final location, not the temp folder
    meta = {
        "source": "synthetic",
        "image_root": image_root,
        "test_image_root": image_root,
        "categories": categories,
        "dropped": _no_drops(),
    }
    return pool, test, meta


def _coco(data: DataParams) -> tuple[dict, dict, dict]:
    cfg = data.coco
    if not cfg.instances or not cfg.images:
        raise ParamsError(
            "params.yaml: data.coco.instances and data.coco.images must be set when data.source is coco"
        )
    instances, images = Path(cfg.instances), Path(cfg.images)
    pool, dropped = load_coco(instances, images)
    test_root = cfg.images
    if cfg.test_instances:
        test_root = cfg.test_images or cfg.images
        test, test_dropped = load_coco(Path(cfg.test_instances), Path(test_root))
        check_same_categories(pool, test, instances, cfg.test_instances)
        check_no_shared_files(pool, images, test, Path(test_root), cfg.test_instances)
        shared = {i["id"] for i in pool["images"]} & {i["id"] for i in test["images"]}
        if shared:  # most tools number each COCO file from 1: keep the pool's ids, move the test's
            start = max(i["id"] for i in pool["images"]) + 1
            test = renumber_images(test, start)
            warnings.warn(
                f"{cfg.test_instances}: {len(shared)} image id(s) also used in {instances}; salis numbers the "
                f"test images from {start} (prepared/test.json keeps each one's own id as source_id)",
                UserWarning, stacklevel=2,
            )
        dropped = {k: dropped[k] + test_dropped[k] for k in dropped}
    else:
        if len(pool["images"]) < 2:
            count = len(pool["images"])
            raise InputError(instances, f"has {count} image(s); splitting off a test set needs at least 2")
        pool, test = split_test(pool, cfg.test_fraction, data.seed)
    meta = {
        "source": "coco",
        "image_root": cfg.images,
        "test_image_root": test_root,
        "categories": pool["categories"],
        "dropped": dropped,
    }
    return pool, test, meta
