"""Fit the IoU heads afresh on the finished model's frozen features (train.iou_refit_iterations).

Trained jointly, the IoU heads learn while the features under them still move, and their early
targets come from a model that no longer exists by the end of the cycle. A refit after the
cycle teaches fresh heads the features inference will read (Bellver et al. fit their quality
heads this way). Everything but the two heads stays as trained, bit for bit: no gradient reaches
it, BatchNorm keeps its running statistics and the heads' training dropout is off.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from salis.engine.datasets import Sample
from salis.errors import SalisError
from salis.params import TrainParams

IOU_LOSSES = ("loss_box_iou", "loss_mask_iou")


@contextlib.contextmanager
def only_iou_heads_learn(model: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Inside the block the model runs its training forward (RoI sampling, the heads' targets)
    with every parameter frozen but the IoU heads' (yielded), BatchNorm in evaluation mode and
    the RoI heads' training dropout off; all of it comes back as it was on leaving."""
    heads = model.roi_heads
    fitted = [*heads.box_iou_head.parameters(), *heads.mask_iou_head.parameters()]
    fitted_ids = {id(p) for p in fitted}
    requires = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    dropout = heads.train_dropout_p
    try:
        for p, _ in requires:
            p.requires_grad_(id(p) in fitted_ids)
        model.train()
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        heads.train_dropout_p = 0.0
        yield fitted
    finally:
        heads.train_dropout_p = dropout
        for p, flag in requires:
            p.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode


def refit_iou_heads(model: nn.Module, batches: Iterable[Sequence[Sample]], iterations: int, params: TrainParams,
                    device: torch.device, seed: int) -> dict[str, float]:
    """Re-initialise both IoU heads (from `seed`) and fit them for `iterations` steps on
    `batches` (expert-labeled samples; pseudo-labeled ones give the heads no loss) with the
    IoU losses alone: SGD at train.lr with its warm-up and step schedule over `iterations`.
    Runs in float32 (the heads are small; no loss scaling needed). Returns the mean IoU losses
    of the last tenth of the steps as iou_refit_loss_box_iou / iou_refit_loss_mask_iou, and the
    refit's wall time as iou_refit_seconds (its cost, apart from the cycle's training)."""
    heads = getattr(model, "roi_heads", None)
    if heads is None or not heads.has_iou_heads:
        raise SalisError("train.iou_refit_iterations needs the IoU heads: set model.iou_heads: true")
    from salis.engine.training import lr_factor  # the training loop imports this module

    started = time.perf_counter()
    torch.manual_seed(seed)
    heads.box_iou_head.reset_parameters()
    heads.mask_iou_head.reset_parameters()
    history: dict[str, list[float]] = {name: [] for name in IOU_LOSSES}
    with only_iou_heads_learn(model) as fitted:
        optimizer = torch.optim.SGD(fitted, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, params, iterations))
        for _, batch in zip(range(iterations), batches):
            images, targets = zip(*(s.to_model_input(device) for s in batch))
            losses = model(list(images), list(targets))
            loss = losses[IOU_LOSSES[0]] + losses[IOU_LOSSES[1]]
            optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                raise SalisError(f"the IoU heads' refit diverged (a non-finite loss); lower train.lr ({params.lr:g})")
            loss.backward()
            nn.utils.clip_grad_norm_(fitted, params.grad_clip)
            optimizer.step()
            scheduler.step()
            for name in IOU_LOSSES:
                history[name].append(float(losses[name].detach()))
    model.eval()
    tail = max(1, iterations // 10)
    out = {f"iou_refit_{name}": float(np.mean(values[-tail:])) for name, values in history.items() if values}
    return out | {"iou_refit_seconds": time.perf_counter() - started}
