"""Where a loop stands (`salis status`): per cycle the labeled, pseudo-labeled and unlabeled counts,
hours per label type and mask AP50, the current model, and what the loop waits for. loop_status
gathers it from the artifacts; render_table lays the per-cycle table out."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd

from salis.annotation.kinds import DEFAULT_KIND, label_kind
from salis.artifacts.layout import Layout
from salis.params import LABEL_TYPES, Params


@dataclasses.dataclass(frozen=True)
class CycleRow:
    """One cycle: None fields where its artifact does not exist yet."""

    k: int
    labeled: int | None = None
    images_by_type: dict[str, int] = dataclasses.field(default_factory=dict)
    hours_by_type: dict[str, float] = dataclasses.field(default_factory=dict)
    pseudo: tuple[int, int] | None = None  # (images, instances)
    unlabeled: int | None = None
    hours: float | None = None
    mask_ap50: float | None = None


@dataclasses.dataclass(frozen=True)
class LoopStatus:
    dataset: str  # the dataset line
    plan: str  # sampler, oracle, label policy, budget
    planned: str  # the budget alone
    label_types: list[str]  # the columns of the per-type breakdown (one type: no breakdown)
    cycles: list[CycleRow]
    current: tuple[int, float] | None  # (cycle, mask AP50) of the newest evaluated model
    awaiting: list[str]

    @property
    def labeled_now(self) -> tuple[int, float]:
        """(images, hours) of the newest labeled set."""
        done = [c for c in self.cycles if c.labeled is not None]
        return (done[-1].labeled, done[-1].hours) if done else (0, 0.0)


def loop_status(params: Params, layout: Layout) -> LoopStatus | None:
    """The loop's state from its artifacts; None before the prepare stage has run."""
    meta_path = layout.prepared / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    pool = meta["num_pool_images"]
    a, s = params.annotation, params.select
    dataset = (f"dataset: {meta['source']}, pool {pool} images, test {meta['num_test_images']} images "
               "(never trained on, scored or selected)")
    policy_note = f"; labels: {a.policy}" + (
        f" ({a.mask_share:.0%} of the hours on masks, the rest on {a.cheap}s, order {a.mixed_order})"
        if a.policy == "mixed" else "")
    if s.budget_hours:
        planned = f"{s.initial} initial images (masks) + {params.num_cycles} cycles x {s.budget_hours:g} annotator hours"
    else:
        planned = (f"{s.initial} initial + {params.num_cycles} cycles x {s.budget} = "
                   f"{s.initial + s.budget * params.num_cycles} of {pool} pool images")
    ks = sorted(c.k for c in params.cycles.values())
    tables = {k: pd.read_parquet(layout.labeled(k), columns=["image_id", "label_type", "seconds"])
              for k in ks if layout.labeled(k).is_file()}
    used = {t for table in tables.values() for t in table["label_type"]}
    # the initial batch is always full masks (the default kind)
    asked = {a.mixed_masks, a.cheap} if a.policy == "mixed" else {a.policy}
    types = [t for t in LABEL_TYPES if t in {DEFAULT_KIND} | used | asked]
    rows, current = [], None
    for k in ks:
        if k not in tables:
            rows.append(CycleRow(k))
            continue
        labeled = tables[k]
        metrics_path = layout.metrics(k)
        ap50 = json.loads(metrics_path.read_text())["mask_AP50"] if metrics_path.is_file() else None
        if ap50 is not None:
            current = (k, ap50)
        by_type = labeled.groupby("label_type")["seconds"].agg(["count", "sum"])
        rows.append(CycleRow(
            k, labeled=len(labeled),
            images_by_type={t: int(by_type["count"].get(t, 0)) for t in types},
            hours_by_type={t: float(by_type["sum"].get(t, 0.0)) / 3600 for t in types},
            pseudo=_count(layout.pseudo(k)), unlabeled=pool - len(labeled),
            hours=float(labeled["seconds"].sum()) / 3600, mask_ap50=ap50,
        ))
    plan = f"sampler: {params.sampler}; oracle: {params.oracle}{policy_note}; budget: {planned}"
    return LoopStatus(dataset, plan, planned, types, rows, current, awaiting(params, layout))


def render_table(status: LoopStatus) -> list[str]:
    """The per-cycle table: labeled (per type when several), pseudo, unlabeled, hours, mask AP50."""
    types = status.label_types
    many = len(types) > 1
    header = f"{'cycle':>5} {'labeled':>7}" + ("".join(f" {t:>5}" for t in types) if many else "")
    header += f" {'pseudo img':>10} {'pseudo inst':>11} {'unlabeled':>9} {'hours':>6}"
    header += ("".join(f" {'h ' + t:>7}" for t in types) if many else "") + f" {'mask AP50':>9}"
    lines = [header]
    for c in status.cycles:
        if c.labeled is None:
            lines.append(f"{c.k:>5} {'-':>7}")
            continue
        row = f"{c.k:>5} {c.labeled:>7}" + ("".join(f" {c.images_by_type[t]:>5}" for t in types) if many else "")
        row += (f" {c.pseudo[0] if c.pseudo else '-':>10} {c.pseudo[1] if c.pseudo else '-':>11} "
                f"{c.unlabeled:>9} {c.hours:>6.2f}")
        row += "".join(f" {c.hours_by_type[t]:>7.2f}" for t in types) if many else ""
        lines.append(row + f" {'-' if c.mask_ap50 is None else f'{c.mask_ap50:.3f}':>9}")
    return lines


def awaiting(params: Params, layout: Layout) -> list[str]:
    """What the loop waits for: labels of a request batch, or a cycle to use the last batch."""
    lines = []
    for batch in range(0, params.num_cycles + 1):
        selected = layout.selected(batch)
        answered = batch + 1 <= params.num_cycles and layout.labeled(batch + 1).is_file()
        if not selected.is_file() or answered:
            continue
        table = pd.read_parquet(selected, columns=["image_id", "label_type"])
        ids = table["image_id"].tolist()
        if not ids:  # the pool ran out before this batch
            continue
        if batch == params.num_cycles:
            lines.append(
                f"batch {batch} ({len(ids)} images, {layout.requests(batch)}) is selected but no cycle uses it: "
                f"add c{batch + 1}: {{k: {batch + 1}, prev: {batch}, next: {batch + 2}}} under `cycles:` in "
                "params.yaml to go on"
            )
        elif params.oracle == "human":
            for label_type, n in table["label_type"].value_counts().sort_index().items():
                kind = label_kind(label_type)
                if layout.imported_labels(batch, suffix=kind.suffix).is_file():
                    continue
                lines.append(f"awaiting {kind.adjective}labels: request batch {batch}, {n} images "
                             f"({layout.requests(batch)}); then: salis labels import --cycle {batch}{kind.type_flag} "
                             "<export.json> && dvc repro")
    return lines


def _count(path, column: str = "image_id") -> tuple[int, int] | None:
    """(distinct images, rows) of a parquet table, or None when it does not exist yet."""
    if not path.is_file():
        return None
    table = pd.read_parquet(path, columns=[column])
    return int(table[column].nunique()), len(table)
