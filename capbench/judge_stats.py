"""Agreement statistics of two raters: two judges, or a judge and humans.

Pure functions over numbers, shared by ``capbench compare-judges`` (``capbench/judge_compare.py``)
and ``capbench agreement`` (``capbench/agreement.py``):

- ``rank_correlation``: Spearman's ρ with average ranks and Kendall's τ-b, ties kept as ties, and
  *undefined* (None, with the reason) when a side is all equal or too few items are shared;
- ``cohen_kappa`` / ``kappa_of_tables``: raw agreement and Cohen's κ of categorical verdicts;
- ``weighted_correlations``: Pearson and Spearman of many bootstrap resamples at once, each given as
  how often it draws each pair (equal to scipy on the repeated data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats


def all_equal(values: np.ndarray) -> bool:
    """Tell whether every value equals the first (to 1e-12): a side with no variation to correlate."""
    return bool(np.allclose(values, values[0], rtol=1e-12, atol=1e-12))


def correlation_undefined(
    x: Sequence[float], y: Sequence[float], labels: tuple[str, str] = ("x", "y"), minimum: int = 2
) -> str | None:
    """Return why a correlation of ``x`` with ``y`` is undefined (too few items, one side all equal), else None."""
    if len(x) < minimum:
        return f"only {len(x)} item(s) in both; a correlation needs at least {minimum}"
    for label, values in zip(labels, (x, y), strict=True):
        array = np.asarray(values, dtype=float)
        if all_equal(array):
            return f"every {label} is {array[0]:g}: an all-tied ranking (zero variance) has no correlation"
    return None


def rank_correlation(
    a: Mapping[str, float], b: Mapping[str, float], labels: tuple[str, str] = ("a", "b"), minimum: int = 2
) -> dict[str, Any]:
    """Spearman's ρ (average ranks) and Kendall's τ-b of two scorings of the same items, ties kept as ties.

    Args:
        a: Item → score (higher is better or lower, as long as both sides agree); NaN means unscored.
        b: The other side's scores.
        labels: What each side's values are, for the reason an undefined correlation gives.
        minimum: Fewest shared items for a correlation.

    Returns:
        ``{"spearman", "kendall", "shared", "undefined"}``: the two correlations (None when
        undefined), how many items both scored, and why it is undefined (None when it is not).
    """
    shared = [k for k in a if k in b and math.isfinite(a[k]) and math.isfinite(b[k])]
    x, y = [float(a[k]) for k in shared], [float(b[k]) for k in shared]
    why = correlation_undefined(x, y, labels, minimum)
    if why is not None:
        return {"spearman": None, "kendall": None, "shared": len(shared), "undefined": why}
    spearman, kendall = spearman_kendall(np.array(x), np.array(y))
    return {"spearman": spearman, "kendall": kendall, "shared": len(shared), "undefined": None}


def cohen_kappa(x: np.ndarray, y: np.ndarray, categories: int = 3) -> tuple[float, float]:
    """Return (raw agreement, Cohen's κ) of two raters' category codes 0..categories-1; κ is NaN when undefined.

    κ = (p_o − p_e) / (1 − p_e), p_e from each rater's marginal shares; undefined (0/0) when both
    raters used one and the same category throughout.
    """
    table = np.bincount(np.asarray(x) * categories + np.asarray(y), minlength=categories * categories)
    agreement, kappa = kappa_of_tables(table[None, :].astype(float), categories)
    return float(agreement[0]), float(kappa[0])


def kappa_of_tables(tables: np.ndarray, categories: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Raw agreement and Cohen's κ of each row of flattened confusion counts (rows, categories²); NaN if undefined."""
    n = tables.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = tables.reshape(-1, categories, categories) / n[:, None, None]
        observed = np.trace(shares, axis1=1, axis2=2)
        expected = (shares.sum(axis=2) * shares.sum(axis=1)).sum(axis=1)
        kappa = np.where(expected < 1 - 1e-12, (observed - expected) / (1 - expected), np.nan)
    return observed, kappa


def weighted_correlations(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson and Spearman of each resample of the pairs (x, y): row r draws pair j ``weights[r, j]`` times.

    Equal to ``scipy.stats.pearsonr`` and ``spearmanr`` on the expanded data (``np.repeat``), ties
    given average ranks; NaN where a resample has one side all equal.
    """
    return _weighted_pearson(x, y, weights), _weighted_pearson(_midranks(x, weights), _midranks(y, weights), weights)


def _weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    n = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = x - ((weights * x).sum(axis=1) / n)[:, None]
        dy = y - ((weights * y).sum(axis=1) / n)[:, None]
        sxx, syy, sxy = ((weights * a * b).sum(axis=1) for a, b in ((dx, dx), (dy, dy), (dx, dy)))
        flat = (sxx <= 1e-12 * (weights * x * x).sum(axis=1)) | (syy <= 1e-12 * (weights * y * y).sum(axis=1))
        return np.where(flat | (sxx <= 0) | (syy <= 0), np.nan, sxy / np.sqrt(sxx * syy))


def _midranks(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each item's average rank in each row's resample (``rankdata`` of the expanded data), by row."""
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    per_group = np.add.reduceat(weights[..., order], np.flatnonzero(new_group), axis=-1)
    middle = np.cumsum(per_group, axis=-1) - (per_group - 1) / 2
    ranks = np.empty_like(weights, dtype=float)
    ranks[..., order] = middle[..., np.cumsum(new_group) - 1]
    return ranks


def spearman_kendall(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's ρ (average ranks) and Kendall's τ-b of the pairs (x, y); NaN for fewer than 2 or a side all equal."""
    if len(x) < 2 or all_equal(x) or all_equal(y):
        return math.nan, math.nan
    return float(stats.spearmanr(x, y).statistic), float(stats.kendalltau(x, y, variant="b").statistic)
