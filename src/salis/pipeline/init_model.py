"""Stage `init_model`: the weights every cycle starts from (seeded random init, a local file, or the
pretrain stage's self-supervised backbone)."""

from __future__ import annotations

import json

from torch import nn

from salis.artifacts.layout import Layout
from salis.data.prepared import PreparedData
from salis.engine.device import configure_runtime
from salis.errors import SalisError
from salis.model.build import seeded_model
from salis.model.checkpoint import load_initial_weights, save_checkpoint
from salis.params import Params


def stage_init_model(params: Params, layout: Layout) -> str:
    configure_runtime(params.runtime)
    prepared = PreparedData(layout.prepared)
    model = seeded_model(params.model, len(prepared.categories), params.seed)
    note = "random init (seed {})".format(params.seed)
    if params.model.weights:
        note = load_initial_weights(model, params.model.weights)
    if params.pretrain.enabled:
        note = _load_pretrained(model, layout)
    save_checkpoint(layout.model(0), model, params.model, prepared.categories, {"init": note})
    return note


def _load_pretrained(model: nn.Module, layout: Layout) -> str:
    """The pretrain stage's body; its heads and FPN keep the seeded random init."""
    summary = json.loads(layout.pretrain_summary.read_text()) if layout.pretrain_summary.is_file() else {}
    if not summary.get("enabled") or not layout.pretrained_backbone.is_file():
        raise SalisError(f"pretrain.enabled is true but {layout.pretrain} holds no pretrained backbone: "
                         "run the pretrain stage first (dvc repro runs it)")
    return "self-supervised {} on {} pool images; {}".format(
        summary["method"], summary["images"], load_initial_weights(model, layout.pretrained_backbone))
