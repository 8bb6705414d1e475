"""The `salis` command line: inspect the active-learning state next to `dvc repro`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import typer

from salis.errors import SalisError
from salis.layout import Layout
from salis.params import load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _fail(err: Exception) -> None:
    typer.echo(f"salis: error: {err}", err=True)
    raise typer.Exit(2)


def _count(path: Path, column: str = "image_id") -> tuple[int, int] | None:
    """(distinct images, rows) of a parquet table, or None when it does not exist yet."""
    if not path.is_file():
        return None
    table = pd.read_parquet(path, columns=[column])
    return int(table[column].nunique()), len(table)


@app.command()
def status(params_file: Path = typer.Option(Path("params.yaml"), "--params", help="params file")) -> None:
    """Pool sizes, labels spent per cycle, test metrics so far, and what `dvc repro` does next."""
    try:
        params = load_params(params_file)
    except SalisError as err:
        _fail(err)
    layout = Layout()
    meta_path = layout.prepared / "meta.json"
    if not meta_path.is_file():
        typer.echo("no prepared dataset yet: `dvc repro` starts with the prepare stage")
        return
    meta = json.loads(meta_path.read_text())
    pool = meta["num_pool_images"]
    total_budget = params.select.initial + params.select.budget * params.num_cycles
    typer.echo(f"dataset: {meta['source']}, pool {pool} images, test {meta['num_test_images']} images "
               f"(never trained on, scored or selected)")
    typer.echo(f"sampler: {params.sampler}; budget: {params.select.initial} initial + "
               f"{params.num_cycles} cycles x {params.select.budget} = {total_budget} of {pool} pool images")
    typer.echo(f"{'cycle':>5} {'labeled':>8} {'pseudo img':>10} {'pseudo inst':>11} {'unlabeled':>9} {'mask AP50':>9}")
    next_step = None
    for k in sorted(c.k for c in params.cycles.values()):
        labeled = _count(layout.labeled(k))
        pseudo = _count(layout.pseudo(k))
        metrics_path = layout.metrics(k)
        ap50 = json.loads(metrics_path.read_text())["mask_AP50"] if metrics_path.is_file() else None
        if labeled is None:
            next_step = next_step or f"cycle {k}: waiting for cycle {k - 1}'s selection"
            typer.echo(f"{k:>5} {'-':>8} {'-':>10} {'-':>11} {'-':>9} {'-':>9}")
            continue
        if next_step is None and not layout.model(k).is_file():
            next_step = f"train cycle {k} on {labeled[0]} labeled + {pseudo[0] if pseudo else 0} pseudo-labeled images"
        elif next_step is None and not layout.labeled(k + 1).is_file():
            next_step = f"score the unlabeled pool with cycle {k}'s model, then select {params.select.budget} " \
                        f"images with '{params.sampler}'"
        typer.echo(
            f"{k:>5} {labeled[0]:>8} {pseudo[0] if pseudo else '-':>10} {pseudo[1] if pseudo else '-':>11} "
            f"{pool - labeled[0]:>9} {'-' if ap50 is None else f'{ap50:.3f}':>9}"
        )
    spent = _count(layout.labeled(params.num_cycles + 1)) or _count(layout.labeled(params.num_cycles))
    if spent:
        typer.echo(f"labels spent: {spent[0]} of {total_budget} images")
    typer.echo(f"next: {next_step or 'all cycles done; add cycles in params.yaml to go on'}")


@app.command()
def samplers() -> None:
    """List the acquisition functions `sampler:` in params.yaml accepts."""
    from salis.samplers import SAMPLERS

    width = max(len(name) for name in SAMPLERS)
    for name, cls in sorted(SAMPLERS.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        typer.echo(f"{name:<{width}}  {doc}")


@app.command()
def check(params_file: Path = typer.Option(Path("params.yaml"), "--params", help="params file")) -> None:
    """Validate params.yaml (types, ranges, sampler name) without running anything."""
    from salis.samplers import get_sampler

    try:
        params = load_params(params_file)
        get_sampler(params.sampler)
    except SalisError as err:
        _fail(err)
    typer.echo(f"{params_file}: ok ({params.num_cycles} cycles, sampler {params.sampler})")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
