"""The folders of src/salis are layers: no module imports from a layer above its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import imported_modules

SRC = Path(__file__).resolve().parents[1] / "src" / "salis"

# lowest first; a module may import its own layer and any lower one
LAYERS = {
    "errors": 0, "params": 0, "geometry": 0, "seeds": 0, "artifacts": 0,
    "data": 1, "model": 1,
    "engine": 2, "annotation": 2, "pretrain": 2,
    "acquisition": 3, "analysis": 3,
    "loop": 4,
    "pipeline": 5, "cli": 5,
}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "salis" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


def all_modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    unknown = [str(p.relative_to(SRC)) for p in all_modules() if p.parent == SRC and p.stem not in LAYERS | {"__init__": 0}
               or p.parent != SRC and p.relative_to(SRC).parts[0] not in LAYERS]
    assert not unknown, f"modules outside the layer map of tests/test_layers.py: {unknown}"


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_runs_upward(path):
    rel = path.relative_to(SRC)
    own = LAYERS.get(rel.parts[0] if len(rel.parts) > 1 else rel.stem)
    if own is None:  # salis/__init__.py
        return
    upward = sorted(m for m in imported_modules(path) if (layer_of(m) or 0) > own)
    assert not upward, f"{rel} (layer {own}) imports from higher layers: {upward}"


def test_test_files_share_helpers_through_support_not_each_other():
    tests = Path(__file__).parent
    crossed = {f.name: sorted(m for m in imported_modules(f) if m.split(".")[0].startswith("test_"))
               for f in sorted(tests.glob("*.py"))}
    assert {name: mods for name, mods in crossed.items() if mods} == {}
