"""Checkpoints as DVC sees them: the same weights are the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from salis.model.build import seeded_model
from salis.model.checkpoint import load_checkpoint, save_checkpoint
from support import SMALL

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def test_the_same_weights_save_to_the_same_bytes_whatever_the_file_name(tmp_path):
    # torch.save names its zip records after the target file; saved through a temp file of a
    # random name, each save of cycle 1's unchanged model differed and DVC reran what followed
    model = seeded_model(SMALL, 2, seed=0)
    first, second = tmp_path / "a" / "model.pt", tmp_path / "other.pt"
    save_checkpoint(first, model, SMALL, CATEGORIES, {"cycle": 1})
    save_checkpoint(second, model, SMALL, CATEGORIES, {"cycle": 1})
    assert first.read_bytes() == second.read_bytes()
    state = load_checkpoint(second)
    assert state["extra"] == {"cycle": 1} and torch.equal(
        state["state_dict"]["roi_heads.box_predictor.cls_score.weight"], model.roi_heads.box_predictor.cls_score.weight)
    changed = seeded_model(SMALL, 2, seed=1)
    save_checkpoint(second, changed, SMALL, CATEGORIES, {"cycle": 1})
    assert first.read_bytes() != second.read_bytes()


class _Payload:
    """Pickles into a call of os.system: what a malicious checkpoint carries."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/salis_pwned",))


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04" + b"\x00" * 60, "pickle"])
def test_an_unloadable_weights_file_is_one_line_without_torchs_advice(tmp_path, content):
    from salis.errors import InputError
    from salis.model.checkpoint import load_checkpoint

    path = tmp_path / "model.pt"
    if content == "pickle":
        torch.save({"format": "salis-checkpoint", "x": _Payload()}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a loadable salis/torch weights file (")
    assert "\n" not in message and "weights_only" not in message and len(message) < 300
    assert not Path("/tmp/salis_pwned").exists()


def test_backbone_weights_load_and_weights_of_another_backbone_are_refused_in_one_line(tmp_path):
    import dataclasses

    import torchvision

    from salis.errors import InputError
    from salis.model.checkpoint import load_initial_weights, resnet_layout

    model = seeded_model(SMALL, 2, seed=0)  # resnet18
    own = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), own)  # torchvision's layout, as users bring it
    note = load_initial_weights(model, own)
    assert note.startswith(f"{own}: loaded ") and "into the backbone" in note
    for name, layout in [("resnet34", ((3, 4, 6, 3), False)), ("resnet50", ((3, 4, 6, 3), True))]:
        other = tmp_path / f"{name}.pt"
        state = getattr(torchvision.models, name)().state_dict()
        assert resnet_layout(state) == layout
        torch.save(state, other)
        with pytest.raises(InputError) as caught:
            load_initial_weights(model, other)
        assert str(caught.value) == (f"{other}: holds {name} weights but model.backbone is resnet18: "
                                     "set model.backbone to the file's")
    # a whole salis model of another backbone (names under backbone.body.) is refused alike
    bigger = seeded_model(dataclasses.replace(SMALL, backbone="resnet34"), 2, seed=0)
    whole = tmp_path / "whole34.pt"
    torch.save(bigger.state_dict(), whole)
    with pytest.raises(InputError, match="holds resnet34 weights but model.backbone is resnet18"):
        load_initial_weights(model, whole)
