"""The advantages TRL's GRPOTrainer computes from several rewards, as plain numpy (for checks and logs).

- **c-GDPO** (TRL ``multi_objective_aggregation="normalize_then_sum"``): normalise each reward
  within its rollout group, take the weighted sum, then normalise over the batch.
- **GRPO** (``"sum_then_normalize"``, ``scale_rewards="group"``): weighted sum, then normalise
  within each group.

Both follow TRL's conventions exactly: standard deviations with Bessel's correction, ``1e-4``
added to every divisor, a reward of ``None`` (NaN) left out of its group's statistics and
counted as 0 in the weighted sum after normalisation, and a rollout with no reward at all
given advantage 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

EPS = 1e-4
Aggregation = Literal["normalize_then_sum", "sum_then_normalize"]


def _nanstd(values: np.ndarray, axis: int | None = None, keepdims: bool = False) -> np.ndarray:
    """Sample standard deviation ignoring NaNs (NaN where fewer than two values), as TRL's ``nanstd``."""
    count = np.sum(~np.isnan(values), axis=axis, keepdims=keepdims)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(values, axis=axis, keepdims=True)
        variance = np.nanmean((values - mean) ** 2, axis=axis, keepdims=keepdims)
        return np.where(count > 1, np.sqrt(variance * count / (count - 1)), np.nan)


def advantages(
    rewards: Sequence[Sequence[float | None]],
    weights: Sequence[float],
    group_size: int,
    aggregation: Aggregation = "normalize_then_sum",
) -> np.ndarray:
    """Return one advantage per rollout from a (rollouts × rewards) table, rollouts grouped in order.

    Raises:
        ValueError: the table's shape does not fit ``weights`` and ``group_size``.
    """
    table = np.array([[np.nan if v is None else float(v) for v in row] for row in rewards], dtype=np.float64)
    n, k = table.shape
    if k != len(weights) or n % group_size:
        raise ValueError(f"{n} rollouts × {k} rewards do not fit {len(weights)} weights and groups of {group_size}")
    w = np.asarray(weights, dtype=np.float64)
    unscorable = np.isnan(table).all(axis=1)
    with np.errstate(invalid="ignore"):
        if aggregation == "normalize_then_sum":
            grouped = table.reshape(-1, group_size, k)
            mean = np.nanmean(grouped, axis=1, keepdims=True)
            std = _nanstd(grouped, axis=1, keepdims=True) if group_size > 1 else np.zeros_like(mean)
            summed = np.nansum(((grouped - mean) / (std + EPS)).reshape(n, k) * w, axis=1)
            summed[unscorable] = np.nan
            out = (summed - np.nanmean(summed)) / (_nanstd(summed) + EPS)
        elif aggregation == "sum_then_normalize":
            summed = np.nansum(table * w, axis=1)
            summed[unscorable] = np.nan
            grouped = summed.reshape(-1, group_size)
            mean = np.repeat(np.nanmean(grouped, axis=1), group_size)
            std = np.repeat(_nanstd(grouped, axis=1), group_size) if group_size > 1 else np.zeros(n)
            out = (summed - mean) / (std + EPS)
        else:
            raise ValueError(f"unknown aggregation {aggregation!r}")
    return np.nan_to_num(out, nan=0.0)
