"""Pool scoring in shards: resumable, and split over the ranks of a distributed run.

The unlabeled pool is cut into shards of score.shard_images images (a multiple of the batch
size, so every batch is the batch one process would score), the labeled pool into shards of
the same size (embeddings only). Each shard's results go to a cache folder outside DVC's outputs,
.salis/shards/<stage>-<key>/ (DVC deletes a stage's outputs before running it; this folder
survives), each file written atomically and a shard's `.done` marker last. The key hashes
everything the results depend on: the model file, the image ids, the scoring params, the seed
and cycle, and salis's own source files. So a stage killed after 90% of a large pool, run again
by `dvc repro`, scores only the shards without a marker; a change of model, params or code
starts afresh.

Rank r of W scores the shards s with s % W == r; rank 0 then merges every shard, in order, into
the stage's outputs, cutting instance row groups exactly as one process streaming the pool
would. The outputs are the same bytes whatever the number of processes, and the cache folder is
removed once they are written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from salis.acquisition.embeddings import write_embeddings
from salis.acquisition.scoring import image_row, instance_rows, stream_instances, write_image_table
from salis.artifacts.atomic import atomic_path, write_text
from salis.artifacts.tables import IMAGES, INSTANCES, write_table
from salis.engine.inference import Prediction

SOURCE_ROOT = Path(__file__).resolve().parents[1]  # src/salis: a code change invalidates the cache


@dataclasses.dataclass(frozen=True)
class Shard:
    kind: str  # "score" (unlabeled: tables and embeddings) | "embed" (labeled: embeddings only)
    index: int
    start: int  # position of its first image in the kind's list (MC-dropout seeds follow it)
    image_ids: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index:05d}"


def plan_shards(unlabeled: Sequence[int], labeled: Sequence[int], shard_images: int, batch_size: int) -> list[Shard]:
    """The shards, in merge order: the unlabeled pool's, then the labeled pool's."""
    size = max(batch_size, (shard_images // batch_size) * batch_size)
    out = []
    for kind, ids in (("score", list(unlabeled)), ("embed", list(labeled))):
        for k, start in enumerate(range(0, len(ids), size)):
            out.append(Shard(kind, k, start, tuple(int(i) for i in ids[start : start + size])))
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(model_path: Path, unlabeled: Sequence[int], labeled: Sequence[int], settings: dict) -> str:
    digest = hashlib.sha256()
    with open(model_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    digest.update(json.dumps({"unlabeled": list(map(int, unlabeled)), "labeled": list(map(int, labeled)),
                              "settings": settings}, sort_keys=True).encode())
    for path in sorted(SOURCE_ROOT.rglob("*.py")):
        digest.update(path.relative_to(SOURCE_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class ShardCache:
    def __init__(self, root: Path, stage: str, key: str) -> None:
        self.root = Path(root)
        self.folder = self.root / f"{stage}-{key}"
        self.stage = stage

    def clear_others(self) -> list[Path]:
        """Remove this stage's caches of other keys (another model, pool or code)."""
        stale = [p for p in self.root.glob(f"{self.stage}-*") if p.is_dir() and p != self.folder] if self.root.is_dir() else []
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return stale

    def _files(self, shard: Shard) -> list[Path]:
        names = ["instances.parquet", "images.parquet", "vectors.npy"] if shard.kind == "score" else ["vectors.npy"]
        return [self.folder / f"{shard.name}.{name}" for name in names]

    def done(self, shard: Shard) -> bool:
        """Whether the shard was scored whole: its marker lists each file's checksum, and every file
        still has it. A corrupt, truncated or foreign file fails this and the shard is scored again."""
        return self.problem(shard) is None

    def problem(self, shard: Shard) -> str | None:
        """Why the cached shard cannot be used (None: it can)."""
        marker = self.folder / f"{shard.name}.done"
        if not marker.is_file():
            return "not scored"
        try:
            recorded = json.loads(marker.read_text())
            files = recorded["files"]
            if not isinstance(files, dict) or recorded["images"] != len(shard.image_ids):
                return "marker of another shard"
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return "unreadable marker"
        for path in self._files(shard):
            if not path.is_file():
                return f"{path.name} missing"
            if files.get(path.name) != _sha256(path):
                return f"{path.name} does not match its checksum"
        return None

    def discard(self, shard: Shard) -> None:
        for path in [*self._files(shard), self.folder / f"{shard.name}.done"]:
            path.unlink(missing_ok=True)

    def write(self, shard: Shard, predictions: Iterable[Prediction]) -> None:
        """Score one shard into the cache; its marker comes last, after every file is in place."""
        self.folder.mkdir(parents=True, exist_ok=True)
        instances: dict[str, list] = {name: [] for name in INSTANCES.schema.names}
        images, vectors = [], []
        for pred in predictions:
            if shard.kind == "score":
                for name, values in instance_rows(pred).items():
                    instances[name].extend(values)
                images.append(image_row(pred))
            vectors.append(np.asarray(pred.embedding, dtype=np.float32))
        if shard.kind == "score":
            with atomic_path(self.folder / f"{shard.name}.instances.parquet") as tmp:
                pq.write_table(pa.table(instances, schema=INSTANCES.schema), tmp)
            write_table(self.folder / f"{shard.name}.images.parquet",
                        pd.DataFrame(images, columns=IMAGES.schema.names), IMAGES)
        with atomic_path(self.folder / f"{shard.name}.vectors.npy") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, np.stack(vectors) if vectors else np.zeros((0, 0), np.float32))
        checksums = {path.name: _sha256(path) for path in self._files(shard)}
        write_text(self.folder / f"{shard.name}.done", json.dumps({"images": len(shard.image_ids), "files": checksums}) + "\n")

    def merge(self, shards: Sequence[Shard], instances_path: Path, images_path: Path, embeddings_dir: Path) -> pd.DataFrame:
        """The stage's outputs from every shard, in order; the same bytes one streaming process writes."""
        missing = [s.name for s in shards if not self.done(s)]
        if missing:
            raise RuntimeError(f"shards not scored yet: {missing[:5]}")
        score = [s for s in shards if s.kind == "score"]
        images = [pq.read_table(self.folder / f"{s.name}.images.parquet") for s in score]

        def per_image() -> Iterator[pa.Table]:
            for shard, table in zip(score, images):
                detections = pq.read_table(self.folder / f"{shard.name}.instances.parquet")
                offset = 0
                for n in table.column("num_detections").to_pylist():  # one image at a time, as streamed
                    yield detections.slice(offset, n)
                    offset += n

        stream_instances(per_image(), instances_path)
        rows = [row for table in images for row in table.to_pylist()]
        frame = write_image_table(rows, images_path)
        with write_embeddings(embeddings_dir, sum(len(s.image_ids) for s in shards)) as out:
            for shard in shards:
                vectors = np.load(self.folder / f"{shard.name}.vectors.npy")
                for image_id, vector in zip(shard.image_ids, vectors):
                    out.add(image_id, vector)
        return frame

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def score_shards(
    cache: ShardCache, shards: Sequence[Shard], mine: Callable[[Shard], bool],
    predict_shard: Callable[[Shard], Iterator[Prediction]], log: Callable[[str], None] = print,
) -> int:
    """Score this rank's shards that the cache lacks; how many it scored."""
    todo, kept = [], 0
    for shard in (s for s in shards if mine(s)):
        problem = cache.problem(shard)
        if problem is None:
            kept += 1
            continue
        if problem != "not scored":
            log(f"shard {shard.name} in {cache.folder} is unusable ({problem}): scoring it again")
            cache.discard(shard)
        todo.append(shard)
    if kept:
        log(f"resuming: {kept} shard(s) already scored in {cache.folder}")
    for shard in todo:
        cache.write(shard, predict_shard(shard))
    return len(todo)
