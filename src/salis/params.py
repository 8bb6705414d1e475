"""params.yaml as typed dataclasses: a wrong type or unknown key is a clear error, not a crash later."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from salis.errors import ParamsError


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
    pool_images: int = 400
    test_images: int = 100
    image_size: int = 128
    max_instances: int = 18


@dataclasses.dataclass(frozen=True)
class CocoParams:
    instances: str = ""
    images: str = ""
    test_instances: str | None = None
    test_images: str | None = None
    test_fraction: float = 0.15


@dataclasses.dataclass(frozen=True)
class DataParams:
    seed: int = 0  # the dataset and its test split; the run's `seed` never changes them
    source: Literal["synthetic", "coco"] = "synthetic"
    watch: str = "src/salis/data/synthetic.py"
    synthetic: SyntheticParams = SyntheticParams()
    coco: CocoParams = CocoParams()


@dataclasses.dataclass(frozen=True)
class ModelParams:
    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    fpn_channels: int = 64
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)
    min_size: int = 128
    max_size: int = 128
    rpn_pre_nms_top_n_train: int = 300
    rpn_post_nms_top_n_train: int = 150
    rpn_pre_nms_top_n_test: int = 300
    rpn_post_nms_top_n_test: int = 150
    rpn_batch_size_per_image: int = 128
    box_batch_size_per_image: int = 64
    box_head_dim: int = 256
    mask_head_channels: int = 64
    mask_head_convs: int = 2
    detections_per_image: int = 100
    box_score_thresh: float = 0.05
    weights: str | None = None
    norm: Literal["batch", "frozen"] = "batch"
    iou_heads: bool = True
    iou_head_channels: int = 64
    iou_mask_threshold: float = 0.3
    iou_loss_weight: float = 1.0
    # what the IoU heads train on besides the sampled positives (iou_heads.IoUTraining); the
    # defaults are the recipe before these keys existed (a params file or a recorded run without
    # them means that recipe); params.yaml sets today's: 16, 0.5, 16, false
    iou_jitter_rois: int = 0
    iou_jitter_min_iou: float = 0.5
    iou_background_rois: int = 0
    iou_gt_proposals: bool = True
    train_dropout_p: float = 0.0
    learning_loss: bool = False
    learning_loss_channels: int = 128
    learning_loss_margin: float = 1.0
    learning_loss_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class TrainParams:
    # iterations per cycle follow the labeled set: epochs x labeled images / batch size,
    # clamped to [min_iterations, max_iterations] (max 0 = no ceiling)
    epochs: float = 15.0
    min_iterations: int = 150
    max_iterations: int = 250
    # > 0: the iterations of a cycle that starts from the initial weights (cycle 1; every cycle
    # when warm_start is false) instead of the rule above: a model trained from scratch needs more
    # steps than one fine-tuned from the previous cycle's weights
    cold_start_iterations: int = 0
    batch_size: int = 4
    pseudo_batch_size: int = 2
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: tuple[float, ...] = (0.75, 0.9)
    gamma: float = 0.1
    warmup_iterations: int = 50
    hflip: float = 0.5
    semi_loss_weight: float = 0.01
    warm_start: bool = True
    grad_clip: float = 10.0
    learning_loss_stop_grad_after: float = 0.0
    # a batch's images share an aspect-ratio group (torchvision's detection references): width /
    # height binned at 2 ** linspace(-1, 1, 2k + 1); 0 = portrait / landscape; -1 = no grouping
    aspect_ratio_group_factor: int = 3
    # box-labeled images train the mask head with BoxInst's losses (Tian et al. 2021)
    box_projection_weight: float = 1.0
    box_pairwise_weight: float = 1.0
    box_pairwise_color_tau: float = 0.3
    # the pairwise weight ramps linearly from 0 to box_pairwise_weight over this fraction of each
    # cycle's iterations (AdelaiDet's BoxInst: 10,000 of 90,000); 0: full weight from the first step.
    # Measured: a DSB2018 model trained from scratch on boxes alone learned no mask without it
    # (docs/annotators.md, "A box-labeled cold start")
    box_pairwise_warmup: float = 0.5
    # > 0: after each cycle's training, fresh IoU heads are fitted for this many iterations on
    # the finished model's frozen features (salis.engine.iou_refit); 0: jointly trained heads only
    iou_refit_iterations: int = 0


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Training augmentation (salis.engine.augment): a preset, each knob overriding it (None: the
    preset's value). train.hflip stays the horizontal flip's probability."""

    preset: Literal["none", "natural", "microscopy"] = "none"
    vflip: float | None = None  # probability of a vertical flip
    rot90: float | None = None  # probability of a quarter turn (90, 180 or 270 degrees)
    brightness: float | None = None  # ColorJitter strengths
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None  # at most 0.5
    # large-scale jitter: each training image at the model's scale times U[scale_min, scale_max]
    scale_min: float | None = None
    scale_max: float | None = None
    crop_size: int | None = None  # a random crop of this side (pixels at the model's scale) around an instance; 0: none


@dataclasses.dataclass(frozen=True)
class PretrainParams:
    """Self-supervised pretraining of the backbone on the unlabeled pool (stage `pretrain`, lightly):
    init_model starts every run from its weights. Not seeded by the run's seed, so a dataset and
    backbone pretrain once and every seed of a grid reuses it from DVC's cache."""

    enabled: bool = False
    method: Literal["simsiam", "byol", "simclr"] = "simsiam"
    epochs: int = 30
    batch_size: int = 32  # images per step (two views each)
    image_size: int = 96  # side of each view (a random resized crop of a pool image)
    min_scale: float = 0.2  # smallest crop, as a fraction of the image's area
    vflip: float = 0.0  # probability of a vertical flip of a view (0.5 for slides, which have no up)
    rot90: float = 0.0  # probability of a quarter turn of a view (likewise)
    lr: float = 0.05  # SGD learning rate at 256 images per step (scaled linearly by batch_size)
    weight_decay: float = 1e-4
    seed: int = 0  # the pretraining's random choices (weights, crops, order)


@dataclasses.dataclass(frozen=True)
class RuntimeParams:
    """Where and how the torch stages run; read by init_model, train, infer_score and evaluate."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # mixed precision, CUDA only
    threads: int = 0  # torch CPU threads; 0 leaves torch's default (the machine's cores)
    # torch.distributed: processes per node for train, infer_score and evaluate (torchrun when > 1)
    nproc: int = 1
    nnodes: int = 1
    rdzv_endpoint: str = ""  # HOST:PORT where the nodes meet (nnodes > 1)
    rdzv_id: str = "salis"
    workers: int = 0  # DataLoader worker processes per rank for image loading (0: in the main process)


@dataclasses.dataclass(frozen=True)
class ScoreParams:
    batch_size: int = 8
    mc_passes: int = 0
    mc_dropout_p: float = 0.5
    # the pool is scored in shards of this many images (rounded to whole batches): a killed
    # infer_score resumes from the last whole shard, and ranks share the shards out
    shard_images: int = 512
    # > 0: each cycle scores only a seeded random subset of this many unlabeled images (the
    # candidates a sampler ranks and pseudo-labels come from), as Yoo & Kweon 2019 and baal's
    # max_sample do on large pools; 0: the whole unlabeled pool
    candidates: int = 0
    # masks (RLE in instances.parquet) only for detections with class score >= this; the others keep
    # every score selection reads (the mask-IoU head reads RoI features, not the mask) with a null
    # mask. Every later reader of masks must ask at least this score (checked below); 0: all masks
    mask_min_score: float = 0.3


@dataclasses.dataclass(frozen=True)
class SelectParams:
    initial: int = 20
    # how the initial set is chosen: random | typical (TypiClust on the cycle-0 model's embeddings
    # of the pool: one image per k-means cluster, its most typical)
    initial_strategy: Literal["random", "typical"] = "random"
    # what the initial images are labeled with: mask (drawn: the dearest hours of a loop, with no
    # model to correct from) | box (tight boxes, ~7 s an instance against 79; cycle 1 learns its
    # masks from them through BoxInst's losses alone: unreliable from scratch, see
    # docs/annotators.md). Points and image labels need a model's detections
    initial_label: Literal["mask", "box"] = "mask"
    budget: int = 20
    beta: float = 0.5
    tsp_components: tuple[Literal["class", "box", "mask"], ...] = ("class", "box", "mask")
    aggregation: Literal["default", "mean", "min", "max", "tsp"] = "default"
    min_score: float = 0.0  # detections under this class score leave image-level aggregation
    budget_hours: float = 0.0  # > 0: each cycle buys this many annotator hours instead of `budget` images
    # value per hour: the sampler's ranking re-ordered by its place in it divided by each image's
    # predicted annotation seconds (salis.loop.value_per_hour); with budget_hours the hours are
    # spent by those per-image forecasts
    per_hour: bool = False


# The label kinds (salis.annotation.kinds registers one object per name: a new kind adds its name
# here, to CHEAP_LABEL_TYPES when `mixed` may buy it as the cheap share, and its cost terms below)
LABEL_TYPES: tuple[str, ...] = ("mask", "box", "point", "image", "correct")
CHEAP_LABEL_TYPES: tuple[str, ...] = ("box", "point", "image")
LABEL_POLICIES: tuple[str, ...] = (*LABEL_TYPES, "mixed")
MASK_LABEL_TYPES: tuple[str, ...] = ("mask", "correct")  # what `mixed` may buy as its full-mask share
WEAK_LABEL_TYPES: tuple[str, ...] = ("point", "image")  # kinds trained through weak_label@k's targets


@dataclasses.dataclass(frozen=True)
class AnnotationParams:
    """What the annotators are asked for (salis.loop.budget assigns each selected image its label type)."""

    policy: Literal[LABEL_POLICIES] = "mask"
    # mixed: the share of each cycle's hours spent on full masks; the rest buys `cheap` labels
    mask_share: float = 0.5
    cheap: Literal[CHEAP_LABEL_TYPES] = "point"
    # mixed: rank = masks for the sampler's top-ranked images, cheap labels for the next ones;
    # mask_iou = walking the sampler's ranking, an image whose mean predicted mask IoU is at least
    # cheap_above gets a cheap label, the others full masks (mask-guided, Bellver et al.)
    mixed_order: Literal["rank", "mask_iou"] = "rank"
    cheap_above: float = 0.6
    # where the simulated annotator clicks an instance's point: center (the pixel deepest inside
    # the mask), uniform (any mask pixel), annotator (well inside, but not always at the centre:
    # a pixel drawn with probability growing with its distance to the mask border)
    point_placement: Literal["center", "uniform", "annotator"] = "annotator"
    # request batches carry the model's detections scoring at least this as pre-annotations
    pre_annotation_score: float = 0.5
    # mixed: how its full-mask share is labeled (mask: drawn; correct: corrected from the model's)
    mixed_masks: Literal[MASK_LABEL_TYPES] = "mask"
    # correct: the simulated annotator accepts a pre-annotated mask matching an instance at this
    # mask IoU or more (and of its class), fixes one at correct_fix_iou or more, else draws
    correct_accept_iou: float = 0.85
    correct_fix_iou: float = 0.5


@dataclasses.dataclass(frozen=True)
class WeakParams:
    """How weak labels become training targets (salis.loop.weak)."""

    # point-labeled images: a point claims the best detection whose mask contains it
    point_min_score: float = 0.05
    # a point no detection explains: the mask head runs at a box this many times the class's
    # median labeled box side around the point, then once more at the box of that mask
    refine_box_scale: float = 1.0
    # image-labeled images: detections with class score >= this, of the classes present, at most
    # the counted number per class (best first)
    image_score_thresh: float = 0.5


@dataclasses.dataclass(frozen=True)
class PseudoParams:
    # calibrated: thresholds chosen each cycle for target_precision (salis.loop.gate); fixed: the
    # three below. The default is what a params file without the key always did (fixed);
    # params.yaml sets calibrated
    gate: Literal["fixed", "calibrated"] = "fixed"
    target_precision: float = 0.9
    # calibrated: what the precision's lower bound counts as independent: detection (Wilson over
    # detections) | image (widened by the design effect over images: detections of one image are
    # right or wrong together)
    calibration_unit: Literal["detection", "image"] = "detection"
    score_thresh: float = 0.9
    box_iou_thresh: float = 0.9
    mask_iou_thresh: float = 0.8
    # cycle: pseudo-labels made once a cycle by the previous model (pseudo_label@k); teacher: an
    # EMA copy of the model being trained labels unlabeled images every iteration through the
    # same gate (salis.engine.teacher), the student learning them from a strong view
    mode: Literal["cycle", "teacher"] = "cycle"
    ema_decay: float = 0.99  # teacher <- decay * teacher + (1 - decay) * student, each step
    strong_augment: Literal["natural", "microscopy"] = "microscopy"  # the student's view (jitter 0.4)
    # a pseudo-labeled image's background: ignore (TSP's positive-only loss: no negatives from it)
    # | confident (negatives wherever the model that labeled it detected nothing scoring >=
    # background_score: anchors and RoIs within IoU 0.3 of such a detection stay ignored)
    background: Literal["ignore", "confident"] = "ignore"
    background_score: float = 0.05


@dataclasses.dataclass(frozen=True)
class CostParams:
    """Annotation cost model (salis.annotation.cost.CostModel); defaults from the literature."""

    mask_seconds_per_instance: float = 79.0
    seconds_per_category_checked: float = 1.0
    box_seconds: float = 7.0
    point_seconds: float = 2.4
    image_label_seconds_per_category: float = 1.0
    count_seconds_per_instance: float = 0.8
    # correct: a pre-annotated mask accepted as it is (a verification: 1.6 s, Papadopoulos et al.,
    # CVPR 2016, "We don't need no bounding-boxes"), fixed (14 s: SAM's model-assisted masks,
    # Kirillov et al., ICCV 2023), deleted (a verification); drawn ones cost mask_seconds_per_instance
    accept_seconds: float = 1.6
    fix_seconds: float = 14.0
    delete_seconds: float = 1.6
    hourly_rate: float = 50.0
    # model: the terms above price every image; measured: annotators' own times (Label Studio's
    # lead_time) price each timed image, and per label type the terms fitted to them (seconds per
    # instance + per image, least squares) price the rest and plan hour budgets; a label type with
    # fewer than measured_min_images timed images is refused (salis.analysis.measured_cost)
    source: Literal["model", "measured"] = "model"
    measured_min_images: int = 10


@dataclasses.dataclass(frozen=True)
class EvalParams:
    batch_size: int = 8


@dataclasses.dataclass(frozen=True)
class PicturesParams:
    images: int = 6  # thumbnails per gallery row


@dataclasses.dataclass(frozen=True)
class CycleParams:
    k: int
    prev: int
    next: int


@dataclasses.dataclass(frozen=True)
class Params:
    seed: int = 0
    sampler: str = "random"
    oracle: Literal["simulated", "human"] = "simulated"
    runtime: RuntimeParams = RuntimeParams()
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    augment: AugmentParams = AugmentParams()
    pretrain: PretrainParams = PretrainParams()
    score: ScoreParams = ScoreParams()
    select: SelectParams = SelectParams()
    annotation: AnnotationParams = AnnotationParams()
    weak: WeakParams = WeakParams()
    pseudo: PseudoParams = PseudoParams()
    eval: EvalParams = EvalParams()
    pictures: PicturesParams = PicturesParams()
    cost: CostParams = CostParams()
    cycles: dict[str, CycleParams] = dataclasses.field(default_factory=dict)

    @property
    def num_cycles(self) -> int:
        return len(self.cycles)


MAX_ECHO = 60  # characters of a refused value quoted in an error line


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > MAX_ECHO:
        text = f"{text[:MAX_ECHO]}... ({len(text)} characters)"
    return f"{text} ({type(value).__name__})"


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a type annotation, converting lists to tuples and dicts to dataclasses."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ParamsError as err:
                errors.append(str(err))
        raise ParamsError(errors[0] if errors else f"{where}: unexpected {_describe(value)}")
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{where} must be one of {', '.join(map(repr, args))}, got {_describe(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where} must be a list, got {_describe(value)}")
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where} must be a mapping, got {_describe(value)}")
        return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where} must be true or false, got {_describe(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where} must be an integer, got {_describe(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where} must be a number, got {_describe(value)}")
        if not math.isfinite(float(value)):  # NaN passes every < and > check downstream
            raise ParamsError(f"{where} must be a finite number, got {_describe(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where} must be a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} at {where}")


# Keys that moved: an old params.yaml names them, and gets told where they live now.
MOVED_KEYS = {
    "train.device": "runtime.device",
    "train.amp": "runtime.amp",
    "model.mc_dropout_p": "score.mc_dropout_p (an inference knob: changing it no longer retrains)",
    "model.mc_dropout_train": "model.train_dropout_p (a probability; 0 = no dropout while training)",
    "cost.kind": "annotation.policy (mask | box | point | image | correct | mixed; each labeled image's cost follows its own label type)",
    "train.iterations": "train.epochs with train.min_iterations / train.max_iterations "
    "(set both to N for a fixed N per cycle)",
}


def _check_moved(raw: dict, where: str) -> None:
    for key in raw:
        full = f"{where}.{key}".lstrip(".")
        if full in MOVED_KEYS:
            raise ParamsError(f"{full} has moved: use {MOVED_KEYS[full]}")


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"{where or 'params'} must be a mapping, got {_describe(raw)}")
    _check_moved(raw, where)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ParamsError(
            f"unknown key(s) {', '.join(prefix + str(u) for u in unknown)}; "
            f"valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name in raw:
            kwargs[field.name] = _convert(raw[field.name], hints[field.name], f"{where}.{field.name}".lstrip("."))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{where or 'params'} is missing the key {field.name!r}")
    return cls(**kwargs)


SEED_MAX = 2**32 - 1  # numpy's and torch's seeds
# Sizes past which a run allocates without bound (an image side of 100,000 px asks ~120 GB):
# refused unless the user raises the limit deliberately, in the environment (not a param, so
# raising it re-runs nothing).
IMAGE_SIDE_LIMIT_ENV = "SALIS_MAX_IMAGE_SIDE"
DEFAULT_IMAGE_SIDE_LIMIT = 4096
COUNT_LIMIT = 100_000  # detections, proposals, batch and head sizes


def image_side_limit() -> int:
    raw = os.environ.get(IMAGE_SIDE_LIMIT_ENV, "")
    try:
        return int(raw) if raw else DEFAULT_IMAGE_SIDE_LIMIT
    except ValueError:
        raise ParamsError(f"{IMAGE_SIDE_LIMIT_ENV} must be an integer number of pixels, got {_describe(raw)}") from None


def _check_limits(p: Params) -> None:
    """Numbers that would fail or corrupt a later stage: seeds numpy cannot take, a learning rate
    that is not positive, sizes that would allocate without bound."""
    for name, value in {"seed": p.seed, "data.seed": p.data.seed}.items():
        if not 0 <= value <= SEED_MAX:
            raise ParamsError(f"{name} must lie in 0..{SEED_MAX}, got {_describe(value)}")
    for name, value in {"train.lr": p.train.lr, "train.grad_clip": p.train.grad_clip,
                        "train.gamma": p.train.gamma}.items():
        if value <= 0:
            raise ParamsError(f"{name} must be positive, got {value}")
    for name, value in {"train.weight_decay": p.train.weight_decay,
                        "train.semi_loss_weight": p.train.semi_loss_weight,
                        "model.iou_loss_weight": p.model.iou_loss_weight}.items():
        if value < 0:
            raise ParamsError(f"{name} must be >= 0, got {value}")
    for name, value in {"model.iou_jitter_rois": p.model.iou_jitter_rois,
                        "model.iou_background_rois": p.model.iou_background_rois,
                        "train.cold_start_iterations": p.train.cold_start_iterations,
                        "train.iou_refit_iterations": p.train.iou_refit_iterations}.items():
        if value < 0:
            raise ParamsError(f"{name} must be >= 0, got {value}")
    if p.train.iou_refit_iterations > 0 and not p.model.iou_heads:
        raise ParamsError("train.iou_refit_iterations fits the IoU heads after each cycle; it needs model.iou_heads: true")
    if not 0.0 <= p.pseudo.ema_decay < 1.0:
        raise ParamsError(f"pseudo.ema_decay must lie in [0, 1), got {p.pseudo.ema_decay}")
    asked = {p.annotation.policy} | ({p.annotation.cheap} if p.annotation.policy == "mixed" else set())
    if p.pseudo.mode == "teacher" and asked & set(WEAK_LABEL_TYPES):
        raise ParamsError(f"pseudo.mode teacher trains on full masks and boxes; {', '.join(sorted(asked & set(WEAK_LABEL_TYPES)))} "
                          "labels need pseudo.mode: cycle")
    if not p.model.box_score_thresh <= p.pseudo.background_score <= 1.0:
        raise ParamsError(f"pseudo.background_score must lie in [model.box_score_thresh ({p.model.box_score_thresh}), 1]: "
                          f"no detection scoring less is kept, got {p.pseudo.background_score}")
    if not 0.0 < p.pseudo.target_precision <= 1.0:
        raise ParamsError(f"pseudo.target_precision must lie in (0, 1], got {p.pseudo.target_precision}")
    if not 0.0 <= p.model.iou_jitter_min_iou < 1.0:
        raise ParamsError(f"model.iou_jitter_min_iou must lie in [0, 1), got {p.model.iou_jitter_min_iou}")
    if not 0.0 <= p.train.momentum < 1.0:
        raise ParamsError(f"train.momentum must lie in [0, 1), got {p.train.momentum}")
    if any(not 0.0 < step < 1.0 for step in p.train.lr_steps):
        raise ParamsError(f"train.lr_steps are fractions of a cycle's iterations, each in (0, 1), got {list(p.train.lr_steps)}")
    if p.train.epochs == 0 and p.train.min_iterations == 0:
        raise ParamsError("train.epochs and train.min_iterations are both 0: a cycle would train no iteration")
    limit = image_side_limit()
    sides = {"model.min_size": p.model.min_size, "model.max_size": p.model.max_size,
             "data.synthetic.image_size": p.data.synthetic.image_size}
    for name, value in sides.items():
        if value > limit:
            raise ParamsError(f"{name} ({value}) is above the image side limit of {limit} px; set "
                              f"{IMAGE_SIDE_LIMIT_ENV} to raise it deliberately")
    if p.model.min_size > p.model.max_size:
        raise ParamsError(f"model.min_size ({p.model.min_size}) is above model.max_size ({p.model.max_size})")
    counts = {
        "model.detections_per_image": p.model.detections_per_image,
        "model.rpn_pre_nms_top_n_train": p.model.rpn_pre_nms_top_n_train,
        "model.rpn_post_nms_top_n_train": p.model.rpn_post_nms_top_n_train,
        "model.rpn_pre_nms_top_n_test": p.model.rpn_pre_nms_top_n_test,
        "model.rpn_post_nms_top_n_test": p.model.rpn_post_nms_top_n_test,
        "model.rpn_batch_size_per_image": p.model.rpn_batch_size_per_image,
        "model.box_batch_size_per_image": p.model.box_batch_size_per_image,
        "model.fpn_channels": p.model.fpn_channels, "model.box_head_dim": p.model.box_head_dim,
        "model.mask_head_channels": p.model.mask_head_channels, "model.iou_head_channels": p.model.iou_head_channels,
        "model.learning_loss_channels": p.model.learning_loss_channels,
        "model.mask_head_convs": p.model.mask_head_convs,
        "model.iou_jitter_rois": p.model.iou_jitter_rois, "model.iou_background_rois": p.model.iou_background_rois,
        "train.batch_size": p.train.batch_size, "train.pseudo_batch_size": p.train.pseudo_batch_size,
        "score.batch_size": p.score.batch_size, "eval.batch_size": p.eval.batch_size,
        "score.mc_passes": p.score.mc_passes, "pictures.images": p.pictures.images,
        "data.synthetic.max_instances": p.data.synthetic.max_instances,
    }
    for name, value in counts.items():
        if value > COUNT_LIMIT:
            raise ParamsError(f"{name} ({value}) is above the sane limit of {COUNT_LIMIT}")
    for name, value in {"model.rpn_post_nms_top_n_train": p.model.rpn_post_nms_top_n_train,
                        "model.rpn_post_nms_top_n_test": p.model.rpn_post_nms_top_n_test,
                        "model.rpn_batch_size_per_image": p.model.rpn_batch_size_per_image,
                        "model.box_batch_size_per_image": p.model.box_batch_size_per_image,
                        "model.fpn_channels": p.model.fpn_channels, "model.box_head_dim": p.model.box_head_dim,
                        "model.mask_head_channels": p.model.mask_head_channels,
                        "model.iou_head_channels": p.model.iou_head_channels,
                        "model.mask_head_convs": p.model.mask_head_convs,
                        "train.pseudo_batch_size": p.train.pseudo_batch_size}.items():
        if value <= 0:
            raise ParamsError(f"{name} must be positive, got {value}")
    if p.select.budget_hours > 1e6:
        raise ParamsError(f"select.budget_hours ({p.select.budget_hours}) is above the sane limit of 1,000,000 hours")
    for name, value in dataclasses.asdict(p.cost).items():
        if isinstance(value, float) and value < 0:
            raise ParamsError(f"cost.{name} must be >= 0, got {value}")
    if not 2 <= p.cost.measured_min_images <= 100_000:
        raise ParamsError(f"cost.measured_min_images must be in [2, 100000] (two terms are fitted), "
                          f"got {p.cost.measured_min_images}")
    if p.cost.source == "measured" and p.oracle != "human":
        raise ParamsError("cost.source: measured prices labels by annotators' times, which only human labels carry "
                          "(oracle: human); the simulated oracle is priced by the model (cost.source: model)")


def _check_ranges(p: Params) -> None:
    _check_limits(p)
    positive = {
        "select.initial": p.select.initial,
        "select.budget": p.select.budget,
        "train.batch_size": p.train.batch_size,
        "score.batch_size": p.score.batch_size,
        "eval.batch_size": p.eval.batch_size,
        "pictures.images": p.pictures.images,
        "score.shard_images": p.score.shard_images,
        "model.min_size": p.model.min_size,
        "model.max_size": p.model.max_size,
        "model.detections_per_image": p.model.detections_per_image,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ParamsError(f"{name} must be positive, got {value}")
    if p.train.epochs < 0 or p.train.min_iterations < 0 or p.train.max_iterations < 0:
        raise ParamsError("train.epochs, train.min_iterations and train.max_iterations must be >= 0")
    if p.train.max_iterations and p.train.max_iterations < p.train.min_iterations:
        raise ParamsError(
            f"train.max_iterations ({p.train.max_iterations}) is below train.min_iterations ({p.train.min_iterations})"
        )
    if p.train.aspect_ratio_group_factor < -1:
        raise ParamsError(f"train.aspect_ratio_group_factor must be >= -1 (-1 = no grouping), got "
                          f"{p.train.aspect_ratio_group_factor}")
    if p.train.warmup_iterations > max(p.train.min_iterations, 1):
        raise ParamsError(
            f"train.warmup_iterations ({p.train.warmup_iterations}) exceeds train.min_iterations "
            f"({p.train.min_iterations}): a short cycle would end inside its warm-up"
        )
    if p.score.candidates < 0:
        raise ParamsError(f"score.candidates must be >= 0 (0 = score the whole unlabeled pool), got {p.score.candidates}")
    if p.score.candidates and not p.select.budget_hours and p.score.candidates < p.select.budget:
        raise ParamsError(f"score.candidates ({p.score.candidates}) is below select.budget ({p.select.budget}): "
                          "a cycle could not fill its batch from the scored candidates")
    if p.score.mc_passes < 0:
        raise ParamsError(f"score.mc_passes must be >= 0 (0 turns MC dropout off), got {p.score.mc_passes}")
    for name, value in {"score.mc_dropout_p": p.score.mc_dropout_p, "model.train_dropout_p": p.model.train_dropout_p}.items():
        if not 0.0 <= value < 1.0:
            raise ParamsError(f"{name} must lie in [0, 1), got {value}")
    if p.select.budget_hours < 0:
        raise ParamsError(f"select.budget_hours must be >= 0 (0 = select.budget images per cycle), got {p.select.budget_hours}")
    if p.annotation.policy == "mixed" and not p.select.budget_hours:
        raise ParamsError("annotation.policy mixed splits each cycle's hours between masks and cheap labels: "
                          "set select.budget_hours (hours per cycle)")
    if p.weak.refine_box_scale <= 0:
        raise ParamsError(f"weak.refine_box_scale must be positive, got {p.weak.refine_box_scale}")
    for name, value in {"train.box_projection_weight": p.train.box_projection_weight,
                        "train.box_pairwise_weight": p.train.box_pairwise_weight}.items():
        if value < 0:
            raise ParamsError(f"{name} must be >= 0, got {value}")
    if p.runtime.threads < 0:
        raise ParamsError(f"runtime.threads must be >= 0 (0 = torch's default), got {p.runtime.threads}")
    for name, value in {"runtime.nproc": p.runtime.nproc, "runtime.nnodes": p.runtime.nnodes}.items():
        if value < 1:
            raise ParamsError(f"{name} must be at least 1, got {value}")
    if p.runtime.workers < 0:
        raise ParamsError(f"runtime.workers must be >= 0 (0 = load images in the main process), got {p.runtime.workers}")
    world = p.runtime.nproc * p.runtime.nnodes
    for name, value in {"train.batch_size": p.train.batch_size, "train.pseudo_batch_size": p.train.pseudo_batch_size}.items():
        if world > 1 and value % world:
            raise ParamsError(f"{name} ({value}) must be a multiple of the {world} processes (runtime.nproc x "
                              "runtime.nnodes): each rank takes an equal share of every global batch")
    if p.model.learning_loss_channels <= 0:
        raise ParamsError(f"model.learning_loss_channels must be positive, got {p.model.learning_loss_channels}")
    for name, value in {
        "model.learning_loss_margin": p.model.learning_loss_margin,
        "model.learning_loss_weight": p.model.learning_loss_weight,
    }.items():
        if value < 0:
            raise ParamsError(f"{name} must be >= 0, got {value}")
    for name, value in {
        "pseudo.score_thresh": p.pseudo.score_thresh,
        "pseudo.box_iou_thresh": p.pseudo.box_iou_thresh,
        "pseudo.mask_iou_thresh": p.pseudo.mask_iou_thresh,
        "select.beta": p.select.beta,
        "select.min_score": p.select.min_score,
        "model.iou_mask_threshold": p.model.iou_mask_threshold,
        "train.hflip": p.train.hflip,
        "train.learning_loss_stop_grad_after": p.train.learning_loss_stop_grad_after,
        "data.coco.test_fraction": p.data.coco.test_fraction,
        "annotation.mask_share": p.annotation.mask_share,
        "annotation.cheap_above": p.annotation.cheap_above,
        "annotation.pre_annotation_score": p.annotation.pre_annotation_score,
        "weak.point_min_score": p.weak.point_min_score,
        "weak.image_score_thresh": p.weak.image_score_thresh,
        "train.box_pairwise_color_tau": p.train.box_pairwise_color_tau,
        "train.box_pairwise_warmup": p.train.box_pairwise_warmup,
    }.items():
        if not 0.0 <= value <= 1.0:
            raise ParamsError(f"{name} must lie in [0, 1], got {value}")
    a = p.annotation
    if not 0.0 < a.correct_fix_iou <= a.correct_accept_iou <= 1.0:
        raise ParamsError(f"annotation.correct_fix_iou and correct_accept_iou must satisfy 0 < fix <= accept <= 1 "
                          f"(a mask good enough to accept is good enough to fix), got fix {a.correct_fix_iou}, "
                          f"accept {a.correct_accept_iou}")
    _check_mask_floor(p)
    _check_augment(p.augment)
    _check_scale_and_crop(p.augment, p.model)
    _check_pretrain(p.pretrain)
    if p.pretrain.enabled and p.model.weights:
        raise ParamsError("pretrain.enabled and model.weights are both set: pretraining starts from random "
                          "weights and init_model would load only one of them; choose one")
    if not p.select.tsp_components or len(set(p.select.tsp_components)) != len(p.select.tsp_components):
        raise ParamsError(f"select.tsp_components must list class, box and/or mask once each, got {p.select.tsp_components}")
    if len(p.model.anchor_sizes) != 5:
        raise ParamsError(f"model.anchor_sizes needs one size per FPN level (5), got {len(p.model.anchor_sizes)}")
    for key, cycle in p.cycles.items():
        if cycle.next != cycle.k + 1 or cycle.prev != cycle.k - 1:
            raise ParamsError(f"cycles.{key} must satisfy prev = k - 1 and next = k + 1, got {cycle}")
    ks = sorted(c.k for c in p.cycles.values())
    if ks and ks != list(range(1, len(ks) + 1)):
        raise ParamsError(f"cycles must number k = 1..K without gaps, got {ks}")


def _check_scale_and_crop(a: AugmentParams, model: ModelParams) -> None:
    low = 1.0 if a.scale_min is None else a.scale_min
    high = 1.0 if a.scale_max is None else a.scale_max
    if not 0.1 <= low <= high <= 4.0:
        raise ParamsError(f"augment.scale_min and scale_max must satisfy 0.1 <= scale_min <= scale_max <= 4, "
                          f"got {low} and {high}")
    crop = a.crop_size or 0
    if crop < 0:
        raise ParamsError(f"augment.crop_size must be >= 0 (0 = no crop), got {crop}")
    if crop and crop < 32:
        raise ParamsError(f"augment.crop_size must be at least 32 pixels (or 0 for no crop), got {crop}")
    if crop and crop >= model.max_size * high:
        raise ParamsError(f"augment.crop_size ({crop}) is not smaller than the training images, which are at most "
                          f"model.max_size x augment.scale_max = {model.max_size * high:g} pixels a side: no crop "
                          "would ever cut; lower it or set 0")


def _check_augment(a: AugmentParams) -> None:
    for name in ("vflip", "rot90"):
        value = getattr(a, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ParamsError(f"augment.{name} is a probability in [0, 1], got {value}")
    for name in ("brightness", "contrast", "saturation"):
        value = getattr(a, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ParamsError(f"augment.{name} must lie in [0, 1] (ColorJitter's strength), got {value}")
    if a.hue is not None and not 0.0 <= a.hue <= 0.5:
        raise ParamsError(f"augment.hue must lie in [0, 0.5], got {a.hue}")


def _check_pretrain(t: PretrainParams) -> None:
    if t.epochs < 1:
        raise ParamsError(f"pretrain.epochs must be >= 1, got {t.epochs}")
    if t.batch_size < 2:
        raise ParamsError(f"pretrain.batch_size must be >= 2 (batch norm and the loss compare images), got {t.batch_size}")
    if not 32 <= t.image_size <= 1024:
        raise ParamsError(f"pretrain.image_size must lie in [32, 1024] pixels, got {t.image_size}")
    for name in ("vflip", "rot90"):
        if not 0.0 <= getattr(t, name) <= 1.0:
            raise ParamsError(f"pretrain.{name} is a probability in [0, 1], got {getattr(t, name)}")
    if not 0.0 < t.min_scale <= 1.0:
        raise ParamsError(f"pretrain.min_scale is a fraction of the image's area in (0, 1], got {t.min_scale}")
    if t.lr <= 0.0 or t.weight_decay < 0.0:
        raise ParamsError(f"pretrain.lr must be > 0 and pretrain.weight_decay >= 0, got {t.lr} and {t.weight_decay}")


def _check_mask_floor(p: Params) -> None:
    """Every stage that reads masks from instances.parquet reads detections at or above the
    score floor those masks were kept from (score.mask_min_score)."""
    floor = p.score.mask_min_score
    if not 0.0 <= floor <= 1.0:
        raise ParamsError(f"score.mask_min_score must lie in [0, 1], got {floor}")
    readers = {"annotation.pre_annotation_score": p.annotation.pre_annotation_score}
    if p.pseudo.gate == "fixed":  # a calibrated gate starts at the floor by construction
        readers["pseudo.score_thresh"] = p.pseudo.score_thresh
    if p.sampler == "oracle_iou":
        readers["select.min_score"] = p.select.min_score
    for name, value in readers.items():
        if value < floor:
            raise ParamsError(f"{name} ({value}) reads masks of detections below score.mask_min_score ({floor}), "
                              f"which scoring does not keep: lower score.mask_min_score to {value} or raise {name}")


# model keys that older checkpoints store and that now live elsewhere (inference knobs)
_CHECKPOINT_DROPPED = ("mc_dropout_p",)


def parse_model_params(raw: Any, source: str) -> ModelParams:
    """Model params stored in a checkpoint; keys added since then take their defaults."""
    try:
        if isinstance(raw, dict):
            raw = dict(raw)
            if "mc_dropout_train" in raw:  # the bool became a probability: the p it trained with
                raw["train_dropout_p"] = float(raw.get("mc_dropout_p", 0.5)) if raw.pop("mc_dropout_train") else 0.0
            raw = {k: v for k, v in raw.items() if k not in _CHECKPOINT_DROPPED}
        return _build(ModelParams, raw, "model")
    except ParamsError as err:
        raise ParamsError(f"{source}: {err}") from None


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    try:
        params = _build(Params, raw if raw is not None else {}, "")
        _check_ranges(params)
    except ParamsError as err:
        raise ParamsError(f"{source}: {err}") from None
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such file (run from the project root, where params.yaml lives)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, str(path))
