"""The pretraining loop: pool images through a method's two views, SGD with a cosine schedule.

Every random choice (weights, heads, order, crops, jitter) comes from pretrain.seed: lightly's
transforms draw from torch's and numpy's global generators, so both are seeded here and restored
afterwards. The same params give the same bytes on CPU at a fixed thread count."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from lightly.utils.debug import std_of_l2_normalized
from PIL import Image
from torch import nn
from tqdm import tqdm

from salis.errors import SalisError
from salis.model.resnets import resnet_body, resnet_feature_dim
from salis.params import PretrainParams
from salis.pretrain.methods import build_method, view_transform


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A pretraining run's outcome: the body's weights (torchvision layout, no classifier) and what it cost."""

    body_state: dict[str, torch.Tensor]
    epoch_losses: list[float]
    epoch_output_std: list[float]  # spread of the l2-normalised projections: 0 = collapsed
    output_dim: int  # D: a healthy spread is about 1 / sqrt(D)
    steps: int
    seconds: float


@contextlib.contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """torch's and numpy's global generators seeded, and put back as they were on exit."""
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


def epoch_batches(ids: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """A shuffled epoch in batches of batch_size; a last batch of one image is dropped (batch norm
    cannot train on it), a pool smaller than a batch is one batch."""
    order = [ids[i] for i in rng.permutation(len(ids))]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [b for b in batches if len(b) >= 2]


def pretrain_body(
    load_image: Callable[[int], np.ndarray],
    ids: Sequence[int],
    params: PretrainParams,
    backbone: str,
    device: torch.device,
) -> Pretrained:
    """Train `backbone`'s body self-supervised on the images `ids` (load_image gives H x W x 3 uint8)."""
    if len(ids) < 2:
        raise SalisError(f"pretrain: the unlabeled pool holds {len(ids)} image(s); self-supervised "
                         "pretraining needs at least 2 (set pretrain.enabled: false)")
    batch_size = min(params.batch_size, len(ids))
    batches_per_epoch = len(epoch_batches(ids, batch_size, np.random.default_rng(0)))
    steps = params.epochs * batches_per_epoch
    started = time.perf_counter()
    with seeded_globals(params.seed):
        body = resnet_body(backbone)
        body.fc = nn.Identity()
        method = build_method(params.method, body, resnet_feature_dim(backbone)).to(device)
        views = view_transform(params.method, image_size=params.image_size, min_scale=params.min_scale,
                               vflip=params.vflip, rot90=params.rot90)
        lr = params.lr * batch_size / 256  # the linear scaling rule
        optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                                    weight_decay=params.weight_decay)
        rng = np.random.default_rng(params.seed)
        method.train()
        losses: list[float] = []
        spreads: list[float] = []
        output_dim = 0
        step = 0
        bar = tqdm(total=steps, desc="pretrain", unit="it", mininterval=2.0, leave=False)
        for _ in range(params.epochs):
            total, spread = 0.0, 0.0
            batches = epoch_batches(ids, batch_size, rng)
            for batch in batches:
                for group in optimizer.param_groups:  # cosine decay to 0 over all steps
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                pairs = [views(Image.fromarray(load_image(i))) for i in batch]
                x0 = torch.stack([p[0] for p in pairs]).to(device)
                x1 = torch.stack([p[1] for p in pairs]).to(device)
                loss, projections = method.loss(x0, x1, step / steps)
                if not torch.isfinite(loss):
                    raise SalisError(f"pretrain: the loss became {loss.item()} at step {step}; "
                                     "lower pretrain.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
                spread += std_of_l2_normalized(projections.detach()).item()
                output_dim = projections.shape[1]
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            losses.append(total / len(batches))
            spreads.append(spread / len(batches))
        bar.close()
    state = {k: v.detach().cpu().clone() for k, v in body.state_dict().items()}
    return Pretrained(state, losses, spreads, output_dim, steps, time.perf_counter() - started)
