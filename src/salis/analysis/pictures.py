"""Pictures a reviewer can trust, drawn from what the stages wrote (no model run here):

- the selected batch, each image with the model's predicted masks coloured by the sampler's
  instance score and titled with its image score, beside the pool's highest- and lowest-ranked
  images by that score;
- pseudo-labels (and targets made from weak labels) on a sample of images, the hidden ground
  truth beside them when the oracle is simulated;
- the test images the model does worst on (per-image mask AP50), predictions beside the truth;
- the learning curves and the predicted-vs-true mask-IoU scatter.

Masks are drawn with torchvision.utils.draw_segmentation_masks, panels laid out with matplotlib;
thumbnails stay small (figures at 80 dpi, about 1.6 inch a panel).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.utils import draw_segmentation_masks

from salis.artifacts.atomic import atomic_path
from salis.geometry import decode_rles, rle, rles_from_counts

PANEL_INCHES = 1.6
DPI = 80
GT_COLOR = (255, 200, 0)

# sampler -> (images.parquet column, True when high means "label first"), instance column
SAMPLER_SCORES: dict[str, tuple[str | None, bool, str]] = {
    "tsp": ("tsp_score", False, "tsp_score"),
    "entropy": ("mean_entropy", True, "entropy"),
    "beta_iou": ("mean_mask_iou", False, "mask_iou"),
    "oracle_iou": ("mean_mask_iou", False, "mask_iou"),
    "mc_dropout": ("mc_disagreement", True, "mc_disagreement"),
    "learning_loss": ("predicted_loss", True, "score"),
    "random": (None, True, "score"),
    "coreset": (None, True, "score"),
}


@dataclasses.dataclass
class Panel:
    image: np.ndarray  # H x W x 3 uint8
    masks: np.ndarray  # N x H x W bool
    colors: list[tuple[int, int, int]]
    title: str
    points: Sequence[tuple[float, float]] = ()


def colors_for(values: Sequence[float], low: float = 0.0, high: float = 1.0) -> list[tuple[int, int, int]]:
    """viridis colours for scores in [low, high] (NaN grey)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    out = []
    for v in values:
        if v is None or not np.isfinite(v):
            out.append((150, 150, 150))
            continue
        t = min(max((float(v) - low) / (high - low) if high > low else 0.5, 0.0), 1.0)
        r, g, b, _ = cmap(t)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def overlay(panel: Panel, alpha: float = 0.45) -> np.ndarray:
    image = torch.from_numpy(np.ascontiguousarray(panel.image)).permute(2, 0, 1)
    if len(panel.masks):
        image = draw_segmentation_masks(image, torch.from_numpy(np.asarray(panel.masks, dtype=bool)), alpha=alpha,
                                        colors=list(panel.colors))
    return image.permute(1, 2, 0).numpy()


def _save(fig, path: Path, dpi: int) -> None:
    """PNG, or JPEG (quality 85: photographs compress ten times better) when the path says .jpg."""
    with atomic_path(path) as tmp:
        if path.suffix == ".jpg":
            fig.savefig(tmp, dpi=dpi, format="jpg", pil_kwargs={"quality": 85})
        else:
            fig.savefig(tmp, dpi=dpi, format="png")


def draw_grid(rows: Sequence[Sequence[Panel]], path: Path, title: str, row_labels: Sequence[str] = ()) -> Path:
    """Panels in rows (a missing panel is left blank) as one image (PNG or JPEG by the path), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(rows):  # nothing to show: a one-line figure saying so
        fig = plt.figure(figsize=(6, 0.6))
        fig.text(0.5, 0.5, title, ha="center", va="center", fontsize=8)
        _save(fig, path, DPI)
        plt.close(fig)
        return path
    n_rows, n_cols = max(len(rows), 1), max([len(r) for r in rows] + [1])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * PANEL_INCHES, n_rows * (PANEL_INCHES + 0.25) + 0.4),
                             squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r < len(rows) and c < len(rows[r]):
                panel = rows[r][c]
                ax.imshow(overlay(panel), interpolation="nearest")
                if panel.points:
                    xs, ys = zip(*panel.points)
                    ax.scatter(np.asarray(xs) - 0.5, np.asarray(ys) - 0.5, s=6, c="red", marker="x", linewidths=0.8)
                ax.set_title(panel.title, fontsize=6)
            else:
                ax.axis("off")
            if c == 0 and r < len(row_labels):
                ax.set_ylabel(row_labels[r], fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path, DPI)
    plt.close(fig)
    return path


def instance_panels(image: np.ndarray, rows: pd.DataFrame, column: str, title: str) -> Panel:
    """An image with detections of the instance table (RLE masks) coloured by `column`."""
    height, width = image.shape[:2]
    masks = decode_rles(rles_from_counts(rows["rle"], height, width), height, width).astype(bool)
    values = rows[column].to_numpy(np.float64) if column in rows else rows["score"].to_numpy(np.float64)
    high = max(1.0, float(np.nanmax(values))) if len(values) and column in ("entropy", "predicted_loss") else 1.0
    return Panel(image, masks, colors_for(values, 0.0, high), title)


def truth_panel(image: np.ndarray, annotations: list[dict], title: str) -> Panel:
    height, width = image.shape[:2]
    masks = decode_rles([rle(a["segmentation"]) for a in annotations], height, width).astype(bool)
    return Panel(image, masks, [GT_COLOR] * len(masks), title)


def ranked_by_sampler(images: pd.DataFrame, sampler: str, beta: float = 0.5) -> pd.DataFrame | None:
    """The scored pool images ordered as the sampler's own score orders them (label first first);
    None for samplers without an image score (random, core-set)."""
    column, high_first, _ = SAMPLER_SCORES.get(sampler, (None, True, "score"))
    if column is None or column not in images or images[column].isna().all():
        return None
    key = images[column]
    if sampler in ("beta_iou", "oracle_iou"):  # closest to beta first
        key, high_first = -(key - beta).abs(), True
    return images.assign(_key=key).sort_values(["_key", "image_id"], ascending=[not high_first, True]).drop(columns="_key")


def learning_curves(curve: pd.DataFrame, path: Path) -> Path:
    """mask AP50 (and mask AP) against labeled images and against annotation hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, x, label in ((axes[0], "labeled_images", "labeled images"), (axes[1], "annotation_hours", "annotation hours")):
        if x in curve:
            ax.plot(curve[x], curve["mask_AP50"], marker="o", label="mask AP50")
            if "mask_AP" in curve:
                ax.plot(curve[x], curve["mask_AP"], marker="s", label="mask AP")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test split")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def calibration_scatter(pairs: pd.DataFrame, path: Path, cycle: int) -> Path:
    """Predicted vs true IoU of every test detection, box and mask side by side; the matched ones
    (best box IoU > 0.5) drawn over the others, each group's Pearson r in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matched = pairs["matched"].to_numpy(dtype=bool) if "matched" in pairs else np.ones(len(pairs), bool)
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.4))
    for ax, kind in zip(axes, ("box", "mask")):
        pred, true = pairs[f"pred_{kind}_iou"].to_numpy(float), pairs[f"true_{kind}_iou"].to_numpy(float)
        for rows, colour, label in ((~matched, "tab:red", "unmatched"), (matched, "tab:blue", "matched")):
            if rows.sum() > 1:
                r = np.corrcoef(pred[rows], true[rows])[0, 1] if np.std(pred[rows]) and np.std(true[rows]) else float("nan")
                ax.scatter(pred[rows], true[rows], s=3, alpha=0.3, color=colour, label=f"{label} ({rows.sum()}), r {r:.2f}")
        if len(pred) > 1 and np.std(pred) and np.std(true):
            ax.set_title(f"{kind}: all {len(pred)}, r {np.corrcoef(pred, true)[0, 1]:.2f}", fontsize=8)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"predicted {kind} IoU (IoU head)")
        ax.set_ylabel(f"true {kind} IoU")
        if len(pairs):
            ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(f"cycle {cycle}, every test detection", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
