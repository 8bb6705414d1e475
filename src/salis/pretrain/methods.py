"""Self-supervised methods, from lightly's heads, losses and view transforms: a registry of the
methods `pretrain.method` names. Each wraps a ResNet body whose classifier is an identity (the
pooled features), and gives the loss of a batch seen through two views."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    SimCLRProjectionHead,
    SimSiamPredictionHead,
    SimSiamProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, SimCLRTransform, SimSiamTransform
from lightly.utils.scheduler import cosine_schedule
from torch import nn


class SelfSupervised(nn.Module):
    """A body (features: N x feature_dim) and a method's heads; `loss(x0, x1, progress)` is the
    training loss of two views of a batch, progress the fraction of training done (for schedules),
    and the first view's projections (N x D), whose spread tells a collapse (lightly's
    std_of_l2_normalized: 0 collapsed, about 1 / sqrt(D) healthy)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(start_dim=1)

    def loss(self, x0: torch.Tensor, x1: torch.Tensor, progress: float) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class SimSiam(SelfSupervised):
    """Chen & He 2021: no negatives, no momentum encoder: works with the small batches a CPU affords."""

    def __init__(self, body: nn.Module, feature_dim: int) -> None:
        super().__init__(body)
        self.projection = SimSiamProjectionHead(feature_dim, 512, 128)
        self.prediction = SimSiamPredictionHead(128, 64, 128)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, x0: torch.Tensor, x1: torch.Tensor, progress: float) -> tuple[torch.Tensor, torch.Tensor]:
        z0, z1 = self.projection(self.features(x0)), self.projection(self.features(x1))
        p0, p1 = self.prediction(z0), self.prediction(z1)
        return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach())), z0


class BYOL(SelfSupervised):
    """Grill et al. 2020: an online network predicts a momentum (EMA) network's projection."""

    def __init__(self, body: nn.Module, feature_dim: int) -> None:
        super().__init__(body)
        self.projection = BYOLProjectionHead(feature_dim, 1024, 256)
        self.prediction = BYOLPredictionHead(256, 1024, 256)
        self.body_momentum = copy.deepcopy(body)
        self.projection_momentum = copy.deepcopy(self.projection)
        deactivate_requires_grad(self.body_momentum)
        deactivate_requires_grad(self.projection_momentum)
        self.criterion = NegativeCosineSimilarity()

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_momentum(self.body_momentum(x).flatten(start_dim=1)).detach()

    def loss(self, x0: torch.Tensor, x1: torch.Tensor, progress: float) -> tuple[torch.Tensor, torch.Tensor]:
        momentum = cosine_schedule(int(progress * 1000), 1000, 0.99, 1.0)
        update_momentum(self.body, self.body_momentum, m=momentum)
        update_momentum(self.projection, self.projection_momentum, m=momentum)
        z0 = self.projection(self.features(x0))
        p0, p1 = self.prediction(z0), self.prediction(self.projection(self.features(x1)))
        return 0.5 * (self.criterion(p0, self._target(x1)) + self.criterion(p1, self._target(x0))), z0


class SimCLR(SelfSupervised):
    """Chen et al. 2020: contrast each image's two views against the batch's other images."""

    def __init__(self, body: nn.Module, feature_dim: int) -> None:
        super().__init__(body)
        self.projection = SimCLRProjectionHead(feature_dim, 512, 128)
        self.criterion = NTXentLoss(temperature=0.5)

    def loss(self, x0: torch.Tensor, x1: torch.Tensor, progress: float) -> tuple[torch.Tensor, torch.Tensor]:
        z0 = self.projection(self.features(x0))
        return self.criterion(z0, self.projection(self.features(x1))), z0


def _byol_views(**knobs: Any) -> Callable:
    # BYOL's two views differ (blur and solarization probabilities); lightly builds both
    return BYOLTransform(BYOLView1Transform(**knobs), BYOLView2Transform(**knobs))


METHODS: dict[str, tuple[type[SelfSupervised], Callable[..., Callable]]] = {
    "simsiam": (SimSiam, SimSiamTransform),
    "byol": (BYOL, _byol_views),
    "simclr": (SimCLR, SimCLRTransform),
}


def build_method(name: str, body: nn.Module, feature_dim: int) -> SelfSupervised:
    return METHODS[name][0](body, feature_dim)


def view_transform(name: str, *, image_size: int, min_scale: float, vflip: float, rot90: float) -> Callable:
    """The method's lightly transform: a PIL image in, its two normalised views out. Flips and
    90-degree turns follow the augment preset's (a slide has no up; a photograph has)."""
    return METHODS[name][1](input_size=image_size, min_scale=min_scale, vf_prob=vflip, hf_prob=0.5, rr_prob=rot90)
