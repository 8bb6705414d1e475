"""The `salis` command line: inspect the active-learning state next to `dvc repro`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer

from salis.errors import SalisError
from salis.artifacts.layout import Layout
from salis.params import Params, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
labels_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Human labels for request batches.")
app.add_typer(labels_app, name="labels")


@app.callback()
def _one_line_warnings() -> None:
    """Library warnings print as one line, without the Python source line behind them."""
    import warnings

    warnings.formatwarning = lambda message, *_args, **_kw: f"salis: warning: {message}\n"


def _say(text: str) -> None:
    """A line of prose, wrapped to the terminal (at most 100 columns), continuation indented."""
    import shutil
    import textwrap

    width = min(100, shutil.get_terminal_size((100, 24)).columns)
    typer.echo(textwrap.fill(text, width=width, subsequent_indent="  ", break_on_hyphens=False,
                             break_long_words=False))


def _fail(err: Exception) -> None:
    typer.echo(f"salis: error: {err}", err=True)
    raise typer.Exit(2)


@app.command()
def status(params_file: Path = typer.Option(Path("params.yaml"), "--params", help="params file")) -> None:
    """Per cycle: labeled, pseudo-labeled and unlabeled counts, hours, AP; the current model; what awaits labels."""
    from salis.analysis.status import loop_status, render_table

    try:
        params = load_params(params_file)
    except SalisError as err:
        _fail(err)
    layout = Layout()
    state = loop_status(params, layout)
    if state is None:
        typer.echo("no prepared dataset yet: `dvc repro` starts with the prepare stage")
        return
    _say(state.dataset)
    _say(state.plan)
    typer.echo("\n".join(render_table(state)))
    if state.current is not None:
        k, ap50 = state.current
        _say(f"current model: cycle {k}, mask AP50 {ap50:.3f} on the test split ({layout.metrics(k)})")
    for line in state.awaiting:
        _say(line)
    images, hours = state.labeled_now
    _say(f"labeled so far: {images} images, {hours:.2f} annotator hours; planned: {state.planned}")


@labels_app.command("import")
def labels_import(
    export: Path = typer.Argument(..., help="COCO export from CVAT or Label Studio, or Label Studio's JSON export"),
    cycle: int = typer.Option(..., "--cycle", help="the request batch this export answers (data/requests/cycle_K)"),
    label_type: str = typer.Option("mask", "--type", help="which of the batch's label types: mask, box, point or image"),
    replace: bool = typer.Option(False, "--replace", help="replace an earlier import (the old file is kept as a backup)"),
    partial: bool = typer.Option(False, "--partial", help="allow requested images left unlabeled; they go back to the pool"),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="an image exported without annotations holds no object"),
    dvc_add: bool = typer.Option(True, "--dvc-add/--no-dvc-add", help="track the labels file with `dvc add`"),
) -> None:
    """Validate an annotation export against its request batch and store it for the next cycle."""
    _track([_import_export(export, cycle, label_type, replace, partial, allow_empty)], dvc_add)


def _import_export(export: Path, cycle: int, label_type: str, replace: bool, partial: bool, allow_empty: bool) -> str:
    """Import one export of batch `cycle`; the labels path (exits with the error line on a refusal)."""
    from salis.annotation.importer import import_labels
    from salis.annotation.kinds import label_kind, label_kinds

    layout = Layout()
    try:
        kind = label_kind(label_type)
    except ValueError:
        _fail(SalisError(f"--type must be one of {', '.join(k.name for k in label_kinds())}, got {label_type!r}"))
    request = layout.requests(cycle) / f"request{kind.suffix}.json"
    if not request.is_file():
        asked = sorted(p.name for p in layout.requests(cycle).glob("request*.json")) if layout.requests(cycle).is_dir() else []
        hint = f" (this batch has {', '.join(asked)})" if asked else "; `dvc repro` writes it at the request stage"
        _fail(SalisError(f"{request}: no {label_type} request for cycle {cycle}{hint}"))
    try:
        summary = import_labels(export, request, layout.imported_labels(cycle, suffix=kind.suffix), replace, partial, allow_empty)
    except SalisError as err:
        _fail(err)
    returned = summary["partial_unlabeled"]
    what = "counted instances" if kind.image_level else "instances"
    typer.echo(
        f"cycle {cycle}: {summary['images_labeled']} images with {label_type} labels, {summary['instances']} {what} "
        f"-> {summary['labels_path']}"
        + (f"; {len(returned)} images go back to the pool" if returned else "")
        + ("; " + ", ".join(f"{n} {k}" for k, n in summary["outcomes"].items()) if summary["outcomes"] else "")
        + (f"; {summary['annotation_seconds']:.0f} s of annotation recorded" if summary["annotation_seconds"] else "")
        + (f"; previous labels kept in {summary['backup']}" if summary["backup"] else "")
    )
    return summary["labels_path"]


def _track(paths: list[str], dvc_add: bool) -> None:
    """`dvc add` the labels files this command imported."""
    if dvc_add and Path(".dvc").is_dir() and paths:
        done = subprocess.run(["dvc", "add", "-q", *paths], capture_output=True, text=True)
        if done.returncode != 0:
            typer.echo(f"`dvc add {' '.join(paths)}` failed: {done.stderr.strip()}", err=True)
            raise typer.Exit(1)
        typer.echo(f"tracked with DVC: commit {', '.join(p + '.dvc' for p in paths)}, then `dvc repro` goes on")
    else:
        typer.echo("now `dvc repro` goes on from this cycle")


def _label_studio(url: str | None, token: str | None):
    from salis.annotation.label_studio import LabelStudio

    try:
        return LabelStudio(url, token)
    except SalisError as err:
        _fail(err)


_URL_HELP = "Label Studio's address (default: $SALIS_LABEL_STUDIO_URL, else http://localhost:8080)"
_TOKEN_HELP = "its API token (default: $SALIS_LABEL_STUDIO_TOKEN); never written to a file"


@labels_app.command("push")
def labels_push(
    cycle: int = typer.Option(..., "--cycle", help="the request batch to send (data/requests/cycle_K)"),
    url: str = typer.Option(None, "--url", help=_URL_HELP),
    token: str = typer.Option(None, "--token", help=_TOKEN_HELP),
) -> None:
    """Create a Label Studio project per label type of request batch K, predictions as pre-annotations."""
    from salis.annotation.label_studio import push_batch

    layout = Layout()
    client = _label_studio(url, token)
    try:
        folder = _image_folder(layout.requests(cycle))
        for line in push_batch(client, Path("."), layout.requests(cycle), cycle, layout.label_studio_state, folder):
            typer.echo(line)
    except SalisError as err:
        _fail(err)
    typer.echo(f"label in Label Studio, then: salis labels pull --cycle {cycle}")


@labels_app.command("pull")
def labels_pull(
    cycle: int = typer.Option(..., "--cycle", help="the request batch to bring back"),
    replace: bool = typer.Option(False, "--replace", help="replace an earlier import (the old file is kept as a backup)"),
    partial: bool = typer.Option(False, "--partial", help="allow requested images left unlabeled; they go back to the pool"),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="an image labeled with no region holds no object"),
    dvc_add: bool = typer.Option(True, "--dvc-add/--no-dvc-add", help="track the labels files with `dvc add`"),
    url: str = typer.Option(None, "--url", help=_URL_HELP),
    token: str = typer.Option(None, "--token", help=_TOKEN_HELP),
) -> None:
    """Export batch K's Label Studio projects and import them as `salis labels import` does."""
    from salis.annotation.label_studio import pull_batch

    layout = Layout()
    client = _label_studio(url, token)
    try:
        exports = pull_batch(client, Path("."), layout.requests(cycle), cycle, layout.label_studio_state,
                             layout.label_studio_state / "exports")
    except SalisError as err:
        _fail(err)
    _track([_import_export(path, cycle, label_type, replace, partial, allow_empty)
            for label_type, path in exports.items()], dvc_add)


def _image_folder(request_dir: Path) -> Path:
    """The image folder of a request batch (info.salis.image_root of its request file)."""
    from salis.annotation.label_studio import batch_types
    from salis.annotation.kinds import label_kind

    types = batch_types(request_dir)
    if not types:
        raise SalisError(f"{request_dir}: no request batch here; `dvc repro` writes it at the request stage")
    info = json.loads((request_dir / f"request{label_kind(types[0]).suffix}.json").read_text())["info"]["salis"]
    root = info["image_root"]
    if isinstance(root, list):
        raise SalisError(f"batch images live under {len(root)} folders ({', '.join(root)}); Label Studio push needs one")
    return Path(root)


@app.command()
def baseline() -> None:
    """Commit the finished run in the workspace (dvc.lock, params, metrics) as the baseline.

    `dvc metrics diff`, `dvc exp diff`, `salis savings` and every `dvc exp run` compare against
    or branch from the last commit: without this step they have nothing to compare with.
    """
    from salis.analysis.experiments import record_baseline

    try:
        message = record_baseline(Path("."))
    except SalisError as err:
        _fail(err)
    typer.echo(f"committed: {message}")
    typer.echo("next: dvc exp run -S sampler=entropy, then dvc exp diff / salis runs / salis savings")


@app.command()
def runs(metric: str = typer.Option("mask_AP50", help="the learning-curve metric to show")) -> None:
    """Every run side by side (experiments, the baseline commit, the workspace): sampler, seed,
    cycles, labeled images, annotator hours, final and best metric. A readable `dvc exp show`."""
    from salis.analysis.experiments import collect_runs, run_rows

    try:
        table = run_rows(collect_runs(Path(".")), metric)
    except SalisError as err:
        _fail(err)
    if table.empty:
        typer.echo("no run with a learning curve yet: `dvc repro` (then `salis baseline`) or `dvc exp run`")
        return
    typer.echo(f"{'run':<28} {'sampler':<13} {'seed':>4} {'cycles':>6} {'labeled':>7} {'hours':>7} "
               f"{'final ' + metric:>16} {'best':>6}")
    for row in table.sort_values(["sampler", "seed", "run"]).itertuples(index=False):
        values = row._asdict()
        typer.echo(f"{values['run'][:28]:<28} {values['sampler'][:13]:<13} {values['seed']:>4} {values['cycles']:>6} "
                   f"{values['labeled_images']:>7} {values['annotation_hours']:>7.2f} "
                   f"{values[f'final_{metric}']:>16.3f} {values[f'best_{metric}']:>6.3f}")


@app.command()
def savings(metric: str = typer.Option("mask_AP50", help="the metric whose random-sampler final value is the target")) -> None:
    """Labels and annotation hours each experiment needed to reach the random sampler's final AP."""
    from salis.analysis.savings import savings_table

    try:
        reference, table = savings_table(Path("."), metric)
    except SalisError as err:
        _fail(err)
    if reference is None:
        typer.echo(
            "no run with sampler=random to compare with. After the random demo run, `salis baseline` "
            "records it (a git commit); if it is gone from the workspace, `dvc exp run -S sampler=random` "
            "brings it back (from DVC's run cache when nothing changed), then `salis baseline`"
        )
        return
    target = next(iter(table.values()))["target"]
    typer.echo(f"target: {metric} {target:.3f}, the final value of '{reference}' (random)")
    typer.echo(f"{'experiment':<24} {'sampler':<13} {'images':>8} {'hours':>8} {'images saved':>13} {'hours saved':>12}")

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for name, row in sorted(table.items(), key=lambda kv: (kv[1]["labeled_images"] is None, kv[1]["labeled_images"] or 0)):
        typer.echo(
            f"{name:<24} {row['sampler']:<13} {fmt(row['labeled_images'], '.1f'):>8} {fmt(row['annotation_hours'], '.2f'):>8} "
            f"{fmt(row['labels_saved_fraction'], '.0%'):>13} {fmt(row['hours_saved_fraction'], '.0%'):>12}"
            + ("" if row["reached"] else "   (never reached)")
        )


def _grid_params(params_file: Path, overrides: list[str]) -> Params:
    """params.yaml with the -S overrides applied, validated as a run would validate it."""
    import yaml

    from salis.params import parse_params

    raw = yaml.safe_load(params_file.read_text()) if params_file.is_file() else None
    if not isinstance(raw, dict):
        raise SalisError(f"{params_file}: no params to run the grid with")
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise SalisError(f"-S {override!r}: expected KEY=VALUE, e.g. -S train.epochs=20")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return parse_params(raw, f"{params_file} with {' '.join(overrides) or 'no overrides'}")


def _pool_size(params: Params) -> int | None:
    meta = Layout().prepared / "meta.json"
    if meta.is_file():
        return int(json.loads(meta.read_text())["num_pool_images"])
    return params.data.synthetic.pool_images if params.data.source == "synthetic" else None


@app.command()
def compare(
    samplers_: str = typer.Option("", "--samplers", help="samplers of the grid, comma-separated: random,tsp,entropy"),
    seeds_: str = typer.Option("", "--seeds", help="seeds of the grid, comma-separated: 0,1,2 (data.seed keeps the test split fixed)"),
    set_: list[str] = typer.Option([], "-S", "--set", help="KEY=VALUE passed to every run as `dvc exp run -S`"),
    jobs: int = typer.Option(1, "--jobs", "-j", help="1: runs one after another; N > 1: DVC queue with N workers"),
    no_run: bool = typer.Option(False, "--no-run", help="only write the report from the runs already present"),
    match: list[str] = typer.Option([], "--match", help="KEY=VALUE: report only runs whose params match"),
    metric: str = typer.Option("mask_AP50", help="the learning-curve metric to compare"),
    out: Path = typer.Option(Path("metrics/compare"), help="where the report goes"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="params file the grid starts from"),
    include: list[Path] = typer.Option([], "--include", help="runs.json of an earlier report (another machine or clone) to report with the runs present"),
    by: str = typer.Option("", "--by", help="params that tell arms apart besides the sampler, comma-separated: annotation.policy,select.budget_hours"),
    reference: str = typer.Option("random", "--reference", help="the arm the others are paired with: a sampler, or KEY=VALUE,... its runs match"),
) -> None:
    """Compare samplers over seeds: run a grid as DVC experiments, then report with 95% CIs.

    Grid: every sampler x seed (with the -S overrides) runs as a DVC experiment named cmp-SAMPLER-sSEED; those already present are not rerun, so an interrupted grid resumes. A sampler that needs more gets it unless -S sets it (mc_dropout: score.mc_passes=10; learning_loss: model.learning_loss=true). Commit first (`salis baseline` after a `dvc repro`, or git add -A && git commit): experiments branch from HEAD. Example: salis compare --samplers random,tsp,entropy --seeds 0,1,2

    Report, from every run present (workspace, HEAD, refs/exps; nothing rerun), into --out: report.md (per sampler: final metric, normalized area under the learning curve, paired difference to random, labels and hours to reach random's final value of the same seed; per cycle: metric and hours as mean ± 95% Student-t interval, the paired difference and its verdict: better or worse than random, or within noise), summary.csv, cycles.csv, runs.csv, runs.json (every run's params and curve: --include it in a later report, e.g. to merge grids run on several machines), curves.png (bands) and a dvc.yaml that dvc plots show renders. Runs that differ in anything but sampler, seed and cycle count are refused (use --match), unless --by names the params that tell arms apart: e.g. --by annotation.policy,select.budget_hours --reference annotation.policy=mask,select.budget_hours=0.0 compares label types at equal hours against full-mask labeling.
    """
    try:
        samplers = [s for s in samplers_.split(",") if s]
        seeds = [int(s) for s in seeds_.split(",") if s.strip()]
    except ValueError:
        _fail(SalisError(f"--seeds must be comma-separated integers, got {seeds_!r}"))
    from salis.acquisition.samplers import SAMPLERS
    from salis.analysis.compare import compare as compare_runs
    from salis.analysis.compare import reference_arm, sampler_table, select_runs, write_report
    from salis.analysis.experiments import collect_runs, load_runs, run_grid, save_runs

    try:
        if samplers or seeds:
            unknown = [s for s in samplers if s not in SAMPLERS]
            if unknown:
                raise SalisError(f"unknown sampler(s) {', '.join(unknown)}; valid: {', '.join(sorted(SAMPLERS))}")
            if not samplers or not seeds:
                raise SalisError("a grid needs both --samplers and --seeds (or --no-run for the report alone)")
            if len(set(seeds)) != len(seeds) or min(seeds) < 0:
                raise SalisError(f"--seeds must be distinct non-negative integers, got {seeds}")
            params = _grid_params(params_file, set_)
            pool, needed = _pool_size(params), params.select.initial + params.select.budget * params.num_cycles
            if pool is not None and needed > pool:
                raise SalisError(f"each run labels {needed} images (select.initial + cycles x select.budget) "
                                 f"but the pool holds {pool}; lower select.budget or the number of cycles")
            if not no_run:
                if subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True).returncode:
                    raise SalisError("no git commit to branch experiments from: `git add -A && git commit -m baseline`")
                run_grid(samplers, seeds, set_, jobs, Path("."), typer.echo)
        present = collect_runs(Path(".")) + [run for path in include for run in load_runs(path)]
        by_keys = [k for k in by.split(",") if k]
        selected, notes = select_runs(present, dict(m.split("=", 1) for m in match), by_keys)
        result = compare_runs(selected, metric, reference_arm(selected, reference, by_keys))
        result.notes[:0] = notes
        write_report(result, out)
        save_runs(sorted(selected, key=lambda r: (r.sampler, r.seed)), out / "runs.json")
    except SalisError as err:
        _fail(err)
    typer.echo("\n".join(sampler_table(result)))
    typer.echo(f"report: {out / 'report.md'} (per cycle, notes), {out / 'curves.png'}; `dvc plots show` draws the bands")


@app.command()
def cost(params_file: Path = typer.Option(Path("params.yaml"), "--params", help="params file"),
         min_images: int = typer.Option(None, "--min-images", help="timed images a label type needs before its terms are fitted [default: cost.measured_min_images]")) -> None:
    """Annotators' measured times (Label Studio's lead_time) against the cost model, per label type."""
    import dataclasses

    from salis.analysis.measured_cost import measured_costs, render, store_rows
    from salis.annotation.cost import CostModel
    from salis.loop.labels import instance_counts, read_store

    try:
        params = load_params(params_file)
        layout = Layout()
        done = [k for k in sorted(c.k for c in params.cycles.values()) if layout.annotations(k).is_file()]
        if not done:
            raise SalisError("no labels yet: `dvc repro` writes each cycle's label store at its annotate stage")
        store = read_store(layout.annotations(done[-1]))
    except SalisError as err:
        _fail(err)
    categories = len(store["categories"])
    rows = store_rows(store, instance_counts(store))
    model = CostModel.from_params(dataclasses.replace(params.cost, source="model"))  # the literature's terms
    costs = measured_costs(rows, lambda r: model.image_seconds(r["instances"], categories, r["label_type"], r["fields"]),
                           params.cost.measured_min_images if min_images is None else min_images)
    _say(f"label store of cycle {done[-1]} ({layout.annotations(done[-1])}): {len(rows)} labeled images, "
         f"{sum(c.timed for c in costs)} with a measured time")
    typer.echo("\n".join(render(costs)))
    if not any(c.timed for c in costs):
        _say("no measured times: they come with Label Studio exports (lead_time); CVAT and COCO exports carry none")


@app.command()
def samplers() -> None:
    """List the acquisition functions `sampler:` in params.yaml accepts."""
    from salis.acquisition.samplers import SAMPLERS

    width = max(len(name) for name in SAMPLERS)
    for name, cls in sorted(SAMPLERS.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        typer.echo(f"{name:<{width}}  {doc}")


@app.command()
def check(params_file: Path = typer.Option(Path("params.yaml"), "--params", help="params file")) -> None:
    """Validate params.yaml (types, ranges, sampler name) without running anything."""
    from salis.acquisition.samplers import get_sampler

    try:
        params = load_params(params_file)
        get_sampler(params.sampler)
    except SalisError as err:
        _fail(err)
    typer.echo(f"{params_file}: ok ({params.num_cycles} cycles, sampler {params.sampler})")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
