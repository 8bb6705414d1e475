"""The prepared layout (both sources) and its reader, the simulated oracle and training targets."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from salis.seeds import derive_seed
from salis.data.prepare import prepare_dataset
from salis.data.prepared import PreparedData, SimulatedOracle, target_arrays
from salis.data.synthetic import CATEGORIES, generate
from salis.errors import InputError
from salis.params import parse_params

REPO_ROOT = Path(__file__).resolve().parents[1]
DSB2018 = REPO_ROOT.parent / "shared" / "datasets" / "dsb2018"
LAYOUT = {"pool.json", "test.json", "meta.json", "pool.parquet"}
META_KEYS = {
    "source", "image_root", "test_image_root", "categories", "dropped",
    "num_pool_images", "num_test_images", "num_pool_instances", "num_test_instances",
}


def _synthetic_params(seed: int = 0):
    synthetic = {"pool_images": 6, "test_images": 3, "image_size": 48, "max_instances": 4}
    return parse_params({"data": {"seed": seed, "source": "synthetic", "synthetic": synthetic}}).data


def _coco_params(coco: dict, seed: int = 0):
    return parse_params({"data": {"seed": seed, "source": "coco", "coco": coco}}).data


def _square(h: int, w: int, y: int, x: int, side: int) -> dict:
    mask = np.zeros((h, w, 1), dtype=np.uint8, order="F")
    mask[y : y + side, x : x + side] = 1
    return {"size": [h, w], "counts": mask_utils.encode(mask)[0]["counts"].decode()}


def _coco_source(
    root: Path, name: str = "raw", ids: range = range(1, 7), categories=((3, "round"), (7, "long")), crowd: bool = False
) -> tuple[str, str]:
    """A tiny COCO dataset under root/name (images 16x12, one square per image); relative paths."""
    image_dir = root / name / "images"
    image_dir.mkdir(parents=True)
    images, anns = [], []
    for k, image_id in enumerate(ids):
        Image.new("L", (16, 12), 20 + k).save(image_dir / f"im{image_id}.png")
        images.append({"id": image_id, "file_name": f"im{image_id}.png", "width": 16, "height": 12})
        anns.append({"id": 100 + image_id, "image_id": image_id, "category_id": categories[k % len(categories)][0],
                     "segmentation": _square(12, 16, 2, 3, 4), "iscrowd": 0})
    if crowd:
        anns.append({"id": 999, "image_id": ids[0], "category_id": categories[0][0],
                     "segmentation": _square(12, 16, 0, 0, 2), "iscrowd": 1})
    coco = {"images": images, "annotations": anns, "categories": [{"id": i, "name": n} for i, n in categories]}
    (root / name / "instances.json").write_text(json.dumps(coco))
    return f"{name}/instances.json", f"{name}/images"


@pytest.fixture
def synthetic_prepared(tmp_path: Path) -> tuple[Path, dict]:
    out = tmp_path / "prepared"
    return out, prepare_dataset(_synthetic_params(), out)


@pytest.fixture
def coco_prepared(tmp_path: Path, monkeypatch) -> tuple[Path, dict]:
    monkeypatch.chdir(tmp_path)
    instances, images = _coco_source(tmp_path, crowd=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the crowd drop warning is tested in test_data_coco_import
        params = _coco_params({"instances": instances, "images": images, "test_fraction": 0.34})
        meta = prepare_dataset(params, Path("prepared"))
    return Path("prepared"), meta


# --- the layout ----------------------------------------------------------------------------


def test_synthetic_layout(synthetic_prepared, tmp_path):
    out, meta = synthetic_prepared
    assert {p.name for p in out.iterdir()} == LAYOUT | {"images"}
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]  # no temp folders left behind
    assert json.loads((out / "meta.json").read_text()) == meta
    assert set(meta) == META_KEYS
    assert meta["source"] == "synthetic"
    assert meta["image_root"] == meta["test_image_root"] == (out / "images").as_posix()  # final place, not temp
    assert meta["categories"] == CATEGORIES
    assert meta["dropped"] == {"crowd": 0, "zero_area": 0, "bad_bbox": 0}
    pool = json.loads((out / "pool.json").read_text())
    test = json.loads((out / "test.json").read_text())
    assert [i["id"] for i in pool["images"]] == [1, 2, 3, 4, 5, 6]
    assert [i["id"] for i in test["images"]] == [7, 8, 9]
    assert not {a["id"] for a in pool["annotations"]} & {a["id"] for a in test["annotations"]}
    assert pool["categories"] == test["categories"] == CATEGORIES
    assert (meta["num_pool_images"], meta["num_test_images"]) == (6, 3)
    assert meta["num_pool_instances"] == len(pool["annotations"])
    assert meta["num_test_instances"] == len(test["annotations"])
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"syn_{i:06d}.png" for i in range(1, 10)]


def test_synthetic_matches_the_generator(synthetic_prepared):
    out, _ = synthetic_prepared
    _, pool_anns, pool_pixels = generate(6, 48, 4, seed=0)
    test_images, _, test_pixels = generate(3, 48, 4, seed=derive_seed(0, 0, "synthetic_test"), id_offset=6)
    assert json.loads((out / "pool.json").read_text())["annotations"] == pool_anns
    assert (np.asarray(Image.open(out / "images" / "syn_000002.png")) == pool_pixels[1]).all()
    assert (np.asarray(Image.open(out / "images" / test_images[0]["file_name"])) == test_pixels[0]).all()


def test_pool_parquet_is_ground_truth_free(synthetic_prepared):
    out, _ = synthetic_prepared
    table = pd.read_parquet(out / "pool.parquet")
    assert list(table.columns) == ["image_id", "file_name", "width", "height"]
    assert [str(t) for t in table.dtypes[["image_id", "width", "height"]]] == ["int64"] * 3
    assert table["image_id"].tolist() == [1, 2, 3, 4, 5, 6]
    assert table["file_name"].tolist()[0] == "syn_000001.png"


def test_rerun_is_byte_stable_and_seed_matters(tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(_synthetic_params(), out)
    first = {n: (out / n).read_bytes() for n in ("pool.json", "test.json", "meta.json")}
    prepare_dataset(_synthetic_params(), out)
    assert {n: (out / n).read_bytes() for n in first} == first
    prepare_dataset(_synthetic_params(seed=1), out)
    assert (out / "pool.json").read_bytes() != first["pool.json"]


def test_relative_out_dir_gives_relative_image_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meta = prepare_dataset(_synthetic_params(), Path("data/prepared"))
    assert meta["image_root"] == "data/prepared/images"
    assert PreparedData(Path("data/prepared")).load_image(1).shape == (48, 48, 3)


def test_coco_layout(coco_prepared):
    out, meta = coco_prepared
    assert {p.name for p in out.iterdir()} == LAYOUT  # images stay where the user keeps them
    assert set(meta) == META_KEYS
    assert meta["source"] == "coco"
    assert meta["image_root"] == meta["test_image_root"] == "raw/images"  # exactly as given
    assert meta["categories"] == [{"id": 3, "name": "round"}, {"id": 7, "name": "long"}]
    assert meta["dropped"] == {"crowd": 1, "zero_area": 0, "bad_bbox": 0}
    assert (meta["num_pool_images"], meta["num_test_images"]) == (4, 2)  # round(0.34 * 6) = 2
    assert meta["num_pool_instances"] + meta["num_test_instances"] == 6
    data = PreparedData(out)
    assert sorted(data.pool_ids() + data.test_ids()) == [1, 2, 3, 4, 5, 6]
    table = pd.read_parquet(out / "pool.parquet")
    assert table["image_id"].tolist() == data.pool_ids()


def test_both_sources_share_one_layout(synthetic_prepared, coco_prepared):
    (syn_out, syn_meta), (coco_out, coco_meta) = synthetic_prepared, coco_prepared
    assert {p.name for p in syn_out.iterdir()} - {"images"} == {p.name for p in coco_out.iterdir()}
    assert set(syn_meta) == set(coco_meta) and set(syn_meta["dropped"]) == set(coco_meta["dropped"])
    syn_table, coco_table = pd.read_parquet(syn_out / "pool.parquet"), pd.read_parquet(coco_out / "pool.parquet")
    assert list(syn_table.dtypes.items()) == list(coco_table.dtypes.items())
    for name in ("pool.json", "test.json"):
        syn, coco = json.loads((syn_out / name).read_text()), json.loads((coco_out / name).read_text())
        assert set(syn) == set(coco)
        assert set(syn["annotations"][0]) == set(coco["annotations"][0])
        assert set(syn["images"][0]) == set(coco["images"][0])


def test_coco_separate_test_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    instances, images = _coco_source(tmp_path, "raw", range(1, 5))
    test_instances, test_images = _coco_source(tmp_path, "held_out", range(10, 13))
    coco = {"instances": instances, "images": images, "test_instances": test_instances, "test_images": test_images}
    meta = prepare_dataset(_coco_params(coco), Path("prepared"))
    assert (meta["image_root"], meta["test_image_root"]) == ("raw/images", "held_out/images")
    assert (meta["num_pool_images"], meta["num_test_images"]) == (4, 3)
    data = PreparedData(Path("prepared"))
    assert data.test_ids() == [10, 11, 12]
    assert data.image_path(10) == (tmp_path / "held_out" / "images" / "im10.png").resolve()
    assert data.load_image(10).shape == (12, 16, 3)


def test_coco_overlapping_test_ids_are_renumbered_apart(tmp_path, monkeypatch):
    """train.json and test.json both numbered from 1, as most tools write them: the pool keeps its
    ids (the ones every table and label import uses), the test images move past them."""
    monkeypatch.chdir(tmp_path)
    instances, images = _coco_source(tmp_path, "raw", range(1, 5))
    test_instances, test_images = _coco_source(tmp_path, "held_out", range(4, 6))
    coco = {"instances": instances, "images": images, "test_instances": test_instances, "test_images": test_images}
    with pytest.warns(UserWarning, match="held_out/instances.json: 1 image id.*numbers the test images from 5"):
        prepare_dataset(_coco_params(coco), Path("prepared"))
    data = PreparedData(Path("prepared"))
    assert data.pool_ids() == [1, 2, 3, 4] and data.test_ids() == [5, 6]
    test = json.loads(Path("prepared/test.json").read_text())
    assert [(im["id"], im["source_id"], im["file_name"]) for im in test["images"]] == [(5, 4, "im4.png"), (6, 5, "im5.png")]
    assert {a["image_id"] for a in test["annotations"]} <= {5, 6}
    assert data.image_path(5) == (tmp_path / "held_out" / "images" / "im4.png").resolve()


def test_coco_test_file_listing_a_pool_image_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    instances, images = _coco_source(tmp_path, "raw", range(1, 5))
    test = json.loads(Path(instances).read_text())
    test["images"] = [dict(test["images"][1], id=20)]
    test["annotations"] = [dict(a, image_id=20) for a in test["annotations"] if a["image_id"] == 2]
    Path("test.json").write_text(json.dumps(test))
    coco = {"instances": instances, "images": images, "test_instances": "test.json", "test_images": images}
    with pytest.raises(InputError, match=r"test.json: 1 test image\(s\) are also pool images: im2.png \(pool id 2, test id 20\)"):
        prepare_dataset(_coco_params(coco), Path("prepared"))


def test_coco_test_categories_differ(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    instances, images = _coco_source(tmp_path, "raw", range(1, 5))
    test_instances, test_images = _coco_source(tmp_path, "held_out", range(10, 12), categories=((3, "round"),))
    coco = {"instances": instances, "images": images, "test_instances": test_instances, "test_images": test_images}
    expected = "held_out/instances.json: categories differ .* only in raw/instances.json: 7 'long'"
    with pytest.raises(InputError, match=expected):
        prepare_dataset(_coco_params(coco), Path("prepared"))


def test_coco_single_image_cannot_be_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    instances, images = _coco_source(tmp_path, "raw", range(1, 2))
    with pytest.raises(InputError, match="raw/instances.json: has 1 image.*needs at least 2"):
        prepare_dataset(_coco_params({"instances": instances, "images": images}), Path("prepared"))


# --- the reader ----------------------------------------------------------------------------


def test_missing_prepared_data_says_how_to_make_it(tmp_path):
    with pytest.raises(InputError, match=r"pool.json: missing prepared data; run `dvc repro prepare`"):
        PreparedData(tmp_path)


def test_labels_are_contiguous_in_category_id_order(coco_prepared):
    data = PreparedData(coco_prepared[0])
    assert data.category_ids == [3, 7]
    assert (data.label_of(3), data.label_of(7)) == (1, 2)
    assert (data.category_of(1), data.category_of(2)) == (3, 7)
    assert data.categories == [{"id": 3, "name": "round"}, {"id": 7, "name": "long"}]
    with pytest.raises(ValueError, match="unknown category id 5"):
        data.label_of(5)
    with pytest.raises(ValueError, match="no category for label 0"):
        data.category_of(0)


def test_image_info_and_paths(synthetic_prepared):
    out, _ = synthetic_prepared
    data = PreparedData(out)
    assert data.pool_ids() == [1, 2, 3, 4, 5, 6] and data.test_ids() == [7, 8, 9]
    assert data.image_info(8) == {"id": 8, "file_name": "syn_000008.png", "width": 48, "height": 48}
    assert data.image_path(2) == (out / "images" / "syn_000002.png").resolve()
    assert data.pool_coco()["images"][0]["id"] == 1 and data.test_coco()["images"][0]["id"] == 7
    with pytest.raises(KeyError, match="image id 99"):
        data.image_info(99)


@pytest.mark.parametrize("name", ["../evil.png", "/etc/hostname"])
def test_image_path_must_stay_inside_its_root(synthetic_prepared, name):
    out, _ = synthetic_prepared
    table = pd.read_parquet(out / "pool.parquet")
    table.loc[0, "file_name"] = name
    table.to_parquet(out / "pool.parquet", index=False)
    data = PreparedData(out)
    with pytest.raises(InputError, match="image id 1 resolves outside its image folder"):
        data.image_path(1)
    with pytest.raises(InputError, match="outside its image folder"):
        data.load_image(1)


def test_load_image_converts_modes_to_rgb(coco_prepared):
    out, _ = coco_prepared
    data = PreparedData(out)
    image_dir = Path("raw/images")
    gray = data.load_image(1)
    assert gray.shape == (12, 16, 3) and gray.dtype == np.uint8 and (gray == 20).all()
    Image.new("RGBA", (16, 12), (10, 20, 30, 128)).save(image_dir / "im2.png")
    assert data.load_image(2)[0, 0].tolist() == [10, 20, 30]
    deep = np.zeros((12, 16), dtype=np.uint16)
    deep[:, 8:] = 4000  # 12-bit data in a 16-bit file: stretched, not clipped to white
    Image.fromarray(deep).save(image_dir / "im3.png")
    loaded = data.load_image(3)
    assert loaded[0, 0].tolist() == [0, 0, 0] and loaded[0, 15].tolist() == [255, 255, 255]


def test_load_image_errors_name_the_file(coco_prepared):
    out, _ = coco_prepared
    data = PreparedData(out)
    broken = Path("raw/images/im4.png")
    broken.write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"raw/images/im4.png: unreadable image \(image id 4\)"):
        data.load_image(4)
    Image.new("L", (5, 5)).save(Path("raw/images/im5.png"))
    with pytest.raises(InputError, match=r"im5.png: image is 5x5 .* says 16x12"):
        data.load_image(5)


# --- oracle and targets ----------------------------------------------------------------------


def test_oracle_reveals_pool_ground_truth_only(synthetic_prepared):
    out, _ = synthetic_prepared
    data = PreparedData(out)
    oracle = SimulatedOracle(data)
    pool = json.loads((out / "pool.json").read_text())
    expected = [a for a in pool["annotations"] if a["image_id"] == 3]
    got = oracle.annotations(3)
    assert got == expected and got
    got[0]["bbox"][0] = -1.0  # callers get copies
    assert oracle.annotations(3) == expected
    with pytest.raises(ValueError, match="test image 7 never reaches training or selection"):
        oracle.annotations(7)
    with pytest.raises(KeyError):
        oracle.annotations(99)


def test_target_arrays(synthetic_prepared):
    out, _ = synthetic_prepared
    data = PreparedData(out)
    anns = SimulatedOracle(data).annotations(1)
    targets = target_arrays(anns, 48, 48, data.label_of)
    n = len(anns)
    assert targets["boxes"].shape == (n, 4) and targets["boxes"].dtype == np.float32
    assert targets["labels"].dtype == np.int64 and targets["masks"].shape == (n, 48, 48)
    assert targets["masks"].dtype == np.uint8
    for i, ann in enumerate(anns):
        ys, xs = np.nonzero(targets["masks"][i])
        assert targets["boxes"][i].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert targets["labels"][i] == data.label_of(ann["category_id"])
        assert targets["masks"][i].sum() == ann["area"]
    empty = target_arrays([], 10, 12, data.label_of)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["masks"].shape == (0, 10, 12)


# --- the real dataset ------------------------------------------------------------------------


@pytest.mark.skipif(not DSB2018.is_dir(), reason=f"real dataset not present at {DSB2018} (a shared read-only folder)")
def test_dsb2018_prepares(tmp_path):
    coco = {"instances": str(DSB2018 / "instances.json"), "images": str(DSB2018 / "images"), "test_fraction": 0.15}
    start = time.perf_counter()
    meta = prepare_dataset(_coco_params(coco), tmp_path / "prepared")
    assert time.perf_counter() - start < 120
    assert meta["categories"] == [{"id": 1, "name": "nucleus"}]
    assert meta["num_pool_images"] + meta["num_test_images"] == 664
    assert meta["num_test_images"] == 100  # round(0.15 * 664)
    assert meta["num_pool_instances"] + meta["num_test_instances"] == 28986
    assert meta["dropped"] == {"crowd": 0, "zero_area": 0, "bad_bbox": 0}
    data = PreparedData(tmp_path / "prepared")
    image_id = data.test_ids()[0]
    info = data.image_info(image_id)
    assert data.load_image(image_id).shape == (info["height"], info["width"], 3)


def test_the_run_seed_never_changes_the_dataset_or_its_test_split(tmp_path: Path):
    """Runs over seeds 0..n evaluate on the same test images: only data.seed moves them."""
    from salis.artifacts.layout import Layout
    from salis.pipeline.prepare import stage_prepare

    def prepared(name: str, **raw) -> Layout:
        layout = Layout(tmp_path / name)
        data = {"synthetic": {"pool_images": 6, "test_images": 3, "image_size": 48, "max_instances": 4}}
        stage_prepare(parse_params({**raw, "data": {**data, **raw.pop("data", {})}}), layout)
        return layout

    base, other_run, other_data = prepared("a", seed=0), prepared("b", seed=7), prepared("c", data={"seed": 1})
    for name in ("pool.json", "test.json"):
        assert (base.prepared / name).read_bytes() == (other_run.prepared / name).read_bytes()
        assert (base.prepared / name).read_bytes() != (other_data.prepared / name).read_bytes()
