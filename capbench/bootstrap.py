"""The leaderboard's statistics: a stratified bootstrap of any metric's headline, and paired differences.

Every metric gives *units* (sample id, stratum, value, weight) whose stratified mean is its
headline (:func:`capbench.metrics.base.headline`), so one vectorised resampling serves them all.
A generator per row (:func:`unit_rng`), seeded by the leaderboard's seed and the units it
resamples, makes each interval a function of the row's own scores.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from capbench.metrics.base import Unit, headline

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "LEVEL", "ROUNDS", "Difference", "bootstrap", "paired_difference", "percentile_interval", "resample", "unit_rng",
]  # fmt: skip

ROUNDS = 1000
LEVEL = 0.95
#: Cap on one resampling block (rounds × units) so a huge stratum does not exhaust memory.
_BLOCK = 4_000_000


def resample(
    values: np.ndarray, weights: np.ndarray, strata: Sequence[str], rng: np.random.Generator, rounds: int = ROUNDS
) -> np.ndarray:
    """Return ``(series, rounds)`` resampled headlines of ``series`` aligned rows of units.

    Units are drawn with replacement within each stratum (as many as it has); every series gets
    the same draws, which makes differences between series paired. A round's statistic is the
    mean over strata of each stratum's weighted mean, as :func:`~capbench.metrics.base.headline`.
    Each stratum's draws form a (rounds × size) index matrix, turned into counts per unit, so a
    weighted mean of every round is one matrix product.
    """
    import numpy as np

    positions: dict[str, list[int]] = {}
    for index, stratum in enumerate(strata):
        positions.setdefault(stratum, []).append(index)
    total = np.zeros((rounds, values.shape[0]))
    counted = np.zeros((rounds, values.shape[0]))
    for members in positions.values():
        pos = np.asarray(members)
        size = len(pos)
        weighted, mass_of = np.ascontiguousarray((weights * values)[:, pos].T), np.ascontiguousarray(weights[:, pos].T)
        block = max(1, _BLOCK // size)
        for start in range(0, rounds, block):
            n = min(block, rounds - start)
            draws = rng.integers(0, size, size=(n, size))
            flat = (draws + size * np.arange(n)[:, None]).ravel()
            counts = np.bincount(flat, minlength=n * size).reshape(n, size).astype(float)
            # einsum, not @: a BLAS product of these thin shapes is erratic when OpenBLAS threads share few cores.
            mass = np.einsum("rs,sk->rk", counts, mass_of)
            with np.errstate(invalid="ignore", divide="ignore"):
                means = np.einsum("rs,sk->rk", counts, weighted) / mass
            # A stratum whose drawn weights are all zero drops out of that round, as in headline().
            ok = mass > 0
            total[start : start + n] += np.where(ok, means, 0.0)
            counted[start : start + n] += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, total / np.maximum(counted, 1), np.nan).T


def percentile_interval(stats: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Return the percentile interval of the resampled statistics (NaN rounds dropped)."""
    import numpy as np

    kept = stats[~np.isnan(stats)]
    if kept.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(kept, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def bootstrap(units: Sequence[Unit], rng: np.random.Generator, rounds: int = ROUNDS) -> tuple[float, float]:
    """Return the 95% stratified bootstrap interval of the headline of ``units``."""
    import numpy as np

    if not units:
        return math.nan, math.nan
    values = np.array([[u[2] for u in units]], dtype=float)
    weights = np.array([[u[3] for u in units]], dtype=float)
    return percentile_interval(resample(values, weights, [u[1] for u in units], rng, rounds)[0])


def unit_rng(seed: int, purpose: str, *unit_lists: Sequence[Unit]) -> np.random.Generator:
    """Return a generator seeded by ``seed``, ``purpose`` and the units it resamples, and by nothing else.

    One shared stream would give a row other draws whenever a row before it came or went; this way
    a row's interval (and a paired difference's) is a function of its own scores and the seed.
    """
    import numpy as np

    # Values as floats: a weight of 3 (older results, read through the metric's code) and 3.0 are the same unit.
    canonical = [[(str(u[0]), str(u[1]), float(u[2]), float(u[3])) for u in units] for units in unit_lists]
    text = json.dumps([seed, purpose, *canonical], separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


@dataclass(frozen=True)
class Difference:
    """A paired difference of headlines (model − baseline) over the units both have."""

    point: float
    low: float
    high: float
    units: int
    #: How many images (sample ids) the two share.
    images: int = 0

    @property
    def excludes_zero(self) -> bool:
        """Return whether the interval lies wholly on one side of zero."""
        return self.low > 0 or self.high < 0


def paired_difference(
    units: Sequence[Unit], base: Sequence[Unit], rng: np.random.Generator, rounds: int = ROUNDS
) -> Difference | None:
    """Return the paired bootstrap difference of two unit lists, aligned by (sample id, stratum).

    The point and the interval are both over the shared units only. None when they share no unit.
    """
    import numpy as np

    mine, theirs = _keyed(units), _keyed(base)
    keys = [k for k in theirs if k in mine]
    if not keys:
        return None
    values = np.array([[mine[k][0] for k in keys], [theirs[k][0] for k in keys]], dtype=float)
    weights = np.array([[mine[k][1] for k in keys], [theirs[k][1] for k in keys]], dtype=float)
    strata = [k[1] for k in keys]
    stats = resample(values, weights, strata, rng, rounds)
    low, high = percentile_interval(stats[0] - stats[1])
    point = headline([(k[0], k[1], mine[k][0], mine[k][1]) for k in keys])
    other = headline([(k[0], k[1], theirs[k][0], theirs[k][1]) for k in keys])
    if point is None or other is None:
        return None
    return Difference(point - other, low, high, len(keys), len({k[0] for k in keys}))


def _keyed(units: Iterable[Unit]) -> dict[tuple[str, str, int], tuple[float, float]]:
    """Key units by (sample id, stratum, occurrence), so repeated units of one image stay apart."""
    seen: dict[tuple[str, str], int] = {}
    out = {}
    for sample_id, stratum, value, weight in units:
        n = seen[(sample_id, stratum)] = seen.get((sample_id, stratum), -1) + 1
        out[(sample_id, stratum, n)] = (value, weight)
    return out
