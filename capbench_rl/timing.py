"""Where a GRPO step's time goes: generation, rewards, the rest of the rollout, and the update.

TRL times a whole step (``step_time``) and, through its profiling context, single calls that
it sends only to experiment trackers. :class:`PhaseTimer` wraps three of the trainer's methods
on the instance to record their intervals: ``_generate`` (rollout generation),
``_calculate_rewards`` (every reward function) and ``_generate_and_score_completions`` (the
whole rollout phase: generation, rewards, log-probabilities, advantages). The update is the
step's time minus the rollout phase. The overlap of reward time with generation is measured
from the intervals, not assumed.

With judging that overlaps generation (:mod:`capbench_rl.overlap`), ``rewards`` is the reward
time left after generation (the exposed part), and the prefetches' intervals are recorded too
(:meth:`PhaseTimer.record`): ``prefetch`` is the wall time some prefetch ran, and
``prefetch_during_generation`` the part of it that ran while generation ran.
"""

from __future__ import annotations

import functools
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

#: Phase -> the GRPOTrainer method whose calls it times.
PHASES = {
    "generation": "_generate",
    "rewards": "_calculate_rewards",
    "rollout": "_generate_and_score_completions",
}

Interval = tuple[float, float]
#: Figures of :meth:`PhaseTimer.take`, all None where the trainer cannot be timed.
FIGURES = (
    "generation", "rewards", "rollout_other", "update", "reward_overlap", "prefetch", "prefetch_during_generation",
)  # fmt: skip


def overlap(first: Sequence[Interval], second: Sequence[Interval]) -> float:
    """Seconds during which some interval of ``first`` and some interval of ``second`` both run.

    Each list's intervals must not overlap among themselves (one phase runs one call at a time).
    """
    return sum(
        (max(0.0, min(a_end, b_end) - max(a_start, b_start)) for a_start, a_end in first for b_start, b_end in second),
        0.0,
    )


def union(intervals: Sequence[Interval]) -> list[Interval]:
    """The intervals merged where they overlap, in order: the wall time during which any of them runs."""
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class PhaseTimer:
    """Record the intervals of a GRPOTrainer's generation, reward and rollout calls."""

    def __init__(self, trainer: Any) -> None:
        self.intervals: dict[str, list[Interval]] = defaultdict(list)
        self.lock = threading.Lock()
        self.missing = [method for method in PHASES.values() if not callable(getattr(trainer, method, None))]
        if self.missing:  # another TRL version: time what exists, say what cannot be split
            warnings.warn(f"this TRL has no {', '.join(self.missing)}; those phases are not timed", stacklevel=2)
        for phase, method in PHASES.items():
            if method not in self.missing:
                setattr(trainer, method, self._timed(phase, getattr(trainer, method)))

    def _timed(self, phase: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                with self.lock:
                    self.intervals[phase].append((start, time.perf_counter()))

        return timed

    def record(self, phase: str, start: float, end: float) -> None:
        """Add an interval timed elsewhere (``prefetch``: judging that overlaps generation), from any thread."""
        with self.lock:
            self.intervals[phase].append((start, end))

    def take(self, step_seconds: float | None) -> dict[str, float | None]:
        """Return the phases' seconds since the last call (and forget them).

        ``update`` is ``step_seconds`` minus the rollout phase; ``rollout_other`` is the rollout
        phase's time outside generation and rewards (log-probabilities, advantages, gathering);
        ``reward_overlap`` is reward time that ran while generation ran; ``prefetch`` is the wall
        time during which some prefetch ran, ``prefetch_during_generation`` its part during generation.
        """
        with self.lock:
            taken = {phase: list(self.intervals.get(phase, [])) for phase in (*PHASES, "prefetch")}
            self.intervals.clear()
        if self.missing:
            return dict.fromkeys(FIGURES)
        seconds = {phase: sum((end - start for start, end in spans), 0.0) for phase, spans in taken.items()}
        update = None if step_seconds is None else max(0.0, step_seconds - seconds["rollout"])
        prefetch = union(taken["prefetch"])  # chunks' prefetches may run at the same time
        return {
            "generation": round(seconds["generation"], 4),
            "rewards": round(seconds["rewards"], 4),
            "rollout_other": round(max(0.0, seconds["rollout"] - seconds["generation"] - seconds["rewards"]), 4),
            "update": None if update is None else round(update, 4),
            "reward_overlap": round(overlap(taken["rewards"], taken["generation"]), 4),
            "prefetch": round(sum((end - start for start, end in prefetch), 0.0), 4),
            "prefetch_during_generation": round(overlap(prefetch, taken["generation"]), 4),
        }
