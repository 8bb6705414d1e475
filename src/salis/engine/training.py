"""Iteration-based training of the Mask R-CNN on labeled plus pseudo-labeled images.

L = L_sup + beta * L_semi: each step sums the losses of a labeled batch and, when there are
pseudo-labeled images, of a pseudo batch whose images carry the positive-only flag.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from salis.engine.device import autocast
from salis.errors import SalisError
from salis.model.heads import pairwise_ramp, set_pairwise_ramp
from salis.model.learning_loss import stop_loss_prediction_gradient
from salis.engine.augment import Augmenter, AugmentSettings, skip_model_resize
from salis.engine.datasets import Sample, sample_sizes
from salis.engine.iou_refit import refit_iou_heads
from salis.engine.teacher import Teacher, TeacherSettings
from salis.params import AugmentParams, TrainParams
from salis.seeds import derive_seed


class SampleSource(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Sample: ...


def index_batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[list[int]]:
    """Endless batches: shuffled epochs, a batch never repeats an index unless n < batch_size."""
    while True:
        order = rng.permutation(n)
        if n < batch_size:
            order = np.resize(order, batch_size)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start : start + batch_size].tolist()


def aspect_ratio_groups(sizes: Sequence[tuple[int, int]], factor: int) -> list[int]:
    """Each (height, width)'s aspect-ratio group, as torchvision's detection references group them
    (create_aspect_ratio_groups): width / height quantised at the bins 2 ** linspace(-1, 1, 2k + 1),
    k = factor; factor 0: portrait / landscape; factor -1: one group (no grouping)."""
    if factor < 0:
        return [0] * len(sizes)
    bins = (2.0 ** np.linspace(-1, 1, 2 * factor + 1)).tolist() if factor > 0 else [1.0]
    return [bisect.bisect_right(bins, width / height) for height, width in sizes]


def grouped_index_batches(groups: Sequence[int], batch_size: int, rng: np.random.Generator) -> Iterator[list[int]]:
    """Endless batches whose indices share a group (GroupedBatchSampler of torchvision's detection
    references): each shuffled epoch fills one buffer per group and a full buffer is a batch, so
    a batch pads its images to one shape instead of to the widest and the tallest of mixed ones.
    A group smaller than the batch fills it over several epochs (repeating its images). With one
    group these are exactly index_batches' batches."""
    if len(set(groups)) <= 1:
        yield from index_batches(len(groups), batch_size, rng)
        return
    buffers: dict[int, list[int]] = defaultdict(list)
    while True:
        for index in rng.permutation(len(groups)).tolist():
            buffer = buffers[groups[index]]
            buffer.append(index)
            if len(buffer) == batch_size:
                yield buffer.copy()
                buffer.clear()


def schedule_iterations(params: TrainParams, labeled_images: int, cold_start: bool = False) -> int:
    """Iterations of one cycle: train.epochs passes over the labeled set, clamped to
    [min_iterations, max_iterations] (max 0: no ceiling), so that a cycle with 20 labeled
    images and one with 200 both train for a sensible number of epochs; a cycle starting from the
    initial weights (cold_start) trains train.cold_start_iterations when that is set."""
    if cold_start and params.cold_start_iterations:
        return params.cold_start_iterations
    wanted = math.ceil(params.epochs * labeled_images / params.batch_size)
    if params.max_iterations:
        wanted = min(wanted, params.max_iterations)
    return max(wanted, params.min_iterations)


def lr_factor(iteration: int, params: TrainParams, iterations: int) -> float:
    """Linear warm-up, then step decay at the given fractions of the schedule's `iterations`."""
    warm = 1.0
    if iteration < params.warmup_iterations:
        warm = 0.001 + (1 - 0.001) * iteration / params.warmup_iterations
    steps = sum(iteration >= int(f * iterations) for f in params.lr_steps)
    return warm * params.gamma**steps


def _batch_loss(
    model: nn.Module,
    samples: Sequence[Sample],
    device: torch.device,
    amp: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    images, targets = zip(*(s.to_model_input(device) for s in samples))
    with autocast(device, amp):
        losses = model(list(images), list(targets))
    total = sum(losses.values())
    return total, {k: float(v.detach()) for k, v in losses.items()}


class StepLoss(nn.Module):
    """A training step's loss L = L_sup + beta * L_semi in one forward call: the module that
    DistributedDataParallel wraps (DDP expects one forward per backward)."""

    def __init__(self, model: nn.Module, semi_loss_weight: float, device: torch.device, amp: bool) -> None:
        super().__init__()
        self.model, self.semi_loss_weight, self.device, self.amp = model, semi_loss_weight, device, amp

    def forward(self, labeled: Sequence[Sample], pseudo: Sequence[Sample] | None) -> tuple[torch.Tensor, dict[str, float]]:
        loss, parts = _batch_loss(self.model, labeled, self.device, self.amp)
        if pseudo is not None:
            semi, semi_parts = _batch_loss(self.model, pseudo, self.device, self.amp)
            loss = loss + self.semi_loss_weight * semi
            parts.update({f"semi_{k}": v for k, v in semi_parts.items()})
        parts["loss"] = float(loss.detach())
        return loss, parts


def make_optimizer(
    model: nn.Module, params: TrainParams, iterations: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with momentum and weight decay, and the warm-up + step schedule of lr_factor."""
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=params.lr,
        momentum=params.momentum,
        weight_decay=params.weight_decay,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, params, iterations))


class LossWindow:
    """Loss values between two logs, and the means of the last full window."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.last: dict[str, float] = {}

    def add(self, parts: dict[str, float]) -> None:
        for k, v in parts.items():
            self.values.setdefault(k, []).append(v)

    def close(self, lr: float) -> dict[str, float]:
        means = {k: float(np.mean(v)) for k, v in self.values.items()}
        means["lr"] = lr
        self.values, self.last = {}, means
        return means


class Trainer:
    """One optimisation step at a time: L = L_sup + beta * L_semi, skipped when not finite."""

    def __init__(self, model: nn.Module, params: TrainParams, iterations: int, device: torch.device, amp: bool,
                 wrap: Callable[[nn.Module], nn.Module] | None = None) -> None:
        """wrap: applied to the step's loss module (DistributedDataParallel in a distributed run)."""
        self.model, self.params, self.iterations, self.device = model, params, iterations, device
        self.amp = amp and device.type == "cuda"
        step = StepLoss(model, params.semi_loss_weight, device, self.amp)
        self.forward = wrap(step) if wrap is not None else step
        self.optimizer, self.scheduler = make_optimizer(model, params, iterations)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.skipped = 0

    def losses(self, labeled: Sequence[Sample], pseudo: Sequence[Sample] | None) -> tuple[torch.Tensor, dict[str, float]]:
        return self.forward(labeled, pseudo)

    def step(self, it: int, loss: torch.Tensor, parts: dict[str, float]) -> bool:
        """Apply one step; False (and the schedule advanced) when the loss was not finite."""
        from salis.engine import distributed as dist

        self.optimizer.zero_grad(set_to_none=True)
        if not dist.all_ranks(math.isfinite(parts["loss"])):  # every rank steps, or none does
            self.skipped += 1
            if self.skipped > max(5, self.iterations // 20):
                raise SalisError(
                    f"training diverged: {self.skipped} non-finite losses by iteration {it}; lower train.lr"
                )
            self.scheduler.step()
            return False
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), self.params.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return True

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


Plan = list[tuple[list[tuple[int, bool]], list[tuple[int, bool]] | None]]


def batch_plan(labeled: Sequence[int], pseudo: Sequence[int], params: TrainParams, rng: np.random.Generator,
               iterations: int, use_pseudo: bool) -> Plan:
    """Per iteration: the global labeled batch and pseudo batch as (index, flipped) pairs, drawn
    from `rng` in the order the training loop always drew them (batch, its flips, pseudo batch,
    its flips), so a plan made up front changes no result. `labeled` and `pseudo` are each
    image's aspect-ratio group: a batch draws from one group (one group: no grouping)."""
    labeled_batches = grouped_index_batches(labeled, params.batch_size, rng)
    pseudo_batches = grouped_index_batches(pseudo, params.pseudo_batch_size, rng) if len(pseudo) else None
    plan: Plan = []
    for _ in range(iterations):
        batch = [(i, bool(rng.random() < params.hflip)) for i in next(labeled_batches)]
        extra = [(i, bool(rng.random() < params.hflip)) for i in next(pseudo_batches)] if use_pseudo else None
        plan.append((batch, extra))
    return plan


class PlannedBatches(torch.utils.data.Dataset):
    """Iteration it of a rank's plan as samples (decoded in DataLoader workers when there are any),
    flipped as the plan says and augmented (salis.engine.augment) from a seed of (run seed,
    iteration, source, image): the same on every rank and every rerun."""

    def __init__(self, plan: Plan, labeled: SampleSource, pseudo: SampleSource,
                 augment: Augmenter | None = None, seed: int = 0, augment_pseudo: bool = True) -> None:
        """augment_pseudo False: pseudo samples get the plan's flip only (a teacher's weak view)."""
        self.plan, self.labeled, self.pseudo, self.augment, self.seed = plan, labeled, pseudo, augment, seed
        self.augment_pseudo = augment_pseudo

    def __len__(self) -> int:
        return len(self.plan)

    def _take(self, source: SampleSource, pairs: list[tuple[int, bool]], it: int, kind: str) -> list[Sample]:
        out = []
        for i, flip in pairs:
            sample = source[i].flipped() if flip else source[i]
            if self.augment is not None and (kind == "labeled" or self.augment_pseudo):
                sample = self.augment(sample, derive_seed(self.seed, it, f"augment {kind}", index=i))
            out.append(sample)
        return out

    def __getitem__(self, it: int) -> tuple[list[Sample], list[Sample] | None]:
        batch, extra = self.plan[it]
        return self._take(self.labeled, batch, it, "labeled"), (
            self._take(self.pseudo, extra, it, "pseudo") if extra is not None else None)


def rank_plan(labeled: SampleSource, pseudo: SampleSource, params: TrainParams, seed: int, iterations: int,
              use_pseudo: bool, rank: int, world: int) -> Plan:
    """Rank `rank`'s share (batch[rank::world]) of the global plan, which every rank draws alike
    from the run's seed: the ranks together train on exactly the one-process batches."""
    factor = params.aspect_ratio_group_factor
    groups = [aspect_ratio_groups(sample_sizes(source), factor) for source in (labeled, pseudo)]
    plan = batch_plan(groups[0], groups[1], params, np.random.default_rng(seed), iterations, use_pseudo)
    return [(batch[rank::world], extra[rank::world] if extra is not None else None) for batch, extra in plan]


def rank_seed(seed: int, rank: int) -> int:
    """torch's seed on a rank: the run's own on rank 0 (one process keeps its results), derived on the others."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def check_finite_weights(model: nn.Module, lr: float) -> None:
    """Refuse a model whose weights are no longer finite (a step late in the cycle diverged):
    the stage stops with this line instead of saving a NaN checkpoint every later stage would use."""
    bad = [name for name, tensor in model.state_dict().items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise SalisError(f"training diverged: {len(bad)} weight tensors are NaN or infinite (e.g. {bad[0]}) at the end "
                         f"of the cycle (lr {lr:g}); lower train.lr or raise train.warmup_iterations")


def train_model(
    model: nn.Module,
    labeled: SampleSource,
    pseudo: SampleSource,
    params: TrainParams,
    seed: int,
    device: torch.device,
    amp: bool = True,
    log: Callable[[int, dict[str, float]], None] | None = None,
    log_every: int = 10,
    workers: int = 0,
    augment: AugmentParams | None = None,
    cold_start: bool = False,
    teacher: TeacherSettings | None = None,
    strong: AugmentParams | None = None,
    teacher_labels: list[dict] | None = None,
) -> dict[str, float]:
    """Train in place for schedule_iterations(params, len(labeled), cold_start) steps (cold_start:
    the model holds the initial weights); `teacher`: `pseudo` holds unlabeled images, which an
    EMA teacher labels each iteration and the student learns through the `strong` augmentation
    (salis.engine.teacher), and `teacher_labels` (rank 0's) receives each image's pseudo-labels from
    the last time it labeled it (Teacher.latest_rows, over every rank); returns the mean of
    the last logged losses and the schedule. `augment`: training augmentation (None: none).

    Inside torchrun (salis.engine.distributed) the model is wrapped in DistributedDataParallel:
    every rank draws the same global batch plan (rank_plan; each batch from one aspect-ratio group)
    and trains on its share (batch[r::W]), DDP
    averages the gradients, and logged losses are averaged over the ranks. On CUDA, BatchNorm
    becomes SyncBatchNorm; on CPU (gloo) each rank normalises its own share of the batch.
    """
    from salis.engine import distributed as dist

    if len(labeled) == 0:
        raise SalisError("no labeled images to train on: the labeled table is empty")
    iterations = schedule_iterations(params, len(labeled), cold_start)
    rank, world = dist.rank(), dist.world_size()
    torch.manual_seed(rank_seed(seed, rank))
    model.to(device).train()
    wrap = None
    if world > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        wrap = lambda step: nn.parallel.DistributedDataParallel(  # noqa: E731
            step, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    trainer = Trainer(model, params, iterations, device, amp, wrap=wrap)
    use_pseudo = len(pseudo) > 0 and params.semi_loss_weight > 0
    settings = AugmentSettings.from_params(augment or AugmentParams())
    model_size = (model.transform.min_size[-1], model.transform.max_size)
    batches = PlannedBatches(rank_plan(labeled, pseudo, params, seed, iterations, use_pseudo, rank, world),
                             labeled, pseudo, Augmenter(settings, model_size) if settings.active else None, seed,
                             augment_pseudo=teacher is None)
    mean_teacher = Teacher(model, teacher) if teacher is not None and use_pseudo else None
    # the strong view scales and crops as the labeled images do: the model skips its own resize
    strong_settings = dataclasses.replace(
        AugmentSettings.from_params(strong or AugmentParams()),
        scale_min=settings.scale_min, scale_max=settings.scale_max, crop_size=settings.crop_size)
    strong_view = Augmenter(strong_settings, model_size) if mean_teacher is not None and strong_settings.active else None
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers, collate_fn=lambda x: x) \
        if workers > 0 else (batches[it] for it in range(len(batches)))

    window = LossWindow()
    stop_grad_at = int(params.learning_loss_stop_grad_after * iterations)
    pairwise_warmup = int(params.box_pairwise_warmup * iterations)
    bar = tqdm(total=iterations, desc="train", unit="it", mininterval=2.0, leave=False, disable=rank != 0)
    with skip_model_resize(model, settings.resizes):  # scaled (and cropped) by the Augmenter
        for it, (labeled_batch, pseudo_batch) in enumerate(loader):
            # learning loss: late in training the ranking loss stops shaping the backbone (Yoo & Kweon)
            stop_loss_prediction_gradient(model, it >= stop_grad_at)
            set_pairwise_ramp(model, pairwise_ramp(it, pairwise_warmup))
            if mean_teacher is not None:
                made = mean_teacher.pseudo_label(pseudo_batch or [], device, trainer.amp, iteration=it + 1)
                pseudo_batch = [strong_view(s, derive_seed(seed, it, "augment strong", index=s.image_id))
                                if strong_view is not None else s for s in made] or None
            loss, parts = trainer.losses(labeled_batch, pseudo_batch)
            bar.update(1)
            if not trainer.step(it, loss, parts):
                continue
            if mean_teacher is not None:
                mean_teacher.update(model)
            window.add(parts)
            if (it + 1) % log_every == 0 or it + 1 == iterations:
                means = dist.mean_over_ranks(window.close(trainer.lr))
                window.last = means
                bar.set_postfix(loss=f"{means['loss']:.3f}")
                if log is not None:
                    log(it + 1, means)
        refit, refit_losses = params.iou_refit_iterations, {}
        if refit > 0:  # every rank fits the same heads on the same (whole) batches
            refit_seed = derive_seed(seed, 0, "iou refit")
            plan = rank_plan(labeled, [], params, refit_seed, refit, False, 0, 1)
            augmenter = batches.augment
            views = PlannedBatches(plan, labeled, [], augmenter, refit_seed)
            refit_losses = refit_iou_heads(model, (views[it][0] for it in range(refit)), refit, params, device,
                                           refit_seed)
    bar.close()
    stop_loss_prediction_gradient(model, False)
    set_pairwise_ramp(model, 1.0)
    model.eval()
    check_finite_weights(model, trainer.lr)
    result = dict(window.last)
    result["skipped_steps"] = float(trainer.skipped)
    result["iterations"] = float(iterations)
    result["epochs"] = iterations * params.batch_size / len(labeled)
    result["processes"] = float(world)
    result.update(refit_losses)
    if mean_teacher is not None:  # over every iteration of the cycle and every rank
        result.update(dist.sum_over_ranks({"teacher_pseudo_instances": float(mean_teacher.instances),
                                           "teacher_pseudo_images": float(mean_teacher.images)}))
        gathered = dist.gather(mean_teacher.latest_rows())
        if gathered is not None and teacher_labels is not None:
            teacher_labels.extend(_latest_over_ranks(gathered))
    return result


def _latest_over_ranks(per_rank: list[list[dict]]) -> list[dict]:
    """Each image's rows from the rank that labeled it last (ties: the lower rank), in image order."""
    latest: dict[int, list[dict]] = {}
    for rows in per_rank:
        for image_id, group in itertools.groupby(rows, key=lambda r: r["image_id"]):
            group = list(group)
            if image_id not in latest or group[0]["iteration"] > latest[image_id][0]["iteration"]:
                latest[image_id] = group
    return [row for image_id in sorted(latest) for row in latest[image_id]]
