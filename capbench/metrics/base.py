"""What every metric provides, and the helpers metrics share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from capbench.engines.base import Engine
from capbench.errors import ConfigError
from capbench.records import Caption, Sample, SampleScore

Judges = Mapping[str, Engine]
Unit = tuple[str, str, float, float]
"""One number behind a headline score: (sample id, stratum, value, weight).

A metric's headline equals the mean over strata of each stratum's weighted mean of values
(:func:`headline`), so the leaderboard can bootstrap any metric without knowing it.
"""
"""Judges by role: ``"text"`` (a text LLM) and, where a metric can use one, ``"vision"``."""


class Metric(Protocol):
    """A caption metric: batched scoring over samples, and a pure summary."""

    name: str
    higher_is_better: bool
    value_range: tuple[float, float]
    #: What the metric needs: "questions", "reference_caption", "reference_facts".
    needs: frozenset[str]
    #: Judge roles the metric uses, e.g. ("text",).
    judge_roles: tuple[str, ...]

    def config(self) -> dict[str, Any]:
        """Return every setting that changes scores (recorded in the manifest)."""
        ...

    def prompt_hashes(self) -> dict[str, str]:
        """Return the SHA-256 of each prompt template the metric uses."""
        ...

    def planned_requests(self, samples: Sequence[Sample], captions: Sequence[Caption]) -> int:
        """Return how many judge requests scoring ``captions[i]`` of ``samples[i]`` will make (0 if unknown ahead)."""
        ...

    def score(self, samples: Sequence[Sample], captions: Sequence[Caption], judges: Judges) -> list[SampleScore]:
        """Score ``captions[i]`` of ``samples[i]`` for every i, in stages of batched judge calls."""
        ...

    def summarize(self, scores: Sequence[SampleScore]) -> dict[str, Any]:
        """Aggregate per-sample scores into the metric's headline numbers (pure)."""
        ...

    def units(self, scores: Sequence[SampleScore]) -> list[Unit]:
        """Return the units whose :func:`headline` equals ``summarize(scores)["score"]``."""
        ...


def require_judge(judges: Judges, role: str, metric: str) -> Engine:
    """Return the judge for ``role`` or raise a configuration error that says how to give one."""
    engine = judges.get(role)
    if engine is None:
        raise ConfigError(f"metric {metric!r} needs a {role} judge; pass one with --judge ENGINE:MODEL")
    return engine


def headline(units: Sequence[Unit]) -> float | None:
    """Return the mean over strata of each stratum's weighted mean value (None for no units)."""
    sums: dict[str, list[float]] = {}
    for _, stratum, value, weight in units:
        acc = sums.setdefault(stratum, [0.0, 0.0])
        acc[0] += weight * value
        acc[1] += weight
    means = [total / weight for total, weight in sums.values() if weight > 0]
    return mean(means)


def mean(values: Sequence[float]) -> float | None:
    """Return the arithmetic mean, or None for no values."""
    return sum(values) / len(values) if values else None
