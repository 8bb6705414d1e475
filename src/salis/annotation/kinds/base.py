"""What a label kind is: one object owning everything salis does with one kind of label.

A kind (full mask, box, point, image-level count, ...) owns its name and file suffix, its cost
terms, how the simulated annotator derives it from a ground-truth mask, its request files (the
COCO pre-annotation, the Label Studio regions and labeling config), its import parser, and its
training route. The registry (salis.annotation.kinds) maps names to kinds; adding a kind is one
module here plus its name (and cost terms) in salis.params.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from salis.data.coco_checks import as_int, entries, to_rle
from salis.errors import InputError
from salis.params import AnnotationParams, CostParams

# The kind a label store means when it names none (stores and requests from before label kinds):
# its images carry no `label_type` and its files no suffix.
DEFAULT_KIND = "mask"
SLACK_PX = 1.0  # exported geometry this far outside the image is clipped onto it, farther is refused
# Label Studio control names the request configs use and the importers read back
FROM_NAME = "label"
TO_NAME = "image"
COUNT_PREFIX = "count_"  # Number tags of image-level labels: count_<category id>
PRESENT_NAME = "present"  # the Choices tag of image-level labels
MAX_COUNT = 100_000  # instances of one category on one image: more is a typo or an attack

Training = Literal["full", "boxes", "weak"]


@dataclasses.dataclass(frozen=True)
class AnnotatorView:
    """What the simulated annotator has of one requested image: its hidden ground truth (COCO
    annotations with RLE masks), its size, the project's categories, where clicks land, a seeded
    generator, and the request's pre-annotations (the model's detections, with `segmentation` as
    compressed RLE) with the correct kind's IoU thresholds."""

    truth: list[dict]
    height: int
    width: int
    category_ids: Sequence[int] = ()
    placement: str = "annotator"
    rng: np.random.Generator = dataclasses.field(default_factory=lambda: np.random.default_rng(0))
    pre_annotations: list[dict] = dataclasses.field(default_factory=list)
    accept_iou: float = 0.85
    fix_iou: float = 0.5


class Parser(ABC):
    """Reads one export's annotations of one kind: `add` each, then `finish` once."""

    def __init__(self, requested: Mapping[int, dict], path: Path):
        self.requested = requested
        self.path = path
        self.per_image: dict[int, list[dict]] = {i: [] for i in requested}
        self.duplicates: list[str] = []

    @abstractmethod
    def add(self, where: str, pool_id: int, category_id: int, entry: dict) -> None:
        """Validate one exported annotation of a requested image (project category id known)."""

    def finish(self) -> tuple[dict[int, list[dict]], int]:
        """(instances per requested image, polygon vertices clipped onto the border)."""
        self.warn_duplicates()
        return self.per_image, 0

    def keep(self, where: str, pool_id: int, instance: dict) -> None:
        """Keep an instance unless the same one came already (a double submit: kept once)."""
        if instance in self.per_image[pool_id]:
            self.duplicates.append(where)
        else:
            self.per_image[pool_id].append(instance)

    def warn_duplicates(self) -> None:
        if self.duplicates:
            warnings.warn(f"{self.path}: {len(self.duplicates)} annotation(s) repeat an earlier one exactly (same "
                          f"image, category and geometry), kept once: {', '.join(self.duplicates[:3])}",
                          UserWarning, stacklevel=4)


class LabelKind(ABC):
    """One kind of label. Subclasses set the class attributes and implement the abstract parts."""

    name: ClassVar[str]
    geometry: ClassVar[str]  # what its exported annotations hold, in error lines
    task: ClassVar[str]  # what the annotator is asked to do, in the request README
    # how training uses it: full = mask targets; boxes = box supervision (BoxInst losses);
    # weak = the weak_label stage turns it into targets from the model's detections
    training: ClassVar[Training]
    image_level: ClassVar[bool] = False  # labels live on the image (counts), no annotations
    reads_pre_annotations: ClassVar[bool] = False  # its labels are judged against the request's predictions
    outcome_fields: ClassVar[tuple[str, ...]] = ()  # counts it stores per image of what the annotator did
    region_type: ClassVar[str] = ""  # its Label Studio region type (polygonlabels, ...)
    # the import asks kinds whether they recognise an annotation in this order (lower first), so
    # the most specific geometry wins: a COCO keypoint annotation also carries a bbox
    recognition_rank: ClassVar[int] = 0

    @property
    def suffix(self) -> str:
        """File-name suffix of its request and label files: "" for the default kind, else ".<name>"."""
        return "" if self.name == DEFAULT_KIND else f".{self.name}"

    @property
    def type_flag(self) -> str:
        """What `salis labels import` needs to be told for this kind ("" for the default)."""
        return "" if self.name == DEFAULT_KIND else f" --type {self.name}"

    @property
    def adjective(self) -> str:
        """ "point " in "awaiting point labels"; "" for the default kind."""
        return "" if self.name == DEFAULT_KIND else f"{self.name} "

    # --- cost -----------------------------------------------------------------------------

    @abstractmethod
    def seconds_per_instance(self, cost: CostParams) -> float:
        """Annotator seconds per instance of an image labeled with this kind."""

    def seconds_per_category(self, cost: CostParams) -> float:
        """Seconds per category checked on an image (every kind looks at each category once)."""
        return cost.seconds_per_category_checked

    def image_seconds(self, cost: CostParams, instances: float, categories: int, fields: Mapping | None = None) -> float:
        """Seconds to label one image holding `instances` objects, `categories` categories checked;
        `fields` are the image's stored fields (a kind may price by what happened on the image)."""
        return self.seconds_per_instance(cost) * instances + self.seconds_per_category(cost) * categories

    def predicted_image_seconds(self, cost: CostParams, instances: float, categories: int,
                                pre_mask_ious: np.ndarray, annotation: AnnotationParams) -> float:
        """The forecast for an image not labeled yet (value-per-hour selection): `instances` its
        predicted instance count, `pre_mask_ious` the predicted mask IoU of each detection its
        request would pre-annotate (what a kind that starts from the model's masks is priced by)."""
        return self.image_seconds(cost, instances, categories)

    # --- the simulated annotator ------------------------------------------------------------

    @abstractmethod
    def derive(self, view: AnnotatorView) -> list[dict]:
        """This kind's annotations of an image, from its ground-truth mask annotations."""

    def image_fields(self, view: AnnotatorView) -> dict:
        """Fields this kind stores on the image entry besides label_type (image-level counts, the
        outcome of a correction)."""
        return {}

    # --- request batches ----------------------------------------------------------------------

    def request_categories(self, categories: list[dict]) -> list[dict]:
        return categories

    @abstractmethod
    def request_annotation(self, prediction: dict) -> dict:
        """The COCO fields a prediction's pre-annotation adds or replaces (see export._predictions
        for what a prediction holds)."""

    def label_studio_value(self, prediction: dict, width: int, height: int, label: list[str]) -> dict:
        """The `value` of a prediction's Label Studio region, in percent of the image."""
        raise NotImplementedError(f"{self.name} labels have no Label Studio regions")

    def label_studio_results(self, predictions: list[dict], image: dict, names: Mapping[int, str],
                             categories: list[dict]) -> list[dict]:
        """Pre-annotations of one task: one region per prediction."""
        w, h = image["width"], image["height"]
        return [{
            "id": f"p{k}", "from_name": FROM_NAME, "to_name": TO_NAME, "type": self.region_type,
            "original_width": w, "original_height": h, "image_rotation": 0,
            "value": self.label_studio_value(p, w, h, [names[p["category_id"]]]), "score": p["score"],
        } for k, p in enumerate(predictions)]

    @abstractmethod
    def label_studio_control(self, categories: list[dict]) -> str:
        """The control tags of its Label Studio labeling config (after the Image tag)."""

    # --- import -----------------------------------------------------------------------------

    def recognises(self, entry: dict) -> bool:
        """Whether an exported annotation holds this kind's geometry."""
        return False

    def accepts(self, entry: dict, found: "LabelKind | None") -> bool:
        """Whether a batch of this kind reads an annotation whose geometry `found` recognised (None:
        none did); its parser then names any problem."""
        return not self.image_level and (found is None or found is self)

    def parser(self, requested: Mapping[int, dict], path: Path) -> Parser:
        raise NotImplementedError(f"{self.name} labels have no annotations to parse")

    def parse_image(self, entry: dict, where: str, path: Path, project_ids: Mapping[str, int],
                    unknown: set[str]) -> dict | None:
        """Image-level fields of an exported image entry (None: the image carries no such label)."""
        return None

    def labeled_annotation(self, instance: dict) -> dict:
        """The stored annotation of a parsed instance (without id and image_id)."""
        return dict(instance)

    def human_fields(self, instances: list[dict], image: dict, pre_annotations: list[dict]) -> dict:
        """Image fields an import derives from a human's parsed instances of one image and the
        request's pre-annotations of it (read only when reads_pre_annotations)."""
        return {}


def region_labels(tag: str, extra: str, categories: list[dict]) -> str:
    """A Label Studio labels control with one Label per category (category="<id>" makes Label
    Studio's COCO export keep the project's ids; the import matches by name anyway)."""
    from xml.sax.saxutils import quoteattr

    labels = "\n".join(f"    <Label value={quoteattr(c['name'])} category={quoteattr(str(c['id']))}/>"
                       for c in categories)
    return f'  <{tag} name="{FROM_NAME}" toName="{TO_NAME}"{extra}>\n{labels}\n  </{tag}>\n'


def percent(value: float, size: int) -> float:
    return round(value / size * 100.0, 6)


def finite_number(value: Any, what: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(path, f"{what} must be a finite number, got {value!r}")
    return float(value)


def pre_annotations_of(request: dict, path: Path) -> dict[int, list[dict]]:
    """The pre-annotations of a request (the model's detections its annotators start from), per
    image id, each with `category_id`, `score` and `segmentation` as compressed RLE."""
    if not isinstance(request, dict) or not isinstance(request.get("images"), list):
        raise InputError(path, "not a salis request batch (expected a COCO file with images)")
    sizes = {}
    for where, image in entries(request["images"], "images", ("id", "width", "height"), path):
        sizes[as_int(image["id"], f"{where} id", path)] = (image["height"], image["width"])
    out: dict[int, list[dict]] = {i: [] for i in sizes}
    annotations = request.get("annotations", [])
    for where, ann in entries(annotations if isinstance(annotations, list) else [], "annotations",
                              ("image_id", "category_id", "segmentation"), path):
        image_id = as_int(ann["image_id"], f"{where} image_id", path)
        if image_id not in sizes:
            raise InputError(path, f"{where} points at image {image_id}, which the request does not list")
        height, width = sizes[image_id]
        attributes = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
        out[image_id].append({"category_id": as_int(ann["category_id"], f"{where} category_id", path),
                              "score": attributes.get("score"),
                              "segmentation": to_rle(ann["segmentation"], height, width, where, path)})
    return out
