"""Stage `infer_score@k`: score every unlabeled pool image (or `score.candidates` of them, drawn
per cycle; never a test image) with cycle k's model; embed the scored images and every labeled
pool image (core-set measures distances to them).

The pool goes in shards (salis.acquisition.shards): resumable after a kill, and spread over
the ranks when runtime.nproc > 1; rank 0 writes the outputs, the same bytes for any rank count."""

from __future__ import annotations

import dataclasses
import resource
from collections.abc import Iterator

import numpy as np
import pandas as pd

from salis.acquisition.candidates import draw_candidates
from salis.acquisition.shards import Shard, ShardCache, cache_key, plan_shards, score_shards
from salis.artifacts.layout import Layout
from salis.artifacts.tables import LABELED, read_table
from salis.data.prepared import PreparedData
from salis.engine import distributed as dist
from salis.engine.device import configure_runtime, pick_device
from salis.engine.inference import embed, predict
from salis.model.checkpoint import load_model
from salis.params import Params
from salis.seeds import derive_seed


@dataclasses.dataclass
class _Embedded:
    image_id: int
    embedding: np.ndarray


def stage_infer_score(params: Params, layout: Layout, cycle: int) -> pd.DataFrame | None:
    configure_runtime(params.runtime)
    prepared = PreparedData(layout.prepared)
    labeled = set(read_table(layout.labeled(cycle), LABELED)["image_id"].tolist())
    pool = prepared.pool_ids()
    unlabeled_all = [i for i in pool if i not in labeled]
    unlabeled = draw_candidates(unlabeled_all, params.score.candidates, params.seed, cycle)
    labeled_pool = [i for i in pool if i in labeled]
    assert not set(pool) & set(prepared.test_ids()), "test images must never be scored or embedded"
    model, _ = load_model(layout.model(cycle))
    device = dist.device_for(params.runtime) or pick_device(params.runtime.device)
    score = params.score
    size, amp, workers = score.batch_size, params.runtime.amp, params.runtime.workers
    mc_seed = derive_seed(params.seed, cycle, "mc_dropout")
    shards = plan_shards(unlabeled, labeled_pool, score.shard_images, size)
    # what the numbers depend on besides the model and the images: a resumed stage must not mix
    # shards scored under other settings
    settings = {"score": dataclasses.asdict(score), "seed": mc_seed, "cycle": cycle, "device": device.type,
                "amp": params.runtime.amp and device.type == "cuda", "threads": params.runtime.threads}
    cache = ShardCache(layout.shards, f"infer_score@c{cycle}",
                       cache_key(layout.model(cycle), unlabeled, labeled_pool, settings))
    if dist.is_main():
        cache.clear_others()
    dist.barrier()

    def run(shard: Shard) -> Iterator:
        if shard.kind == "score":
            return predict(model, prepared, shard.image_ids, size, device, amp, f"score shard {shard.index}",
                           mc_passes=score.mc_passes, mc_dropout_p=score.mc_dropout_p, seed=mc_seed,
                           offset=shard.start, workers=workers, mask_min_score=score.mask_min_score or None)
        return (_Embedded(i, v) for i, v in embed(model, prepared, shard.image_ids, size, device, amp,
                                                   f"embed labeled shard {shard.index}", workers))

    order = {s.name: n for n, s in enumerate(shards)}
    scored = score_shards(cache, shards, lambda s: order[s.name] % dist.world_size() == dist.rank(), run,
                          log=lambda line: print(f"infer_score@c{cycle}: {line}") if dist.is_main() else None)
    per_rank = dist.gather((scored, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    if per_rank is None:  # rank 0 merges and writes
        return None
    images = cache.merge(shards, layout.instances(cycle), layout.images(cycle), layout.embeddings(cycle))
    cache.remove()
    ranks = ", ".join(f"rank {r}: {n} shard(s), peak RSS {mb:.0f} MiB" for r, (n, mb) in enumerate(per_rank))
    scored_what = (f"{len(unlabeled)} of {len(unlabeled_all)} unlabeled (score.candidates)"
                   if len(unlabeled) < len(unlabeled_all) else f"{len(unlabeled)} unlabeled")
    print(f"cycle {cycle}: scored {scored_what} and embedded {len(labeled_pool)} labeled pool images "
          f"in {len(shards)} shard(s) ({ranks})")
    return images
