"""Uncertainty measures, written once and used by scoring (tables) and samplers (ranking).

- entropy of class posteriors;
- TSP (Wang et al., BMVC 2020): a detection's s = exp(-std(c, b, m)) * mean(c, b, m) and an
  image's S = exp(-std(s)) * mean(s), both `confidence_spread`; population std (ddof = 0);
- MC-dropout disagreement: 1 - (1 - class_var)(1 - box)(1 - mask).
"""

from __future__ import annotations

import numpy as np


def entropy(posteriors: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of class posteriors, background included."""
    p = np.clip(np.asarray(posteriors, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def confidence_spread(mean: np.ndarray | float, std: np.ndarray | float) -> np.ndarray:
    """exp(-std) * mean: high only when the values are high and agree (TSP's s and S)."""
    return np.exp(-np.asarray(std, dtype=np.float64)) * np.asarray(mean, dtype=np.float64)


def instance_scores(components: np.ndarray) -> np.ndarray:
    """N x k matrix of per-detection scores in [0, 1] (c, b, m) -> N TSP instance scores s."""
    components = np.asarray(components, dtype=np.float64)
    return confidence_spread(components.mean(axis=1), components.std(axis=1))


def image_score(values: np.ndarray) -> float:
    """TSP's image score S over one image's instance scores; 0 when it has none (nothing
    confident was found)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 0.0
    return float(confidence_spread(values.mean(), values.std()))


def mc_disagreement(class_var: np.ndarray, box: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """MC-dropout certainties multiplied as in Morrison et al.'s and MaskAL's instance certainty;
    each factor lies in [0, 1] (the summed class variance is at most 1 - 1/(C+1))."""
    class_var, box, mask = (np.asarray(a, dtype=np.float64) for a in (class_var, box, mask))
    return 1.0 - (1.0 - class_var) * (1.0 - box) * (1.0 - mask)
