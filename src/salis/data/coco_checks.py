"""The COCO checks every reader of a COCO file shares (the dataset import and the label import):
bounded JSON reading, the top-level shape, required keys per entry, integer ids, and segmentations
(polygons, uncompressed or compressed RLE) turned into validated compressed RLE. Each problem is
an InputError naming the file and the entry.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from salis.errors import InputError

TOP_LEVEL_KEYS = ("images", "annotations", "categories")


def rle_areas(rles: list[dict]) -> np.ndarray:
    """pycocotools.mask.area for any number of RLEs.

    pycocotools 2.0.11 under numpy 2 fails on lists of more than 255 RLEs
    ("Python integer 256 out of bounds for uint8"), so call it in chunks.
    """
    chunks = [mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)]
    return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(0)


MAX_JSON_BYTES = 4 * 2**30  # a label export or instances file larger than this is refused unread


def read_json(path: Path, max_bytes: int | None = None) -> Any:
    if not path.is_file():
        raise InputError(path, "no such file (expected a COCO instances JSON file)")
    limit = MAX_JSON_BYTES if max_bytes is None else max_bytes
    if path.stat().st_size > limit:
        raise InputError(path, f"is {path.stat().st_size / 2**20:.0f} MiB, above the {limit / 2**20:.0f} MiB a JSON file "
                               "may have here")
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except RecursionError:
        raise InputError(path, "not valid JSON here: nested deeper than any COCO or Label Studio file") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except UnicodeDecodeError as err:
        raise InputError(path, f"not valid JSON: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from None


def check_top_level(raw: Any, path: Path) -> None:
    if not isinstance(raw, dict):
        raise InputError(path, f"top level must be a JSON object with keys {', '.join(TOP_LEVEL_KEYS)}")
    missing = [k for k in TOP_LEVEL_KEYS if k not in raw]
    if missing:
        raise InputError(
            path,
            f"missing top-level key(s) {', '.join(map(repr, missing))} "
            "(a COCO instances file has images, annotations and categories)",
        )
    for key in TOP_LEVEL_KEYS:
        if not isinstance(raw[key], list):
            raise InputError(path, f"top-level key {key!r} must be a list, got {type(raw[key]).__name__}")


def entries(items: list, kind: str, required: tuple[str, ...], path: Path):
    """Yield (where, entry) after checking each entry is an object with the required keys."""
    for i, entry in enumerate(items):
        if not isinstance(entry, dict):
            raise InputError(path, f"{kind}[{i}] must be an object, got {type(entry).__name__}")
        where = f"{kind}[{i}]" + (f" (id {entry['id']!r})" if "id" in entry else "")
        for key in required:
            if key not in entry:
                raise InputError(path, f"{where} is missing the required key {key!r}")
        yield where, entry


def as_int(value: Any, what: str, path: Path, positive: bool = False) -> int:
    """JSON ints, or floats holding whole numbers (some exporters write 256.0)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():
        value, ok = int(value), True
    if not ok or (positive and value <= 0):
        kind = "a positive integer" if positive else "an integer"
        raise InputError(path, f"{what} must be {kind}, got {value!r}")
    return int(value)


def counts_str(counts: bytes | str) -> str:
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


def to_rle(seg: Any, height: int, width: int, where: str, path: Path) -> dict:
    """Polygons, uncompressed RLE or compressed RLE -> one compressed RLE of the image's size."""
    if isinstance(seg, list):
        return _polygons_to_rle(seg, height, width, where, path)
    if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
        raise InputError(
            path, f"{where} segmentation is neither a list of polygons nor an RLE dict with 'size' and 'counts'"
        )
    size = seg["size"]
    if not (isinstance(size, list) and len(size) == 2 and list(size) == [height, width]):
        raise InputError(
            path, f"{where} mask size {size!r} does not match its image's [height, width] [{height}, {width}]"
        )
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise InputError(path, f"{where} uncompressed RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            raise InputError(
                path, f"{where} uncompressed RLE counts sum to {sum(counts)}, expected height*width = {height * width}"
            )
        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if isinstance(counts, (str, bytes)):
        if isinstance(counts, str) and not counts.isascii():
            raise InputError(path, f"{where} has a corrupt compressed RLE mask (non-ASCII characters in counts)")
        raw = counts.encode("ascii") if isinstance(counts, str) else counts
        return {"size": [height, width], "counts": raw}  # validated in one batch by check_compressed
    raise InputError(path, f"{where} RLE counts must be a string or a list of integers, got {type(counts).__name__}")


def _polygons_to_rle(polygons: list, height: int, width: int, where: str, path: Path) -> dict:
    usable = []
    for j, poly in enumerate(polygons):
        if not isinstance(poly, list) or len(poly) % 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly
        ):
            raise InputError(path, f"{where} segmentation[{j}] is not a polygon (a flat list of x, y numbers)")
        if not all(math.isfinite(v) for v in poly):
            raise InputError(path, f"{where} segmentation[{j}] has non-finite coordinates")
        if len(poly) >= 6:  # fewer than 3 points enclose nothing
            usable.append([float(v) for v in poly])
    if not usable:
        empty = np.zeros((height, width, 1), dtype=np.uint8, order="F")
        return mask_utils.encode(empty)[0]
    # All polygons have >= 6 numbers, so frPyObjects cannot mistake them for [x, y, w, h] boxes.
    return mask_utils.merge(mask_utils.frPyObjects(usable, height, width))


def check_compressed(items: list[tuple[str, dict]], path: Path) -> None:
    """Reject corrupt compressed RLE strings before pycocotools decodes them unchecked."""
    if not items:
        return
    totals, valid = rle_totals([rle["counts"] for _, rle in items])
    for (where, rle), total, ok in zip(items, totals, valid):
        expected = rle["size"][0] * rle["size"][1]
        if not ok or total != expected:
            raise InputError(
                path,
                f"{where} has a corrupt compressed RLE mask (its runs sum to {int(total)}, "
                f"expected height*width = {expected})",
            )


def rle_totals(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Per string: the sum of its run lengths, and whether it parses to non-negative runs.

    A vectorised port of pycocotools' rleFrString (maskApi.c): 6-bit chunks offset by 48,
    bit 0x20 continues a value, bit 0x10 of the last chunk is the sign, and from the fourth
    run on each value is a delta to the run two places back. One pass for all strings keeps
    this cheap even for tens of thousands of masks.
    """
    n = len(strings)
    lengths = np.array([len(s) for s in strings], dtype=np.int64)
    chars = np.frombuffer(b"".join(strings), dtype=np.uint8).astype(np.int64) - 48
    valid = np.ones(n, dtype=bool)
    totals = np.zeros(n, dtype=np.int64)
    if chars.size == 0:
        return totals, valid & (lengths > 0)
    owner = np.repeat(np.arange(n), lengths)
    valid &= np.bincount(owner, weights=(chars < 0) | (chars > 63), minlength=n) == 0
    ends = (chars & 0x20) == 0
    last_char = np.cumsum(lengths)[lengths > 0] - 1
    valid[owner[last_char[~ends[last_char]]]] = False  # a string must end on a complete value
    ends[last_char] = True  # ... and a broken one must not spill into the next string
    starts = np.flatnonzero(np.r_[True, ends[:-1]])
    group = np.cumsum(np.r_[0, ends[:-1].astype(np.int64)])
    shift = np.arange(chars.size) - starts[group]
    too_long = shift > 6  # a 32-bit run needs at most 7 chunks
    valid[owner[too_long]] = False
    shift = np.minimum(shift, 6)
    values = np.add.reduceat((chars & 0x1F) << (5 * shift), starts)
    last = np.flatnonzero(ends)
    negative = (chars[last] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (shift[last][negative] + 1))
    # Undo the delta coding: runs 1, 3, 5, ... and runs 2, 4, 6, ... are running sums.
    value_owner = owner[starts]
    first_value = np.searchsorted(value_owner, np.arange(n))
    pos = np.arange(values.size) - first_value[value_owner]
    chain = value_owner * 3 + np.where(pos == 0, 0, np.where(pos % 2 == 1, 1, 2))
    order = np.argsort(chain, kind="stable")
    sums = np.cumsum(values[order])
    chain_sorted = chain[order]
    chain_start = np.flatnonzero(np.r_[True, chain_sorted[1:] != chain_sorted[:-1]])
    seg_index = np.cumsum(np.r_[0, (chain_sorted[1:] != chain_sorted[:-1]).astype(np.int64)])
    offsets = sums[chain_start] - values[order][chain_start]
    runs = np.empty_like(values)
    runs[order] = sums - offsets[seg_index]
    valid &= np.bincount(value_owner, weights=(runs < 0) | (runs >= 2**32), minlength=n) == 0
    totals = np.bincount(value_owner, weights=runs.astype(np.float64), minlength=n).astype(np.int64)
    return totals, valid & (lengths > 0)

