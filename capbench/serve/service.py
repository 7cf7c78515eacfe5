"""The scoring behind the HTTP service: checked settings, the judges, and batches of items scored.

:func:`prepare` checks everything (metric settings, judges, the benchmark, image folders, the
token) without loading a model; :class:`Service` loads the judges behind capbench's cache and
scores a batch of requests' items with one ``metric.score`` call per metric, so the items of
concurrent callers share engine batches, exactly as ``capbench eval`` would score them. Several
batches may be scored at once (from several threads): each counts its own judge usage.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import capbench
from capbench import Caption, ConfigError, SampleScore
from capbench.api import judge_spec, open_cache
from capbench.engines.cache import CachedEngine, Tally
from capbench.metrics.facts import concurrent
from capbench.serve.config import ServeConfig
from capbench.serve.images import ImageStore
from capbench.serve.items import Catalog, Item

#: Per-sample values that read a fact metric's linguistic rating; a batch asking none of them skips that stage.
RATED_VALUES = frozenset({"linguistic", "b_capscore"})
USAGE_KEYS = ("judge_calls", "cache_hits", "failures")


@dataclass
class Setup:
    """A service checked and ready to start: nothing has loaded yet."""

    config: ServeConfig
    eval_config: capbench.EvalConfig
    #: Metrics by name; ``unrated`` holds second instances of fact metrics without the linguistic rating.
    metrics: dict[str, Any]
    unrated: dict[str, Any]
    catalog: Catalog
    images_roots: tuple[Path, ...]
    token: str | None
    modes: dict[str, str]


def prepare(config: ServeConfig, environ: Mapping[str, str] | None = None) -> Setup:
    """Check every setting of the service before any judge loads or the port opens.

    Raises:
        ConfigError: an unknown metric or setting, a judge spec or option, a missing image folder,
            an empty token variable.
        InputError: the benchmark's files cannot be used.
    """
    environ = os.environ if environ is None else environ
    offered = [row["name"] for row in capbench.catalogue(load_data=False)["metrics"] if "error" not in row]
    unknown = sorted(set(config.metric_settings) - set(offered))
    if unknown:
        raise ConfigError(f"metric settings name unknown metric {unknown[0]!r}; the metrics: {', '.join(offered)}")
    eval_config = config.eval_config(offered)
    built, modes = capbench.build_metrics(eval_config)
    metrics = {m.name: m for m in built}
    unrated = {}
    for metric in capbench.build_metrics(eval_config)[0]:
        if getattr(metric, "linguistic", False):
            metric.linguistic = False  # FactMetric's switch of the rating stage, on this instance only
            unrated[metric.name] = metric
    for role in ("judge", "vision_judge"):
        judge_spec(eval_config, role)  # engine names and options, before anything loads
    samples: dict[str, Any] = {}
    if config.benchmark is not None:
        bench = capbench.load_benchmark(
            config.benchmark, with_images=config.vision_judge is not None, **dict(config.benchmark_options)
        )
        samples = bench.by_id()
    elif config.benchmark_options:
        raise ConfigError("benchmark options are set without a benchmark: give --benchmark NAME")
    roots = []
    for root in config.images_root:
        path = Path(root).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"--images-root {root}: no such folder; give folders that hold the images items name")
        roots.append(path)
    token = environ.get(config.token_env)
    if token is not None and not token.strip():
        raise ConfigError(
            f"{config.token_env} is set but empty: set it to the token clients must send, or unset it to serve "
            "without one"
        )
    catalog = Catalog(
        rewards={r: v for r, v in capbench.reward_table().items() if v[0] in metrics},
        needs={name: frozenset(capbench.describe(m).needs) for name, m in metrics.items()},
        samples=samples,
        benchmark=config.benchmark,
        max_items=config.max_items,
    )
    return Setup(config, eval_config, metrics, unrated, catalog, tuple(roots), token, modes)


class Service:
    """The judges and metrics of a :class:`Setup`, scoring batches (several at once, from worker threads).

    Args:
        setup: What :func:`prepare` checked.
        judges: Judges by role, already behind the cache (default: built from the setup; this loads them).
    """

    def __init__(self, setup: Setup, judges: Mapping[str, CachedEngine] | None = None) -> None:
        self.setup = setup
        self.cache = None
        if judges is None:
            self.cache = open_cache(setup.eval_config)
            judges = capbench.build_judges(setup.eval_config, self.cache)
            for judge in judges.values():
                judge.check()  # a served judge that is down is named now, not at the first request
        self.judges = dict(judges)
        self.images = ImageStore(setup.images_roots, setup.config.max_body_bytes)

    @property
    def catalog(self) -> Catalog:
        """What the service offers."""
        return self.setup.catalog

    @property
    def max_batches(self) -> int:
        """Batches to judge at once: ``--max-batches``, or 1 when a judge takes one batch at a time.

        A judge that cannot be called from two threads (an in-process model) runs one engine batch
        at a time whatever the service does; batches started beside one would only wait for it, and
        in smaller engine batches than the requests that gathered meanwhile would make together.
        """
        if all(concurrent(judge) for judge in self.judges.values()):
            return self.setup.config.max_batches
        return 1

    def fingerprints(self) -> dict[str, Any]:
        """Each judge's fingerprint, by role."""
        return {role: judge.fingerprint() for role, judge in self.judges.items()}

    def usage(self) -> dict[str, int]:
        """Judge calls, cache hits and failed calls so far, over every judge."""
        total = dict.fromkeys(USAGE_KEYS, 0)
        for judge in self.judges.values():
            total["judge_calls"] += judge.stats.calls
            total["cache_hits"] += judge.stats.cache_hits
            total["failures"] += judge.stats.failures
        return total

    def close(self) -> None:
        """Close the judges (their connections) and the judge-call cache."""
        for judge in self.judges.values():
            close = getattr(judge, "close", None)
            if callable(close):
                close()
        if self.cache is not None:
            self.cache.close()

    def score(self, jobs: Sequence[Sequence[Item]]) -> tuple[list[list[dict[str, Any]]], dict[str, int]]:
        """Score the items of several requests together: one ``metric.score`` per metric over all of them.

        Returns each request's results (in item order) and the batch's judge usage: exact while
        other batches run, as each batch's judges count into its own tally (identical requests of
        two batches are judged once, and count as a cache hit for the one that waited). A metric
        that raises fails only its own values, each with the reason; the other metrics are still scored.
        """
        flat = [item for items in jobs for item in items]
        wanted: dict[str, list[int]] = {}
        rated: dict[str, bool] = {}
        for n, item in enumerate(flat):
            if item.problem is not None:  # answered with its reason, not judged
                continue
            for reward in item.rewards:
                metric, key, _ = self.catalog.rewards[reward]
                wanted.setdefault(metric, []).append(n)
                rated[metric] = rated.get(metric, False) or key in RATED_VALUES
            for metric in item.metrics:
                wanted.setdefault(metric, []).append(n)
                rated[metric] = True
        scores: list[dict[str, SampleScore | str]] = [{} for _ in flat]
        counted = Tally()
        judges = {role: judge.tallied(counted) for role, judge in self.judges.items()}
        for name, indices in wanted.items():
            indices = list(dict.fromkeys(indices))  # an item asking two rewards of one metric is scored once
            metric = self.setup.metrics[name]
            if not rated[name]:
                metric = self.setup.unrated.get(name, metric)
            got = self._score_metric(name, metric, [flat[n] for n in indices], judges)
            for n, score in zip(indices, got, strict=True):
                scores[n][name] = score
        usage = counted.to_dict()
        results = [self._result(item, got) for item, got in zip(flat, scores, strict=True)]
        out, start = [], 0
        for items in jobs:
            out.append(results[start : start + len(items)])
            start += len(items)
        return out, usage

    def _score_metric(
        self, name: str, metric: Any, items: Sequence[Item], judges: Mapping[str, Any]
    ) -> list[SampleScore | str]:
        """Score items with one metric call; if it raises, item by item, so one bad item fails only itself."""
        captions = [Caption(item.sample.id, item.caption) for item in items]
        try:
            return list(metric.score([item.sample for item in items], captions, judges if metric.judge_roles else {}))
        except Exception as exc:  # a judge or metric that fails costs its own values, never the service
            if len(items) == 1:
                return [f"metric {name!r} failed: {type(exc).__name__}: {exc}"[:500]]
        return [got for item in items for got in self._score_metric(name, metric, [item], judges)]

    def _result(self, item: Item, scores: Mapping[str, SampleScore | str]) -> dict[str, Any]:
        """One item's answer: each reward in [0, 1] or null with its reason, each metric's values."""
        if item.problem is not None:
            return {
                "id": item.id,
                "rewards": dict.fromkeys(item.rewards),
                "errors": dict.fromkeys((*item.rewards, *item.metrics), item.problem),
                "metrics": dict.fromkeys(item.metrics),
            }
        rewards: dict[str, float | None] = {}
        errors: dict[str, str] = {}
        for reward in item.rewards:
            name, key, scale = self.catalog.rewards[reward]
            score = scores[name]
            value = None if isinstance(score, str) else score.values.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                rewards[reward] = float(value) / scale
            else:
                rewards[reward] = None
                errors[reward] = score if isinstance(score, str) else reason(score)
        metrics: dict[str, dict[str, Any] | None] = {}
        for name in item.metrics:
            score = scores[name]
            if isinstance(score, str):
                metrics[name], errors[name] = None, score
                continue
            metrics[name] = {k: _finite(v) for k, v in score.values.items()}
            if score.unscored and all(v is None for v in metrics[name].values()):
                errors[name] = reason(score)
        return {"id": item.id, "rewards": rewards, "errors": errors, "metrics": metrics}


def reason(score: SampleScore) -> str:
    """Say why a sample has no value: the metric's own error, the first failed judgment's, or the counts."""
    details = score.details if isinstance(score.details, Mapping) else {}
    own = details.get("error") if isinstance(details.get("error"), str) else None
    first = _first_error({k: v for k, v in details.items() if k != "error"})
    if own and first:
        return f"{own} ({first})"[:500]
    if own or first:
        return str(own or first)[:500]
    return (
        f"the judge gave no usable verdict ({score.failed} failed call(s), {score.unscored} unscored "
        "judgment(s)); the raw replies are in the judge cache"
    )


def _first_error(value: Any, depth: int = 0) -> str | None:
    """The first ``error`` text in a metric's details (with its stage, where it names one)."""
    if depth > 4:
        return None
    if isinstance(value, Mapping):
        error = value.get("error")
        if isinstance(error, str) and error:
            stage = value.get("stage")
            return f"{stage}: {error}" if isinstance(stage, str) else error
        value = list(value.values())
    if isinstance(value, list):
        for child in value:
            found = _first_error(child, depth + 1)
            if found:
                return found
    return None


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def split_usage(usage: Mapping[str, int], sizes: Sequence[int]) -> list[dict[str, int]]:
    """Share a batch's judge usage among its requests by their item counts (the shares sum to the whole)."""
    total = sum(sizes) or 1
    out: list[dict[str, int]] = [{} for _ in sizes]
    for key in USAGE_KEYS:
        exact = [usage.get(key, 0) * size / total for size in sizes]
        floors = [math.floor(x) for x in exact]
        left = usage.get(key, 0) - sum(floors)
        order = sorted(range(len(sizes)), key=lambda i: exact[i] - floors[i], reverse=True)
        for i in order[:left]:
            floors[i] += 1
        for i, value in enumerate(floors):
            out[i][key] = value
    return out
