"""Where the labels of the labeled set come from, and the cumulative store training reads.

Each cycle's store (data/cycles/k/annotations.json) holds the labels of every image labeled for
cycle k: the previous store plus the batch that came back from the annotators, the simulated
oracle (pool ground truth, revealed only for the selected images, and reduced to the label type
each image was requested with) or humans (labels/cycle_<j>[.<type>].json, written by `salis
labels import`). Each image entry carries its `label_type`; its annotations are masks
(segmentation), boxes (bbox only) or points (point), and an image-level label keeps its
per-category `counts` on the image entry (see salis.annotation.kinds).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

from salis.annotation.kinds import DEFAULT_KIND, AnnotatorView, label_kind
from salis.annotation.kinds.base import pre_annotations_of
from salis.data.coco_checks import read_json
from salis.data.prepared import PreparedData, SimulatedOracle
from salis.errors import InputError, SalisError
from salis.seeds import derive_rng


@dataclasses.dataclass(frozen=True)
class LabeledBatch:
    """The labels of one request batch: per image its annotations and image-level fields."""

    annotations: dict[int, list[dict]]
    fields: dict[int, dict]  # label_type, and counts for image-level labels
    returned: list[int] = dataclasses.field(default_factory=list)  # sent back to the pool unlabeled

    def instances(self, image_id: int) -> int:
        """Instances the labels reveal: annotations, or the counts of an image-level label."""
        counts = self.fields.get(image_id, {}).get("counts")
        return sum(int(c["count"]) for c in counts) if counts is not None else len(self.annotations[image_id])

    def label_type(self, image_id: int) -> str:
        return str(self.fields.get(image_id, {}).get("label_type", DEFAULT_KIND))


BASE_IMAGE_KEYS = ("id", "file_name", "width", "height")  # what every labeled image carries


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
    """A new store: the old one plus a labeled batch; annotation ids renumbered 1..N. `images` carry
    their label_type (and counts) when not masks."""
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


def label_types_of(store: dict) -> dict[int, str]:
    """Each labeled image's label type (masks where the store says nothing: stores before types)."""
    return {int(im["id"]): str(im.get("label_type", DEFAULT_KIND)) for im in store["images"]}


def instance_counts(store: dict) -> dict[int, int]:
    """Instances per labeled image: its annotations, or the sum of an image-level label's counts."""
    counts = {int(im["id"]): 0 for im in store["images"]}
    for ann in store["annotations"]:
        counts[int(ann["image_id"])] += 1
    for im in store["images"]:
        if im.get("counts") is not None:
            counts[int(im["id"])] = sum(int(c["count"]) for c in im["counts"])
    return counts


def simulated_batch(
    prepared: PreparedData, image_ids: list[int], label_types: list[str] | None = None,
    placement: str = "annotator", seed: int = 0, cycle: int = 0,
    pre_annotations: dict[int, list[dict]] | None = None, accept_iou: float = 0.85, fix_iou: float = 0.5,
) -> LabeledBatch:
    """The simulated oracle labels every requested pool image from its ground truth, reduced to
    the label type it was requested with (full masks when none is given); point clicks are
    seeded per image from `seed` and the cycle. pre_annotations: per image, the request's
    pre-annotations (read_pre_annotations), which a corrected image is labeled from."""
    oracle = SimulatedOracle(prepared)
    types = label_types or [DEFAULT_KIND] * len(image_ids)
    annotations, fields = {}, {}
    for image_id, label_type in zip(image_ids, types):
        kind = label_kind(label_type)
        info = prepared.image_info(int(image_id))
        view = AnnotatorView(
            truth=oracle.annotations(int(image_id)), height=info["height"], width=info["width"],
            category_ids=prepared.category_ids, placement=placement,
            rng=derive_rng(seed, cycle, "points", index=int(image_id)),
            pre_annotations=(pre_annotations or {}).get(int(image_id), []), accept_iou=accept_iou, fix_iou=fix_iou,
        )
        annotations[int(image_id)] = kind.derive(view)
        if kind.name != DEFAULT_KIND:  # stores before label kinds name none: the default
            fields[int(image_id)] = {"label_type": kind.name, **kind.image_fields(view)}
    return LabeledBatch(annotations, fields)


def read_pre_annotations(request_path: Path) -> dict[int, list[dict]]:
    """The pre-annotations of a request file per image (salis.annotation.kinds.base.pre_annotations_of)."""
    return pre_annotations_of(read_json(request_path), request_path)


def awaiting_message(batch_cycle: int, request_dir: Path, labels_path: Path, label_type: str = DEFAULT_KIND) -> str:
    kind = label_kind(label_type)
    return (
        f"waiting for the {kind.adjective}labels of request batch {batch_cycle} "
        f"({labels_path} does not exist). "
        f"Label {request_dir / f'request{kind.suffix}.json'} in CVAT or Label Studio (see {request_dir / 'README.txt'}), "
        f"export it, then run:  salis labels import --cycle {batch_cycle}{kind.type_flag} <export.json>  and `dvc repro` again"
    )


def human_batch(
    labels_paths: dict[str, Path], image_ids: list[int], label_types: list[str], category_ids: set[int]
) -> LabeledBatch:
    """Labels imported for a request batch, one file per label type it asked for."""
    annotations: dict[int, list[dict]] = {}
    fields: dict[int, dict] = {}
    returned: list[int] = []
    for label_type in sorted(set(label_types)):
        ids = [int(i) for i, t in zip(image_ids, label_types) if t == label_type]
        anns, image_fields, back = _human_labels(labels_paths[label_type], ids, category_ids, label_type)
        annotations.update(anns)
        fields.update(image_fields)
        returned += back
    return LabeledBatch(annotations, fields, sorted(returned))


def _human_labels(
    labels_path: Path, image_ids: list[int], category_ids: set[int], label_type: str
) -> tuple[dict[int, list[dict]], dict[int, dict], list[int]]:
    store = read_store(labels_path)
    stored_type = store.get("label_type", DEFAULT_KIND)
    if stored_type != label_type:
        raise InputError(labels_path, f"holds {stored_type} labels but the batch asked for {label_type} labels")
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
    # the kind's image fields (counts, correction outcomes) and the measured annotation seconds
    fields = {int(im["id"]): {k: v for k, v in im.items() if k not in BASE_IMAGE_KEYS} for im in store["images"]}
    fields = {i: f for i, f in fields.items() if f}
    return {i: by_image[i] for i in sorted(labeled)}, fields, sorted(returned)
