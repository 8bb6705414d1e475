"""Which unlabeled images a cycle scores: all of them, or a seeded random subset (`score.candidates`).

On a large pool, scoring every image each cycle costs more than training; ranking a uniform random
subset several times the batch size is the usual remedy (Yoo & Kweon 2019 score 10,000 random
candidates; baal's `max_sample`). The subset is uniform, so random selection from it is still
random selection from the pool, and it is redrawn every cycle from (seed, cycle)."""

from __future__ import annotations

from collections.abc import Sequence

from salis.seeds import derive_rng


def draw_candidates(unlabeled: Sequence[int], candidates: int, seed: int, cycle: int) -> list[int]:
    """The unlabeled image ids cycle `cycle` scores, in their given order: every one when
    `candidates` is 0 or at least their number, else `candidates` of them drawn without
    replacement (the draw depends on the set of ids, not on their order)."""
    ids = [int(i) for i in unlabeled]
    if not candidates or candidates >= len(ids):
        return ids
    ordered = sorted(ids)
    rng = derive_rng(seed, cycle, "candidates")
    keep = {ordered[i] for i in rng.choice(len(ordered), size=candidates, replace=False)}
    return [i for i in ids if i in keep]
