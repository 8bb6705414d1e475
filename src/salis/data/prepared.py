"""Read access to the prepared layout (see salis.data.prepare), used by every later stage.

Ground truth of the pool is reachable only through SimulatedOracle (the stand-in for a
human annotator) and pool_coco(); selection code works from pool_ids()/image_info(), which
read the ground-truth-free pool.parquet.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from salis.errors import InputError
from salis.geometry import decode_rles, rle, xywh_to_xyxy

REQUIRED_FILES = ("pool.json", "test.json", "meta.json", "pool.parquet")


class PreparedData:
    """The prepared dataset in `root`; JSON files are loaded lazily and cached."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for name in REQUIRED_FILES:
            if not (self.root / name).is_file():
                raise InputError(self.root / name, "missing prepared data; run `dvc repro prepare`")
        self.meta: dict = _read_json(self.root / "meta.json")
        cat_ids = sorted(int(c["id"]) for c in self.meta["categories"])
        self._label = {cid: i + 1 for i, cid in enumerate(cat_ids)}  # 0 is background
        self._category = {label: cid for cid, label in self._label.items()}
        self._pool: dict | None = None
        self._test: dict | None = None
        self._pool_info: dict[int, dict] | None = None
        self._test_info: dict[int, dict] | None = None

    # --- categories ---------------------------------------------------------------------

    @property
    def categories(self) -> list[dict]:
        return [dict(c) for c in self.meta["categories"]]

    @property
    def category_ids(self) -> list[int]:
        return sorted(self._label)

    @property
    def num_classes(self) -> int:
        """Foreground classes; a model needs num_classes + 1 outputs (background)."""
        return len(self._label)

    def label_of(self, category_id: int) -> int:
        """Contiguous model label 1..C for a COCO category id (sorted id order)."""
        try:
            return self._label[int(category_id)]
        except KeyError:
            raise ValueError(f"unknown category id {category_id}; known: {self.category_ids}") from None

    def category_of(self, label: int) -> int:
        try:
            return self._category[int(label)]
        except KeyError:
            raise ValueError(f"no category for label {label}; labels are 1..{len(self._label)}") from None

    # --- images -------------------------------------------------------------------------

    def pool_ids(self) -> list[int]:
        return sorted(self._pool_images())

    def test_ids(self) -> list[int]:
        return sorted(self._test_images())

    def is_test(self, image_id: int) -> bool:
        return int(image_id) in self._test_images()

    def image_info(self, image_id: int) -> dict:
        """{id, file_name, width, height} of a pool or test image."""
        image_id = int(image_id)
        info = self._pool_images().get(image_id) or self._test_images().get(image_id)
        if info is None:
            raise KeyError(f"image id {image_id} is in neither the pool nor the test set of {self.root}")
        return dict(info)

    def image_root(self, image_id: int) -> Path:
        key = "test_image_root" if self.is_test(image_id) else "image_root"
        return Path(self.meta.get(key) or self.meta["image_root"])

    def image_path(self, image_id: int) -> Path:
        """Resolved path of the image file; it must stay inside its image root."""
        root = self.image_root(image_id).resolve()
        path = (root / self.image_info(image_id)["file_name"]).resolve()
        if not path.is_relative_to(root):
            raise InputError(path, f"image id {image_id} resolves outside its image folder {root}")
        return path

    def load_image(self, image_id: int) -> np.ndarray:
        """HxWx3 uint8 RGB, whatever the file's mode (grayscale, RGBA, 16-bit)."""
        path = self.image_path(image_id)
        try:
            with Image.open(path) as im:
                pixels = _to_rgb(im)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise InputError(path, f"unreadable image (image id {image_id}): {err}") from None
        info = self.image_info(image_id)
        if pixels.shape[:2] != (info["height"], info["width"]):
            raise InputError(
                path,
                f"image is {pixels.shape[1]}x{pixels.shape[0]} (width x height) but the prepared data "
                f"says {info['width']}x{info['height']}; re-run `dvc repro prepare`",
            )
        return pixels

    # --- COCO dicts ---------------------------------------------------------------------

    def pool_coco(self) -> dict:
        """The pool with its ground truth: for the oracle and for analysis, not for selection."""
        if self._pool is None:
            self._pool = _read_json(self.root / "pool.json")
        return self._pool

    def test_coco(self) -> dict:
        if self._test is None:
            self._test = _read_json(self.root / "test.json")
        return self._test

    def _pool_images(self) -> dict[int, dict]:
        if self._pool_info is None:
            table = pd.read_parquet(self.root / "pool.parquet")
            self._pool_info = {
                int(r.image_id): {
                    "id": int(r.image_id),
                    "file_name": str(r.file_name),
                    "width": int(r.width),
                    "height": int(r.height),
                }
                for r in table.itertuples(index=False)
            }
        return self._pool_info

    def _test_images(self) -> dict[int, dict]:
        if self._test_info is None:
            self._test_info = {int(img["id"]): img for img in self.test_coco()["images"]}
        return self._test_info


class SimulatedOracle:
    """Stands in for the human annotator: reveals the ground truth of one pool image on request."""

    def __init__(self, prepared: PreparedData) -> None:
        self.prepared = prepared
        self._by_image: dict[int, list[dict]] | None = None

    def annotations(self, image_id: int) -> list[dict]:
        image_id = int(image_id)
        if self.prepared.is_test(image_id):
            raise ValueError(f"test image {image_id} never reaches training or selection")
        if self._by_image is None:
            self._by_image = {int(i): [] for i in self.prepared.pool_ids()}
            for ann in self.prepared.pool_coco()["annotations"]:
                self._by_image[int(ann["image_id"])].append(ann)
        if image_id not in self._by_image:
            raise KeyError(f"image id {image_id} is not in the pool of {self.prepared.root}")
        return [_copy_annotation(a) for a in self._by_image[image_id]]


def target_arrays(anns: list[dict], height: int, width: int, label_of: Callable[[int], int]) -> dict[str, np.ndarray]:
    """Training targets: boxes (N,4 float32 xyxy), labels (N int64), masks (N,H,W uint8)."""
    if not anns:
        return {
            "boxes": np.zeros((0, 4), dtype=np.float32),
            "labels": np.zeros((0,), dtype=np.int64),
            "masks": np.zeros((0, height, width), dtype=np.uint8),
        }
    for a in anns:
        if list(a["segmentation"]["size"]) != [height, width]:
            raise ValueError(
                f"mask size {a['segmentation']['size']} does not match the image's [height, width] [{height}, {width}]"
            )
    masks = decode_rles([rle(a["segmentation"]) for a in anns], height, width)
    boxes = xywh_to_xyxy(np.array([a["bbox"] for a in anns]))
    labels = np.array([label_of(a["category_id"]) for a in anns], dtype=np.int64)
    return {"boxes": boxes, "labels": labels, "masks": masks}


def _copy_annotation(ann: dict) -> dict:
    out = dict(ann)
    out["bbox"] = list(ann["bbox"])
    out["segmentation"] = dict(ann["segmentation"])
    return out


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float microscopy: stretch to 8 bits, since a plain convert would clip.
        values = np.asarray(im, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        gray = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON ({err.msg} at line {err.lineno}); re-run `dvc repro prepare`") from None
