"""A seeded, built-in generator of a microscopy-like instance-segmentation dataset.

Three classes of cells that differ in shape, size and texture sit on a dark, noisy,
unevenly lit background. Every image draws a difficulty d in [0, 1]: d near 0 gives one
or a few large, bright, clean objects; d near 1 gives many small, faint objects in strong
noise. Objects touch and overlap; a later object occludes earlier ones and each
annotation is the visible part only. Everything is vectorised numpy on small windows, so
hundreds of images take about a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from pycocotools import mask as mask_utils

from salis.data.coco_checks import rle_areas

CATEGORIES = [
    {"id": 1, "name": "nucleus"},  # round, smooth, small to medium
    {"id": 2, "name": "rod"},  # elongated, slightly bent, medium
    {"id": 3, "name": "lobed_cell"},  # large, irregular lobed outline, granular texture
]

MIN_VISIBLE_AREA = 15  # px; smaller visible remnants are dropped (nobody could label them)
MIN_RADIUS = 3.5  # px; the smallest objects stay about 7 px across, still learnable
_CLASS_P = (0.45, 0.30, 0.25)
_CLASS_GAIN = (1.0, 0.9, 0.75)  # lobed cells are a bit dimmer, their granules carry them
_MAX_OVERLAP = 0.3  # at most this share of a new object may lie on earlier ones ...
_MAX_HIDDEN = 0.4  # ... and it may hide at most this share of any earlier object
_PLACEMENT_TRIES = 12

# draw(u, v) -> (mask, profile): u, v are coordinates in the object's rotated frame.
Draw = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def generate(
    n_images: int, image_size: int, max_instances: int, seed: int, id_offset: int = 0
) -> tuple[list[dict], list[dict], list[np.ndarray]]:
    """Return (COCO image entries, COCO annotation entries, HxWx3 uint8 images).

    Image ids are id_offset + 1 ... id_offset + n_images. Annotation ids are consecutive and
    start at id_offset * max_instances + 1, so two calls with disjoint image id ranges (pool
    and test) also get disjoint annotation ids.
    """
    if n_images < 0 or image_size < 16 or max_instances < 1:
        raise ValueError(
            f"generate needs n_images >= 0, image_size >= 16, max_instances >= 1; "
            f"got {n_images}, {image_size}, {max_instances}"
        )
    seed_key = seed % 2**64  # SeedSequence takes non-negative integers only
    images: list[dict] = []
    annotations: list[dict] = []
    pixels: list[np.ndarray] = []
    next_ann_id = id_offset * max_instances + 1
    for i in range(n_images):
        # One stream per image: image i is the same whatever n_images is.
        rng = np.random.default_rng([seed_key, i])
        image, masks, labels = _render_image(rng, image_size, max_instances)
        image_id = id_offset + i + 1
        images.append(
            {"id": image_id, "file_name": f"syn_{image_id:06d}.png", "width": image_size, "height": image_size}
        )
        anns = _encode(masks, labels, image_id, next_ann_id)
        next_ann_id += len(anns)
        annotations.extend(anns)
        pixels.append(image)
    return images, annotations, pixels


def _encode(masks: list[np.ndarray], labels: list[int], image_id: int, first_id: int) -> list[dict]:
    """COCO annotations with compressed RLE; bbox and area come from the mask itself."""
    stack = np.asfortranarray(np.stack(masks, axis=-1).astype(np.uint8))
    rles = mask_utils.encode(stack)
    areas = rle_areas(rles)
    boxes = mask_utils.toBbox(rles)
    anns = []
    for k, (rle, label) in enumerate(zip(rles, labels)):
        anns.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": CATEGORIES[label]["id"],
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": float(areas[k]),
                "bbox": [float(v) for v in boxes[k]],
                "iscrowd": 0,
            }
        )
    return anns


def _render_image(rng: np.random.Generator, size: int, max_instances: int) -> tuple[np.ndarray, list, list]:
    d = float(rng.uniform())
    while True:  # very rarely every object ends up hidden or cut off: draw again, same stream
        image, masks, labels = _try_render(rng, size, max_instances, d)
        if masks:
            return image, masks, labels


def _instance_count(rng: np.random.Generator, d: float, max_instances: int) -> int:
    high = 1 + d * (max_instances - 1)
    return int(rng.integers(max(1, round(0.6 * high)), round(high) + 1))


def _try_render(
    rng: np.random.Generator, size: int, max_instances: int, d: float
) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    background = _background(rng, size, d)
    signal = background.copy()
    owner = np.full((size, size), -1, dtype=np.int32)  # index of the object that is visible there
    visible: list[int] = []  # current visible area of each placed object
    labels: list[int] = []
    placed: list[tuple[float, float, float]] = []  # (cy, cx, bounding radius) for clustering
    contrast = 0.75 - 0.53 * d
    base_radius = max(MIN_RADIUS, size * (0.19 - 0.15 * d))
    for _ in range(_instance_count(rng, d, max_instances)):
        label = int(rng.choice(3, p=_CLASS_P))
        radius = base_radius * rng.uniform(0.8, 1.2)
        bound, draw = _SHAPES[label](rng, radius, size)
        hit = _place(rng, draw, bound, size, owner, visible, placed)
        if hit is None:
            continue
        (y0, y1, x0, x1), mask, profile, hidden = hit
        if label == 2:
            profile = profile * (1.0 + 0.35 * _granules(rng, profile.shape))
        amplitude = contrast * _CLASS_GAIN[label] * rng.uniform(0.8, 1.2)
        k = len(visible)
        for j, h in hidden.items():
            visible[j] -= h
        visible.append(int(mask.sum()))
        labels.append(label)
        win = (slice(y0, y1), slice(x0, x1))
        owner[win][mask] = k
        signal[win][mask] = background[win][mask] + amplitude * profile[mask]
    _add_debris(rng, signal, size, d, contrast)
    signal = _blur(signal, 0.5 + 0.5 * d)
    signal += rng.normal(0.0, 0.01 + 0.05 * d, signal.shape)
    tint = rng.uniform(0.7, 1.0, 3)
    rgb = signal[:, :, None] * (tint / tint.max())
    image = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    masks, kept = [], []
    for k, label in enumerate(labels):
        if visible[k] >= MIN_VISIBLE_AREA:
            masks.append(owner == k)
            kept.append(label)
    return image, masks, kept


def _place(
    rng: np.random.Generator,
    draw: Draw,
    bound: float,
    size: int,
    owner: np.ndarray,
    visible: list[int],
    placed: list[tuple[float, float, float]],
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray, dict[int, int]] | None:
    """Find a spot where the object overlaps earlier ones only a little; None if there is none."""
    angle = rng.uniform(0.0, 2 * math.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    for _ in range(_PLACEMENT_TRIES):
        cy, cx = _centre(rng, bound, size, placed)
        y0, y1 = max(0, int(cy - bound) - 1), min(size, int(cy + bound) + 2)
        x0, x1 = max(0, int(cx - bound) - 1), min(size, int(cx + bound) + 2)
        if y1 <= y0 or x1 <= x0:
            continue
        dy = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - cy
        dx = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - cx
        mask, profile = draw(dx * cos + dy * sin, dy * cos - dx * sin)
        area = int(mask.sum())
        if area < MIN_VISIBLE_AREA:
            continue
        under = owner[y0:y1, x0:x1][mask]
        under = under[under >= 0]
        if under.size > _MAX_OVERLAP * area:
            continue
        counts = np.bincount(under, minlength=len(visible)) if under.size else np.zeros(0, np.int64)
        hidden = {int(j): int(c) for j, c in enumerate(counts) if c}
        if any(c > _MAX_HIDDEN * visible[j] for j, c in hidden.items()):
            continue
        placed.append((cy, cx, bound))
        return (y0, y1, x0, x1), mask, profile, hidden
    return None


def _centre(
    rng: np.random.Generator, bound: float, size: int, placed: list[tuple[float, float, float]]
) -> tuple[float, float]:
    """Mostly uniform; sometimes right next to an earlier object, so cells touch and cluster."""
    if placed and rng.uniform() < 0.35:
        ay, ax, ab = placed[int(rng.integers(len(placed)))]
        angle = rng.uniform(0.0, 2 * math.pi)
        dist = (ab + bound) * rng.uniform(0.5, 0.85)
        return ay + dist * math.sin(angle), ax + dist * math.cos(angle)
    margin = min(bound * 0.6, size / 2)  # keep most of the object inside the frame
    return float(rng.uniform(margin, size - margin)), float(rng.uniform(margin, size - margin))


def _nucleus(rng: np.random.Generator, radius: float, size: int) -> tuple[float, Draw]:
    a, b = radius, radius * rng.uniform(0.75, 1.0)

    def draw(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rho2 = (u / a) ** 2 + (v / b) ** 2
        return rho2 < 1.0, 1.0 - 0.3 * rho2  # smooth dome: darker rims separate touching nuclei

    return a + 1.0, draw


def _rod(rng: np.random.Generator, radius: float, size: int) -> tuple[float, Draw]:
    half_length = min(radius * rng.uniform(1.3, 1.9), 0.4 * size)
    half_width = max(2.2, radius * rng.uniform(0.38, 0.5))
    bend = rng.uniform(-0.25, 0.25) / half_length

    def draw(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = v - bend * u**2  # a gentle banana shape
        along = np.maximum(np.abs(u) - half_length, 0.0)
        dist2 = (along**2 + v**2) / half_width**2
        return dist2 < 1.0, 1.0 - 0.35 * dist2

    return half_length + half_width + 1.0, draw


def _lobed(rng: np.random.Generator, radius: float, size: int) -> tuple[float, Draw]:
    big = min(radius * rng.uniform(1.3, 1.6), 0.35 * size)
    lobes = int(rng.integers(3, 7))
    a1, a2 = rng.uniform(0.08, 0.18), rng.uniform(0.03, 0.08)
    p1, p2 = rng.uniform(0.0, 2 * math.pi, 2)

    def draw(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = np.arctan2(v, u)
        edge = big * (1.0 + a1 * np.sin(lobes * theta + p1) + a2 * np.sin((lobes + 2) * theta + p2))
        rel = np.sqrt(u**2 + v**2) / edge
        return rel < 1.0, 0.85 + 0.15 * (1.0 - rel)

    return big * (1.0 + a1 + a2) + 1.0, draw


_SHAPES = (_nucleus, _rod, _lobed)


def _granules(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-std blobby noise, about 2 px grains: the lobed cells' texture."""
    noise = _blur(rng.normal(size=shape), 0.8)
    return noise / max(float(noise.std()), 1e-6)


def _background(rng: np.random.Generator, size: int, d: float) -> np.ndarray:
    """Dark, unevenly lit field: a linear illumination ramp plus low-frequency haze."""
    level = rng.uniform(0.04, 0.12)
    angle = rng.uniform(0.0, 2 * math.pi)
    coords = (np.arange(size) + 0.5) / size - 0.5
    ramp = coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)
    weights = _upsample_weights(6, size)
    haze = weights @ rng.normal(size=(6, 6)) @ weights.T
    return level * (1.0 + rng.uniform(0.0, 0.5) * ramp) + (0.01 + 0.02 * d) * haze


def _upsample_weights(coarse: int, size: int) -> np.ndarray:
    """(size, coarse) linear interpolation matrix: W @ C @ W.T resizes a coarse grid smoothly."""
    pos = (np.arange(size) + 0.5) / size * (coarse - 1)
    return np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(coarse)[None, :]))


def _add_debris(rng: np.random.Generator, signal: np.ndarray, size: int, d: float, contrast: float) -> None:
    """A few tiny faint unlabelled specks, as on real slides: the model must learn to ignore them."""
    count = int(rng.integers(0, 2 + int(6 * d)))
    if not count:
        return
    centres = rng.uniform(0, size, (count, 2))
    radii = rng.uniform(0.8, 1.6, count)
    amps = contrast * rng.uniform(0.2, 0.4, count)
    for (cy, cx), r, amp in zip(centres, radii, amps):
        y0, y1 = max(0, int(cy - 3 * r)), min(size, int(cy + 3 * r) + 1)
        x0, x1 = max(0, int(cx - 3 * r)), min(size, int(cx + 3 * r) + 1)
        dy = np.arange(y0, y1)[:, None] + 0.5 - cy
        dx = np.arange(x0, x1)[None, :] + 0.5 - cx
        signal[y0:y1, x0:x1] += amp * np.exp(-(dy**2 + dx**2) / (2 * r * r))


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur as a sum of shifted slices (no scipy, no per-pixel loops)."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        pad = [(radius, radius) if ax == axis else (0, 0) for ax in range(2)]
        padded = np.pad(a, pad, mode="reflect")
        n = a.shape[axis]
        out = np.zeros_like(a, dtype=np.float64)
        for j, w in enumerate(taps):
            out += w * (padded[j : j + n] if axis == 0 else padded[:, j : j + n])
        a = out
    return a
