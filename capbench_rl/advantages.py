"""The advantages capbench-rl trains with, from several rewards, as plain numpy (for checks and logs).

- **c-GDPO** (TRL ``multi_objective_aggregation="normalize_then_sum"``): normalise each reward
  within its rollout group, take the weighted sum, then normalise over the batch.
- **GRPO** (``"sum_then_normalize"``, ``scale_rewards="group"``): weighted sum, then normalise
  within each group.

Both follow TRL's conventions: standard deviations with Bessel's correction, ``1e-4`` added to
every divisor, and a rollout with no reward at all left out of the statistics with advantage 0.
A failed reward (``None``, NaN) is never scored as 0:

- c-GDPO leaves it out of that reward's group statistics, and it adds nothing to the rollout's
  weighted sum of normalised rewards (as the group's mean would);
- GRPO cannot sum a reward that is missing, so the whole rollout is left out of its group's
  statistics and gets advantage 0. TRL alone would ``nansum`` the failed reward as 0:
  :class:`LeaveOutFailed` makes its trainer do this instead.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any, Literal

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
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a group or batch with no scored rollout: NaN, then 0
        if aggregation == "normalize_then_sum":
            grouped = table.reshape(-1, group_size, k)
            mean = np.nanmean(grouped, axis=1, keepdims=True)
            std = _nanstd(grouped, axis=1, keepdims=True) if group_size > 1 else np.zeros_like(mean)
            summed = np.nansum(((grouped - mean) / (std + EPS)).reshape(n, k) * w, axis=1)
            summed[unscorable] = np.nan
            out = (summed - np.nanmean(summed)) / (_nanstd(summed) + EPS)
        elif aggregation == "sum_then_normalize":
            summed = np.nansum(table * w, axis=1)
            summed[np.isnan(table).any(axis=1)] = np.nan  # a failed reward: no sum, so no place in the group
            grouped = summed.reshape(-1, group_size)
            mean = np.repeat(np.nanmean(grouped, axis=1), group_size)
            std = np.repeat(_nanstd(grouped, axis=1), group_size) if group_size > 1 else np.zeros(n)
            out = (summed - mean) / (std + EPS)
        else:
            raise ValueError(f"unknown aggregation {aggregation!r}")
    return np.nan_to_num(out, nan=0.0)


class LeaveOutFailed:
    """Make a GRPOTrainer leave a rollout with a failed reward out of its group (GRPO's rule above).

    TRL (>= 1.6) leaves out of the statistics, with advantage 0, a rollout whose rewards are all
    NaN. So the trainer's ``_calculate_rewards`` is wrapped on the instance: in the table it
    returns (all processes' rollouts × rewards), every reward of a rollout with a failed one
    becomes NaN. The table as the rewards gave it is kept in :attr:`scored` for the logs.
    """

    def __init__(self, trainer: Any) -> None:
        self.scored: list[list[float]] | None = None
        method = trainer._calculate_rewards

        @functools.wraps(method)
        def calculate(*args: Any, **kwargs: Any) -> Any:
            table = method(*args, **kwargs)
            self.scored = table.tolist()
            table = table.clone()
            table[table.isnan().any(dim=1)] = float("nan")
            return table

        trainer._calculate_rewards = calculate
