"""Where the labels of the labeled set come from, and the cumulative store training reads.

Each cycle's store (data/cycles/k/annotations.json) holds the ground truth of every image
labeled for cycle k: the previous store plus the batch that came back from the annotators,
the simulated oracle (pool ground truth, revealed only for the selected images) or humans
(labels/cycle_<j>.json, written by `salis labels import`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from salis.data.prepared import PreparedData, SimulatedOracle
from salis.errors import InputError, SalisError


def empty_store(categories: list[dict]) -> dict:
    return {"images": [], "annotations": [], "categories": [dict(c) for c in categories]}


def read_store(path: Path) -> dict:
    if not path.is_file():
        raise InputError(path, "missing label store; it is written by the init and annotate stages (run `dvc repro`)")
    try:
        store = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON: {err}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(store.get(key), list):
            raise InputError(path, f"label store lacks a list under {key!r}")
    return store


def extend_store(store: dict, images: Iterable[dict], annotations: dict[int, list[dict]]) -> dict:
    """A new store: the old one plus a labeled batch; annotation ids renumbered 1..N."""
    known = {int(im["id"]) for im in store["images"]}
    new_images = [dict(im) for im in images if int(im["id"]) not in known]
    anns = [dict(a) for a in store["annotations"]]
    for image in new_images:
        anns += [dict(a, image_id=int(image["id"])) for a in annotations.get(int(image["id"]), [])]
    for i, ann in enumerate(anns, start=1):
        ann["id"] = i
    return {
        "images": [dict(im) for im in store["images"]] + new_images,
        "annotations": anns,
        "categories": store["categories"],
    }


def annotations_by_image(store: dict) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {int(im["id"]): [] for im in store["images"]}
    for ann in store["annotations"]:
        by_image[int(ann["image_id"])].append(ann)
    return by_image


def simulated_batch(prepared: PreparedData, image_ids: list[int]) -> dict[int, list[dict]]:
    """The simulated oracle labels every requested pool image with its ground truth."""
    oracle = SimulatedOracle(prepared)
    return {int(i): oracle.annotations(int(i)) for i in image_ids}


def awaiting_message(batch_cycle: int, request_dir: Path, labels_path: Path) -> str:
    return (
        f"waiting for the labels of request batch {batch_cycle} ({labels_path} does not exist). "
        f"Label {request_dir / 'request.json'} in CVAT or Label Studio (see {request_dir / 'README.txt'}), "
        f"export COCO, then run:  salis labels import --cycle {batch_cycle} <export.json>  and `dvc repro` again"
    )


def human_batch(labels_path: Path, image_ids: list[int], category_ids: set[int]) -> tuple[dict[int, list[dict]], list[int]]:
    """Labels imported for a request batch: ({image_id: annotations}, ids sent back unlabeled)."""
    store = read_store(labels_path)
    requested = {int(i) for i in image_ids}
    labeled = {int(im["id"]) for im in store["images"]}
    if not labeled <= requested:
        raise InputError(labels_path, f"holds images that were not requested: {sorted(labeled - requested)[:5]}")
    unknown = {int(a["category_id"]) for a in store["annotations"]} - category_ids
    if unknown:
        raise InputError(labels_path, f"unknown category ids {sorted(unknown)}")
    returned = [int(i) for i in store.get("partial_unlabeled", [])]
    missing = requested - labeled - set(returned)
    if missing:
        raise SalisError(f"{labels_path}: requested images neither labeled nor returned: {sorted(missing)[:5]}")
    by_image = annotations_by_image(store)
    return {i: by_image[i] for i in sorted(labeled)}, sorted(returned)
