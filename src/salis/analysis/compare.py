"""Which strategy saves labels, beyond the noise: learning curves of several samplers over
several seeds, with 95% confidence intervals, paired against random seed by seed.

For each sampler and cycle: the mean and a Student-t 95% interval of mask AP50 and AP over the
seeds, of the annotation hours, and of the paired difference to random (same seed: the same
initial set, weights and test split, so the pairing removes what the seeds share). Per run: the
normalized area under the learning curve (mean AP50 over the labeled-images axis) and the
labels and hours needed to reach random's final AP50 of the same seed. A difference whose
interval holds 0 is reported as "within noise".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from salis.analysis.curves import crossing
from salis.analysis.experiments import BASELINE, WORKSPACE, Run, flatten
from salis.artifacts.atomic import atomic_path, write_text
from salis.errors import SalisError

REFERENCE = "random"
VARYING = ("sampler", "seed")  # what a comparison may vary; everything else must agree
IGNORED_PREFIXES = ("cycles.",)  # runs may stop at different cycles


@dataclasses.dataclass(frozen=True)
class ArmRun(Run):
    """A run labelled by its arm: the sampler plus the values of the `--by` params (e.g. the
    annotation policy and the hour budget), so arms other than samplers compare the same way."""

    label: str = ""

    @property
    def arm(self) -> str:
        return self.label


def arm_label(run: Run, by: Sequence[str]) -> str:
    label = str(run.params.get("sampler", "random"))
    return " ".join([label, *(f"{k.rsplit('.', 1)[-1]}={run.params.get(k)}" for k in by)])


def with_arms(runs: Sequence[Run], by: Sequence[str]) -> list[Run]:
    """The runs labelled by arm (unchanged when `by` is empty: the arm is the sampler)."""
    if not by:
        return list(runs)
    return [ArmRun(r.name, r.params, r.curve, label=arm_label(r, by)) for r in runs]


def param_matches(value: object, text: str) -> bool:
    """Whether a run's param equals a KEY=VALUE's text as written on the command line: the text as
    YAML (params.yaml's own spelling: `false`, `300`, `0.5`) or, failing that, the value's str."""
    if str(value) == text:
        return True
    try:
        wanted = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    if isinstance(wanted, bool) or isinstance(value, bool):
        return isinstance(wanted, bool) and isinstance(value, bool) and wanted == value
    return isinstance(wanted, (int, float)) and isinstance(value, (int, float)) and float(wanted) == float(value)


def reference_arm(runs: Sequence[Run], spec: str, by: Sequence[str]) -> str:
    """The arm `spec` names: an arm label, or KEY=VALUE,... that its runs' params match."""
    if "=" not in spec:
        return spec
    wanted = dict(part.split("=", 1) for part in spec.split(","))
    arms = sorted({r.arm for r in runs if all(param_matches(r.params.get(k), v) for k, v in wanted.items())})
    if len(arms) != 1:
        raise SalisError(f"--reference {spec} matches {len(arms)} arms ({', '.join(arms) or 'none'}); it must match one")
    return arms[0]


def t_interval(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, half width of the 95% Student-t interval, n); the width is NaN below 2 values."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan, 0
    if len(x) == 1:
        return float(x[0]), math.nan, 1
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return float(x.mean()), half, len(x)


def normalized_aulc(curve: pd.DataFrame, metric: str) -> float:
    """Area under metric-vs-labeled-images over the labeled range: the curve's mean height."""
    x, y = curve["labeled_images"].to_numpy(float), curve[metric].to_numpy(float)
    if len(x) == 1 or x[-1] == x[0]:
        return float(y[-1])
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum() / (x[-1] - x[0]))  # trapezoids


@dataclasses.dataclass
class Comparison:
    metric: str
    per_cycle: pd.DataFrame  # sampler x cycle
    per_sampler: pd.DataFrame  # one row per sampler
    per_run: pd.DataFrame  # one row per run and cycle
    notes: list[str]
    reference: str = REFERENCE


@functools.cache
def _current_defaults() -> dict[str, object]:
    """Every param the code knows, at its default, flattened as runs record them (lists, not tuples)."""
    from salis.params import Params

    defaults = flatten(json.loads(json.dumps(dataclasses.asdict(Params()))))
    return {k: v for k, v in defaults.items() if not k.startswith(IGNORED_PREFIXES)}


# Params that change nothing while a switch is off: a run with pretraining disabled is the same
# run whatever pretrain.vflip says, so they read as their defaults there (and old runs, recorded
# before the group existed, compare with new ones).
class Inert(NamedTuple):
    keys: tuple[str, ...]  # keys or prefixes
    switches: tuple[str, ...]  # the params the test reads (never inert themselves)
    is_on: Callable[[dict[str, object]], bool]


INERT_UNLESS: tuple[Inert, ...] = (
    Inert(("pretrain.",), ("pretrain.enabled",), lambda p: p.get("pretrain.enabled") is True),
    Inert(("pseudo.ema_decay", "pseudo.strong_augment"), ("pseudo.mode",), lambda p: p.get("pseudo.mode") == "teacher"),
    Inert(("pseudo.background_score",), ("pseudo.background",), lambda p: p.get("pseudo.background") == "confident"),
    # BoxInst's weights act on box-labeled images only
    Inert(("train.box_",), ("select.initial_label", "annotation.policy", "annotation.cheap"),
          lambda p: p.get("select.initial_label") == "box" or p.get("annotation.policy") == "box"
          or (p.get("annotation.policy") == "mixed" and p.get("annotation.cheap") == "box")),
)

# Params added with a default other than what the code before them did: a run recorded before
# the key existed ran with this value, not with today's default.
BEFORE_IT_EXISTED: dict[str, object] = {
    "train.box_pairwise_warmup": 0.0,  # the pairwise term at full weight from the first step
}


def _inert(params: dict[str, object]) -> set[str]:
    """The params whose switch is off in these params (INERT_UNLESS)."""
    return {k for rule in INERT_UNLESS if not rule.is_on(params)
            for k in _current_defaults() if k.startswith(rule.keys) and k not in rule.switches}


def with_current_params(run: Run) -> Run:
    """The run's params as the current code reads them. A key the run lacks was added after it
    ran, and its default is what that code did (a new param defaults to the old behaviour, or
    BEFORE_IT_EXISTED says what the old code did), so a run recorded before `annotation.policy`
    existed is a `mask` run; a key the code no longer
    knows (renamed: params.py's MOVED_KEYS) is dropped, since it cannot tell runs apart today;
    a param its switch leaves inert (INERT_UNLESS) reads as its default."""
    defaults = _current_defaults()
    recorded = {k: v for k, v in run.params.items() if k in defaults or k in VARYING}
    params = {**defaults, **{k: v for k, v in BEFORE_IT_EXISTED.items() if k not in recorded}, **recorded}
    params.update({k: defaults[k] for k in _inert(params)})
    if params == run.params:
        return run
    return dataclasses.replace(run, params=params)


def select_runs(
    runs: list[Run], match: dict[str, str] | None = None, by: Sequence[str] = ()
) -> tuple[list[Run], list[str]]:
    """The runs of one comparison: filtered by `match`, one per (arm, seed), all on the same
    configuration. Refuses runs that differ in anything but sampler, seed, the `by` params and
    cycle count. Params are read as the current code reads them (with_current_params)."""
    notes = []
    runs = [with_current_params(r) for r in runs]
    if match:
        runs = [r for r in runs if all(param_matches(r.params.get(k), v) for k, v in match.items())]
    runs = with_arms(runs, by)
    chosen: dict[tuple[str, int], Run] = {}
    for run in runs:  # experiments come first, so they win over HEAD and the workspace
        key = (run.arm, run.seed)
        if key in chosen:
            if run.name not in (BASELINE, WORKSPACE):
                notes.append(f"two experiments ran {run.arm} seed {run.seed}: kept {chosen[key].name}, "
                             f"left out {run.name}")
            continue
        chosen[key] = run
    kept = list(chosen.values())
    _check_same_configuration(kept, by)
    return kept, notes


def _own_requirements(sampler: str) -> set[str]:
    """Params this sampler needs set (MC passes, the loss-prediction module): on its own runs they
    may differ from the others'; on any other sampler's run they must not (a run of entropy that
    trained a loss-prediction module is not the entropy the others compare with)."""
    from salis.acquisition.samplers import SAMPLERS

    cls = SAMPLERS.get(sampler)
    return {r.split("=", 1)[0] for r in cls.requires} if cls is not None else set()


def _configuration(run: Run, skip: set[str]) -> dict[str, object]:
    return {k: v for k, v in run.params.items() if k not in skip and not k.startswith(IGNORED_PREFIXES)}


def _check_same_configuration(runs: list[Run], by: Sequence[str] = ()) -> None:
    """Every pair of runs agrees on every param but sampler, seed, cycles, the `by` params and the
    pair's own sampler requirements."""
    for i, first in enumerate(runs):
        for run in runs[i + 1:]:
            samplers = (str(first.params.get("sampler", "random")), str(run.params.get("sampler", "random")))
            skip = set(VARYING) | set(by) | _own_requirements(samplers[0]) | _own_requirements(samplers[1])
            skip |= _inert(first.params) | _inert(run.params)  # a teacher's EMA decay against a cycle run's
            base, other = _configuration(first, skip), _configuration(run, skip)
            differ = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
            if differ:
                what = "datasets" if any(k.startswith("data.") for k in differ) else "settings"
                shown = ", ".join(f"{k} ({base.get(k)!r} in {first.name}, {other.get(k)!r} in {run.name})"
                                  for k in differ[:3])
                raise SalisError(
                    f"the runs use different {what}: {shown}{' ...' if len(differ) > 3 else ''}; compare runs of "
                    "one configuration (`salis compare --match KEY=VALUE` keeps the runs whose params match)"
                )


def compare(runs: list[Run], metric: str = "mask_AP50", reference: str = REFERENCE) -> Comparison:
    """runs: from select_runs (labelled by arm); reference: the arm every other is paired with."""
    if not runs:
        raise SalisError("no runs with a learning curve (metrics/curve.csv): run `salis compare --samplers ...` first")
    if any(metric not in r.curve for r in runs):
        raise SalisError(f"metric {metric!r} is not in every run's metrics/curve.csv")
    notes = _missing_notes(runs)
    per_run = pd.concat(
        [r.curve.assign(run=r.name, sampler=r.arm, seed=r.seed) for r in runs], ignore_index=True
    )
    refs = {r.seed: r for r in runs if r.arm == reference}
    if not refs:
        notes.append(f"no {reference} run: paired differences and labels-to-target need one per seed")
    per_cycle = _per_cycle(per_run, refs, metric, reference)
    per_sampler = _per_sampler(runs, refs, metric, reference)
    return Comparison(metric, per_cycle, per_sampler, per_run, notes, reference)


def _missing_notes(runs: list[Run]) -> list[str]:
    samplers = sorted({r.arm for r in runs})
    seeds = sorted({r.seed for r in runs})
    have = {(r.arm, r.seed) for r in runs}
    notes = [f"missing: {s} seed {seed}" for s in samplers for seed in seeds if (s, seed) not in have]
    cycles = {r.name: int(r.curve["cycle"].max()) for r in runs}
    if len(set(cycles.values())) > 1:
        notes.append("runs end at different cycles: " + ", ".join(f"{n} at {c}" for n, c in sorted(cycles.items())))
    return notes


def _per_cycle(per_run: pd.DataFrame, refs: dict[int, Run], metric: str, reference: str = REFERENCE) -> pd.DataFrame:
    rows = []
    for (sampler, cycle), group in per_run.groupby(["sampler", "cycle"], sort=True):
        row: dict[str, object] = {"sampler": sampler, "cycle": int(cycle), "runs": len(group),
                                  "labeled_images": float(group["labeled_images"].mean())}
        for column in (metric, "mask_AP", "annotation_hours"):
            if column in group:
                mean, half, _ = t_interval(group[column].tolist())
                row[f"{column}_mean"], row[f"{column}_ci95"] = mean, half
        diffs = []
        for _, r in group.iterrows():
            ref = refs.get(int(r["seed"]))
            match = ref.curve[ref.curve["cycle"] == cycle] if ref is not None else None
            if match is not None and len(match):
                diffs.append(float(r[metric]) - float(match[metric].iloc[0]))
        mean, half, n = t_interval(diffs)
        row.update({f"{metric}_diff_mean": mean, f"{metric}_diff_ci95": half, "pairs": n,
                    "verdict": verdict(mean, half, n, reference)})
        at_hours = [float(r[metric]) - at_equal_hours(refs[int(r["seed"])], float(r["annotation_hours"]), metric)
                    for _, r in group.iterrows() if int(r["seed"]) in refs and "annotation_hours" in r]
        mean, half, n = t_interval([d for d in at_hours if not math.isnan(d)])
        row.update({f"{metric}_hours_diff_mean": mean, f"{metric}_hours_diff_ci95": half, "hours_pairs": n,
                    "hours_verdict": verdict(mean, half, n, reference)})
        if sampler == reference:  # paired with itself: a zero difference, not a finding
            row["verdict"] = row["hours_verdict"] = "reference"
        rows.append(row)
    return pd.DataFrame(rows)


def at_equal_hours(ref: Run, hours: float, metric: str) -> float:
    """The reference run's metric at `hours` of annotation, interpolated linearly between its
    cycles; NaN outside the hours it spans (no extrapolation). Arms that buy labels of other
    costs (box, point, mixed) are compared with full masks this way, at the hours they spent."""
    if "annotation_hours" not in ref.curve or math.isnan(hours):
        return math.nan
    curve = ref.curve.sort_values("annotation_hours")
    spent, values = curve["annotation_hours"].to_numpy(float), curve[metric].to_numpy(float)
    if not len(spent) or hours < spent[0] - 1e-9 or hours > spent[-1] + 1e-9:
        return math.nan
    return float(np.interp(hours, spent, values))


def verdict(mean: float, half: float, n: int, reference: str = REFERENCE) -> str:
    if n == 0:
        return "no pair"
    if n < 2 or math.isnan(half):
        return "one seed: no interval"
    if mean - half > 0:
        return f"better than {reference}"
    if mean + half < 0:
        return f"worse than {reference}"
    return "within noise"


def _per_sampler(runs: list[Run], refs: dict[int, Run], metric: str, reference: str = REFERENCE) -> pd.DataFrame:
    rows = []
    for sampler in sorted({r.arm for r in runs}):
        mine = sorted((r for r in runs if r.arm == sampler), key=lambda r: r.seed)
        finals = [float(r.curve[metric].iloc[-1]) for r in mine]
        aulcs = [normalized_aulc(r.curve, metric) for r in mine]
        aulc_diffs, labels, hours, saved, reached, final_at_hours, hours_fraction = [], [], [], [], 0, [], []
        for run in mine:
            ref = refs.get(run.seed)
            if ref is None:
                continue
            if "annotation_hours" in run.curve:
                last = run.curve.iloc[-1]
                gap = float(last[metric]) - at_equal_hours(ref, float(last["annotation_hours"]), metric)
                final_at_hours += [] if math.isnan(gap) else [gap]
            common = sorted(set(run.curve["cycle"]) & set(ref.curve["cycle"]))
            a, b = (c[c["cycle"].isin(common)] for c in (run.curve, ref.curve))
            aulc_diffs.append(normalized_aulc(a, metric) - normalized_aulc(b, metric))
            target = float(ref.curve[metric].iloc[-1])
            x, h = crossing(run.curve.to_dict("records"), metric, target)
            if not math.isnan(x):
                reached += 1
                labels.append(x)
                hours.append(h)
                saved.append(1.0 - x / float(ref.curve["labeled_images"].iloc[-1]))
                if "annotation_hours" in ref.curve and float(ref.curve["annotation_hours"].iloc[-1]) > 0:
                    # per seed: the share of the reference's hours this run needed for its final
                    hours_fraction.append(h / float(ref.curve["annotation_hours"].iloc[-1]))
        row: dict[str, object] = {"sampler": sampler, "runs": len(mine), "seeds": " ".join(str(r.seed) for r in mine)}
        for name, values in ((f"final_{metric}", finals), ("aulc", aulcs), ("aulc_diff", aulc_diffs),
                             ("labels_to_target", labels), ("hours_to_target", hours), ("labels_saved", saved),
                             ("hours_fraction", hours_fraction),
                             (f"final_{metric}_hours_diff", final_at_hours)):
            mean, half, _ = t_interval(values)
            row[f"{name}_mean"], row[f"{name}_ci95"] = mean, half
        row["aulc_verdict"] = verdict(row["aulc_diff_mean"], row["aulc_diff_ci95"], len(aulc_diffs), reference)
        row["final_hours_verdict"] = verdict(row[f"final_{metric}_hours_diff_mean"],
                                             row[f"final_{metric}_hours_diff_ci95"], len(final_at_hours), reference)
        if sampler == reference:
            row["aulc_verdict"] = row["final_hours_verdict"] = "reference"
        row["reached_target"] = f"{reached}/{len(aulc_diffs)}"
        rows.append(row)
    return pd.DataFrame(rows)


# --- the report -------------------------------------------------------------------------

def _pm(mean: float, half: float, digits: int = 3) -> str:
    if mean is None or math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(half) else f" ± {half:.{digits}f}")


def _hours(row: dict) -> str:
    """Hours to target, then the share of the reference's hours they are (paired by seed)."""
    hours = _pm(row["hours_to_target_mean"], row["hours_to_target_ci95"], 2)
    fraction = row.get("hours_fraction_mean")
    if hours == "-" or fraction is None or math.isnan(fraction):
        return hours
    return f"{hours} ({_pm(fraction, row['hours_fraction_ci95'], 2)}x)"


def sampler_table(comparison: Comparison) -> list[str]:
    """The per-sampler table of the report (what `salis compare` prints), as markdown lines."""
    m, ref = comparison.metric, comparison.reference
    lines = [f"| sampler | runs | final {m} | AULC | AULC − {ref} | verdict | labels to target | "
             f"hours to target | reached | final − {ref} at equal hours |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in comparison.per_sampler.to_dict("records"):
        lines.append(
            f"| {r['sampler']} | {r['runs']} | {_pm(r[f'final_{m}_mean'], r[f'final_{m}_ci95'])} | "
            f"{_pm(r['aulc_mean'], r['aulc_ci95'])} | {_pm(r['aulc_diff_mean'], r['aulc_diff_ci95'])} | "
            f"{r['aulc_verdict']} | {_pm(r['labels_to_target_mean'], r['labels_to_target_ci95'], 1)} | "
            f"{_hours(r)} | {r['reached_target']} | "
            f"{_pm(r[f'final_{m}_hours_diff_mean'], r[f'final_{m}_hours_diff_ci95'])} ({r['final_hours_verdict']}) |"
        )
    return lines


def markdown(comparison: Comparison) -> str:
    m, ref = comparison.metric, comparison.reference
    lines = [f"# Sampler comparison: {m}", "",
             f"Mean ± half width of the 95% Student-t interval over seeds; differences to {ref} are "
             f"paired by seed. Labels / hours to target: to reach the same seed's {ref} final "
             f"{m} (interpolated between cycles; only the seeds that reach it count); beside the hours, "
             f"their share of that seed's {ref} final hours (x). At equal hours: "
             f"minus the same seed's {ref} at the hours this run had spent (interpolated, within the "
             f"hours {ref} spans).", "", *sampler_table(comparison)]
    lines += ["", f"| sampler | cycle | labeled | hours | {m} | mask AP | {m} − {ref} | verdict | "
              f"− {ref} at equal hours | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in comparison.per_cycle.to_dict("records"):
        lines.append(
            f"| {r['sampler']} | {r['cycle']} | {r['labeled_images']:.0f} | "
            f"{_pm(r.get('annotation_hours_mean', math.nan), r.get('annotation_hours_ci95', math.nan), 2)} | "
            f"{_pm(r[f'{m}_mean'], r[f'{m}_ci95'])} | {_pm(r.get('mask_AP_mean', math.nan), r.get('mask_AP_ci95', math.nan))} | "
            f"{_pm(r[f'{m}_diff_mean'], r[f'{m}_diff_ci95'])} | {r['verdict']} | "
            f"{_pm(r[f'{m}_hours_diff_mean'], r[f'{m}_hours_diff_ci95'])} | {r['hours_verdict']} |"
        )
    if comparison.notes:
        lines += ["", "Notes:", *[f"- {note}" for note in comparison.notes]]
    return "\n".join(lines) + "\n"


def plot(comparison: Comparison, path: Path) -> None:
    """mask AP50 against labeled images and against hours, one band (95% CI) per sampler."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    m = comparison.metric
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for sampler, rows in comparison.per_cycle.groupby("sampler", sort=True):
        mean, half = rows[f"{m}_mean"].to_numpy(float), np.nan_to_num(rows[f"{m}_ci95"].to_numpy(float))
        for ax, x in zip(axes, (rows["labeled_images"], rows.get("annotation_hours_mean"))):
            if x is None:
                continue
            (line,) = ax.plot(x, mean, marker="o", label=sampler)
            ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2)
    axes[0].set_xlabel("labeled images")
    axes[1].set_xlabel("annotation hours")
    axes[0].set_ylabel(f"{m} (mean, 95% CI over seeds)")
    axes[0].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(comparison: Comparison, out_dir: Path) -> list[Path]:
    """summary.csv (per sampler), cycles.csv (per sampler and cycle), runs.csv (per run and
    cycle), report.md, curves.png, and a dvc.yaml whose plots `dvc plots show` renders."""
    out_dir = Path(out_dir)
    m = comparison.metric
    cycles = comparison.per_cycle.assign(
        low=comparison.per_cycle[f"{m}_mean"] - comparison.per_cycle[f"{m}_ci95"].fillna(0.0),
        high=comparison.per_cycle[f"{m}_mean"] + comparison.per_cycle[f"{m}_ci95"].fillna(0.0),
    )
    files = {
        "summary.csv": comparison.per_sampler.to_csv(index=False, float_format="%.6g"),
        "cycles.csv": cycles.to_csv(index=False, float_format="%.6g"),
        "runs.csv": comparison.per_run.to_csv(index=False, float_format="%.6g"),
        "report.md": markdown(comparison),
        "dvc.yaml": _PLOTS_YAML.format(metric=m),
    }
    written = []
    for name, text in files.items():
        write_text(out_dir / name, text)
        written.append(out_dir / name)
    with atomic_path(out_dir / "curves.png") as tmp:
        plot(comparison, Path(str(tmp) + ".png"))
        Path(str(tmp) + ".png").replace(tmp)
    return [*written, out_dir / "curves.png"]


# `dvc plots show` collects every dvc.yaml of the repository: this one defines the comparison's
# plots next to its files (the band template lives in .dvc/plots/salis_bands.json).
_PLOTS_YAML = """# written by `salis compare`: the comparison's plots for `dvc plots show`
plots:
  - {metric} vs labeled images (mean and 95% CI over seeds):
      template: salis_bands
      x: labeled_images
      y:
        cycles.csv: {metric}_mean
  - {metric} vs annotation hours (mean and 95% CI over seeds):
      template: salis_bands
      x: annotation_hours_mean
      y:
        cycles.csv: {metric}_mean
  - curves.png
"""
