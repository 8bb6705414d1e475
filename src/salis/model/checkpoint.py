"""Checkpoints: plain dicts of tensors and primitives, always loaded with weights_only=True."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from salis.artifacts.atomic import write_torch
from salis.errors import InputError
from salis.model.build import build_model
from salis.params import ModelParams, parse_model_params

FORMAT = "salis-checkpoint"
VERSION = 1


def save_checkpoint(
    path: str | Path, model: nn.Module, params: ModelParams, categories: list[dict], extra: dict | None = None
) -> None:
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model_params": dataclasses.asdict(params),
        "categories": categories,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    write_torch(path, state)  # same weights, same bytes


def _read(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        # Never unpickle arbitrary objects from a file we did not write ourselves.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types here: unpickling, zip, EOF
        # torch's text advises weights_only=False, which must never be followed for an untrusted
        # file: only the error's kind and, where it has no such advice, its first line are shown
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        detail = type(err).__name__ + (f": {first}" if first and "weights_only" not in str(err) else "")
        raise InputError(path, f"not a loadable salis/torch weights file ({detail})") from None


def load_checkpoint(path: str | Path) -> dict:
    state = _read(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(path, "not a salis checkpoint (expected a dict with format='salis-checkpoint')")
    return state


def restore(model: nn.Module, path: str | Path) -> dict:
    """Load a salis checkpoint into a model of the same architecture."""
    state = load_checkpoint(path)
    missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
    if unexpected:
        raise InputError(path, f"checkpoint holds {len(unexpected)} tensors this model lacks, e.g. {unexpected[:3]}")
    if missing:
        # e.g. a checkpoint of a model without IoU heads: the new heads start fresh; say so.
        modules = sorted({".".join(k.split(".")[:2]) for k in missing})
        print(f"{path}: loaded; {len(missing)} tensors it lacks start from random init ({', '.join(modules)})")
    return state


def load_initial_weights(model: nn.Module, path: str | Path) -> str:
    """Load user weights: a salis checkpoint, a full Mask R-CNN state dict, or a ResNet backbone state dict."""
    state = _read(path)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        state = state["state_dict"]
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "expected a state dict (a mapping of names to tensors)")

    own = model.state_dict()
    body = model.backbone.body.state_dict()  # type: ignore[union-attr]
    if any(k in own for k in state):
        target, prefix = own, ""
    elif any(k in body for k in state):
        target, prefix = body, "backbone.body."
    else:
        raise InputError(path, "none of its tensor names match this model or its ResNet backbone")
    theirs = resnet_layout(k.removeprefix("backbone.body.") for k in state)
    mine = resnet_layout(body)
    if theirs and theirs != mine:  # shared names with other shapes would load a few stem tensors, silently
        raise InputError(path, f"holds {_resnet_name(theirs)} weights but model.backbone is {_resnet_name(mine)}: "
                               "set model.backbone to the file's")

    usable = {prefix + k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
    skipped = [k for k in state if k not in target or target[k].shape != state[k].shape]
    if not usable:
        raise InputError(path, "no tensor has a matching name and shape")
    model.load_state_dict(usable, strict=False)
    note = f"{path}: loaded {len(usable)} tensors into {'the backbone' if prefix else 'the model'}"
    if skipped:
        note += f"; skipped {len(skipped)} (e.g. {skipped[:3]})"
    return note


_RESNETS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50",
            ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152"}


def resnet_layout(names: Iterable[str]) -> tuple[tuple[int, ...], bool] | None:
    """(blocks in layer1..layer4, bottleneck blocks?) of a ResNet body's tensor names; None when the
    names hold no residual layer."""
    blocks = [0, 0, 0, 0]
    bottleneck = False
    for name in names:
        parts = name.split(".")
        if len(parts) > 2 and parts[0] in ("layer1", "layer2", "layer3", "layer4") and parts[1].isdigit():
            level = int(parts[0][-1]) - 1
            blocks[level] = max(blocks[level], int(parts[1]) + 1)
            bottleneck = bottleneck or parts[2] == "conv3"
    return (tuple(blocks), bottleneck) if any(blocks) else None


def _resnet_name(layout: tuple[tuple[int, ...], bool] | None) -> str:
    if layout is None:
        return "an unknown backbone"
    return _RESNETS.get(layout, f"a ResNet with {'-'.join(map(str, layout[0]))} {'bottleneck' if layout[1] else 'basic'} blocks")


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """(model, checkpoint state): the architecture stored in the checkpoint, with its weights."""
    state = load_checkpoint(path)
    model = build_model(parse_model_params(state["model_params"], str(path)), len(state["categories"]))
    restore(model, path)
    return model, state
