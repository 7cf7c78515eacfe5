"""Score caption sets on a benchmark with a list of metrics, writing resumable runs.

This is the library behind ``capbench eval``: the CLI parses options and prints; everything
that decides what gets judged and written lives here.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from capbench import __version__
from capbench.config import Shard
from capbench.coverage import sample_coverage, warn_partial
from capbench.data import Benchmark
from capbench.engines.base import Engine, EngineWrapper, OnResult, Request, Response, preflight
from capbench.engines.cache import CachedEngine, CallStats
from capbench.errors import CapbenchError, ConfigError, InputError
from capbench.hashing import content_hash, sha256_text
from capbench.metrics import describe
from capbench.metrics.base import Metric
from capbench.records import RESULTS_FORMAT, Caption, CaptionSet, Sample, SampleScore
from capbench.runs import RunDir


class Progress(Protocol):
    """Receives progress: runs starting, judge requests planned, submitted and completed."""

    def start(self, caption_set: str, planned: int) -> None:
        """A caption set's run starts; ``planned`` judge requests are expected (0 if unknown)."""
        ...

    def submitted(self, n: int) -> None:
        """``n`` more judge requests were submitted."""
        ...

    def completed(self, cached: bool) -> None:
        """One judge request completed (from the cache or not)."""
        ...


class FailureWatch(EngineWrapper):
    """An engine wrapper that keeps the first failed response's error, to show it with the counts."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.first_error: str | None = None

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        """Run the batch, noting the first error."""
        responses = self.engine.run(requests, on_result)
        if self.first_error is None:
            self.first_error = next((r.error or "no response" for r in responses if not r.ok), None)
        return responses


class ProgressEngine(EngineWrapper):
    """An engine wrapper that reports each batch's size and each completed request."""

    def __init__(self, engine: Engine, progress: Progress) -> None:
        super().__init__(engine)
        self.progress = progress

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        """Run the batch, ticking progress as responses arrive."""
        self.progress.submitted(len(requests))

        def tick(index: int, response: Response) -> None:
            self.progress.completed(response.cached)
            if on_result is not None:
                on_result(index, response)

        return self.engine.run(requests, tick)


@dataclass
class RunResult:
    """What one caption set's run produced (the API turns it into a :class:`capbench.results.SetResult`)."""

    caption_set: str
    path: Path
    summaries: dict[str, dict[str, Any]]
    samples: int
    stats: dict[str, Any]
    unscored: dict[str, int] = field(default_factory=dict)
    resumed: dict[str, int] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None


def select_samples(benchmark: Benchmark, captions: CaptionSet, limit: int | None = None) -> list[Sample]:
    """Return the benchmark's samples that ``captions`` covers, in benchmark order.

    Raises:
        InputError: the caption set names ids the benchmark does not have.
    """
    known = benchmark.by_id()
    unknown = [i for i in captions.captions if i not in known]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5]) + (" …" if len(unknown) > 5 else "")
        raise InputError(
            f"{captions.source or captions.name}: {len(unknown)} id(s) are not in benchmark "
            f"{benchmark.name!r} ({shown}); `capbench list` shows its ids' source, fix or drop them"
        )
    chosen = [s for s in benchmark.samples if s.id in captions.captions]
    return chosen[:limit] if limit is not None else chosen


def shard_block(shard: Shard, chosen: Sequence[Sample], captions: CaptionSet | None = None) -> dict[str, Any]:
    """What a shard's manifest (or ``generation.json``) says about the evaluation it is a part of.

    ``chosen`` is the whole selection the shards split; ``captions`` the caption set scored.
    """
    block: dict[str, Any] = {
        "index": shard.index,
        "count": shard.count,
        "ids": [s.id for s in shard.part(chosen)],
        "selection": {"samples": len(chosen), "ids_sha256": content_hash([s.id for s in chosen])},
    }
    if captions is not None:
        known = all(s.id in captions.captions for s in chosen)
        # null when the shard knows only its own captions (those its model generated)
        block["selection"]["captions_sha256"] = (
            content_hash({s.id: captions.captions[s.id] for s in chosen}) if known else None
        )
    return block


def check_needs(benchmark: Benchmark, metrics: Sequence[Metric]) -> None:
    """Refuse metrics whose inputs the benchmark lacks, before any judge is called."""
    for metric in metrics:
        if "questions" in metric.needs and not any(s.questions for s in benchmark.samples):
            raise ConfigError(
                f"metric {metric.name!r} needs multiple-choice questions; benchmark {benchmark.name!r} has none"
            )
        if "baselines" in metric.needs and not any(s.baselines for s in benchmark.samples):
            raise ConfigError(
                f"metric {metric.name!r} needs baseline captions to compare with; benchmark {benchmark.name!r} has none"
            )
        if "reference_caption" in metric.needs and not all(
            s.reference_caption.strip() or s.reference_facts for s in benchmark.samples
        ):
            raise ConfigError(
                f"metric {metric.name!r} needs reference captions or facts; samples of {benchmark.name!r} lack both"
            )


def run_config(benchmark: str, metric: Metric, judges: Mapping[str, Engine]) -> dict[str, Any]:
    """Return everything that, if changed, makes stored scores of ``metric`` incomparable."""
    return {
        "benchmark": benchmark,
        "metric": metric.name,
        "config": metric.config(),
        "prompts": metric.prompt_hashes(),
        "judges": {role: judges[role].fingerprint() for role in metric.judge_roles if role in judges},
    }


def config_changes(before: Any, after: Any, path: str = "") -> list[str]:
    """Name what differs between two run configs, as ``key.path: old -> new`` lines."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        out: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            out += config_changes(before.get(key), after.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if before == after else [f"{path}: {_short(before)} -> {_short(after)}"]


def _short(value: Any) -> str:
    text = "unset" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Evaluator:
    """Scores caption sets with metrics and judges, one resumable run directory per set.

    ``settings``, the :class:`~capbench.config.EvalConfig` fields that built ``metrics``
    (:func:`capbench.shards.scoring_settings`), go into a shard's manifest, so that the merge of
    the shards builds the same metrics.
    """

    def __init__(
        self,
        benchmark: Benchmark,
        metrics: Sequence[Metric],
        judges: Mapping[str, CachedEngine],
        results_dir: Path,
        batch_size: int = 8,
        progress: Progress | None = None,
        command: Sequence[str] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        check_needs(benchmark, metrics)
        self.benchmark = benchmark
        self.metrics = list(metrics)
        self.cached_judges = dict(judges)
        self.watches = {role: FailureWatch(j) for role, j in judges.items()}
        self.judges: dict[str, Engine] = (
            {role: ProgressEngine(w, progress) for role, w in self.watches.items()} if progress else dict(self.watches)
        )
        self.results_dir = Path(results_dir)
        self.batch_size = max(1, batch_size)
        self.command = list(command) if command is not None else list(sys.argv)
        self.progress = progress
        self.settings = dict(settings) if settings is not None else None

    def evaluate(
        self,
        captions: CaptionSet,
        limit: int | None = None,
        overwrite: bool = False,
        shard: Shard | None = None,
        selection: Sequence[Sample] | None = None,
    ) -> RunResult:
        """Score one caption set with every metric; resume a matching earlier run unless ``overwrite``.

        With ``shard``, only that shard's part of the selected samples is scored, into the shard's
        own folder. ``selection`` replaces the samples the caption set covers (after ``limit``) as
        what is split: captions a model generated shard by shard cover only their own shard.
        Every check runs before anything is written: a refused run leaves its folder as it was.
        """
        chosen = list(selection) if selection is not None else select_samples(self.benchmark, captions, limit)
        if selection is None:  # generated captions cover what was asked; captioning names its failures
            warn_partial(self.benchmark, captions, chosen, limit)
        samples = [s for s in (shard.part(chosen) if shard else chosen) if s.id in captions.captions]
        for judge in self.cached_judges.values():
            preflight(judge)  # an unreachable or misconfigured judge is named before any work
        run = RunDir(self.results_dir, self.benchmark.name, captions.name, shard)
        block = shard_block(shard, chosen, captions) if shard else None
        with run.lock():  # one writer per folder: a second run is refused, naming this one
            return self._evaluate(run, samples, captions, overwrite, block)

    def _evaluate(
        self,
        run: RunDir,
        samples: list[Sample],
        captions: CaptionSet,
        overwrite: bool,
        shard: dict[str, Any] | None = None,
    ) -> RunResult:
        """Score ``samples`` into ``run``, whose lock the caller holds."""
        manifest = self._previous_manifest(run, overwrite)
        configs = {m.name: run_config(self.benchmark.name, m, self.judges) for m in self.metrics}
        if shard is not None:  # what built each metric scored here, this session's and earlier ones'
            earlier = (manifest.get("shard") or {}).get("settings") or {}
            now = {m.name: _settings_of(self.settings, m.name) for m in self.metrics}
            shard = {**shard, "settings": {**earlier, **now}}
        logged = {
            m.name: self._check(run, m, configs[m.name], manifest, samples, captions, overwrite) for m in self.metrics
        }
        # A judge call that failed is never final: such samples are scored again, and the cache
        # answers the calls that succeeded, so only the failed ones reach the judge.
        done = {name: {k: s for k, s in scores.items() if not s.failed} for name, scores in logged.items()}
        retried = {name: len(logged[name]) - len(done[name]) for name in logged}
        for watch in self.watches.values():
            watch.first_error = None
        metric_entries = {k: v for k, v in manifest.get("metrics", {}).items() if not (overwrite and k in done)}
        sessions = [] if overwrite else list(manifest.get("sessions", []))
        if overwrite:
            for metric in self.metrics:
                run.scores(metric.name).reset()
        run.write_captions({s.id: captions.captions[s.id] for s in samples})
        if self.progress is not None:
            pending = {m.name: [s for s in samples if s.id not in done[m.name]] for m in self.metrics}
            planned = sum(
                m.planned_requests(pending[m.name], [Caption(s.id, captions.captions[s.id]) for s in pending[m.name]])
                for m in self.metrics
            )
            self.progress.start(captions.name, planned)
        before = {role: _snapshot(j.stats) for role, j in self.cached_judges.items()}
        servers_before = {role: server_stats(j) for role, j in self.cached_judges.items()}
        started = time.time()
        summaries: dict[str, dict[str, Any]] = {}
        unscored: dict[str, int] = {}
        status = "complete"
        try:
            for metric in self.metrics:
                scores = self._score_pending(run, metric, samples, captions, dict(done[metric.name]))
                summaries[metric.name] = metric.summarize(scores)
                unscored[metric.name] = sum(s.unscored for s in scores)
                metric_entries[metric.name] = {
                    **configs[metric.name],
                    "info": describe(metric).to_dict(),
                    "config_hash": content_hash(configs[metric.name]),
                    "samples": len(scores),
                    "summary": summaries[metric.name],
                }
        except BaseException:
            status = "interrupted"
            raise
        finally:
            stats = judge_usage(self.cached_judges, before)
            session = {"started": _iso(started), "seconds": round(time.time() - started, 3), "status": status}
            servers = server_usage(self.cached_judges, servers_before)
            sessions.append({**session, **stats, **({"servers": servers} if servers else {})})
            run.write_manifest(self._manifest(captions, samples, metric_entries, sessions, status, shard))
        resumed = {name: len(scores) for name, scores in done.items()}
        first_error = next((w.first_error for w in self.watches.values() if w.first_error), None)
        return RunResult(
            captions.name, run.path, summaries, len(samples), stats, unscored, resumed, retried, first_error
        )

    def _previous_manifest(self, run: RunDir, overwrite: bool) -> dict[str, Any]:
        """Return the folder's manifest; refuse one of another benchmark unless ``overwrite`` discards it."""
        manifest = run.read_manifest(broken_ok=overwrite)
        other = manifest.get("benchmark", self.benchmark.name)
        if other == self.benchmark.name:
            return manifest
        if overwrite:
            return {}
        raise InputError(
            f"{run.path}: holds results of benchmark {other!r}, not {self.benchmark.name!r}; "
            "choose another --results-dir, move the folder away, or rerun with --overwrite"
        )

    def _check(
        self,
        run: RunDir,
        metric: Metric,
        config: dict[str, Any],
        manifest: Mapping[str, Any],
        samples: Sequence[Sample],
        captions: CaptionSet,
        overwrite: bool,
    ) -> dict[str, SampleScore]:
        """Return the scores a matching earlier run already has; refuse to mix incomparable ones."""
        if overwrite:
            return {}
        done = run.scores(metric.name).load()
        previous = manifest.get("metrics", {}).get(metric.name)
        if done and previous is not None and previous.get("config_hash") != content_hash(config):
            changes = config_changes({k: previous.get(k) for k in config}, config)
            shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
            raise InputError(
                f"{run.path}: its {metric.name} scores were made with other settings, judge or prompts "
                f"({shown or 'the stored settings cannot be compared'}); rerun with --overwrite to replace them, "
                "or choose another --results-dir"
            )
        changed = [
            s.id for s in samples if s.id in done and done[s.id].caption_sha256 != sha256_text(captions.captions[s.id])
        ]
        if changed:
            raise InputError(
                f"{run.path}: {len(changed)} caption(s) differ from the scored ones (e.g. {changed[0]!r}); "
                "rerun with --overwrite, or give this caption set another name"
            )
        return done

    def _score_pending(
        self, run: RunDir, metric: Metric, samples: Sequence[Sample], captions: CaptionSet, done: dict[str, SampleScore]
    ) -> list[SampleScore]:
        """Score samples not yet done, batch by batch, appending each batch as it completes."""
        log = run.scores(metric.name)
        pending = [s for s in samples if s.id not in done]
        for start in range(0, len(pending), self.batch_size):
            batch = pending[start : start + self.batch_size]
            scored = _plugin_safe(metric, batch, [Caption(s.id, captions.captions[s.id]) for s in batch], self.judges)
            # the hash that tells a resumed run its captions are the scored ones (a plugin need not set it)
            scored = [
                s if s.caption_sha256 else replace(s, caption_sha256=sha256_text(captions.captions[s.sample_id]))
                for s in scored
            ]
            new = with_units(metric, scored)
            log.append(new)
            done.update((s.sample_id, s) for s in new)
        return [done[s.id] for s in samples]

    def _manifest(
        self,
        captions: CaptionSet,
        samples: Sequence[Sample],
        metrics: Mapping[str, Any],
        sessions: list[dict[str, Any]],
        status: str,
        shard: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        manifest: dict[str, Any] = {
            "format": RESULTS_FORMAT,
            "capbench_version": __version__,
            "benchmark": self.benchmark.name,
            "caption_set": {
                "name": captions.name,
                "source": captions.source,
                "sha256": content_hash({s.id: captions.captions[s.id] for s in samples}),
                "samples": len(samples),
                "coverage": sample_coverage(self.benchmark, samples),
            },
            "command": redact_command(self.command),
            "git_commit": git_commit(),
            "versions": versions(),
            "judges": {role: j.fingerprint() for role, j in self.cached_judges.items()},
            "judge_specs": {role: getattr(j, "spec", None) for role, j in self.cached_judges.items()},
            "metrics": dict(metrics),
            "sessions": sessions,
            "status": status,
            "updated": _iso(time.time()),
        }
        if shard is not None:
            settings = {name: shard["settings"].get(name) for name in metrics}
            # what every shard of one evaluation must share: each metric's settings, prompts and judges
            digest = content_hash({name: entry.get("config_hash") for name, entry in metrics.items()})
            manifest["shard"] = {**shard, "settings": settings, "settings_sha256": digest}
        return manifest


def _settings_of(settings: Mapping[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The settings that build metric ``name`` alone (its entry of ``metrics`` only)."""
    if settings is None:
        return None
    metrics = settings.get("metrics")
    own = {name: dict(metrics.get(name) or {})} if isinstance(metrics, Mapping) else [name]
    return {**settings, "metrics": own}


def _plugin_safe(
    metric: Metric, samples: Sequence[Sample], captions: Sequence[Caption], judges: Mapping[str, Engine]
) -> list[SampleScore]:
    """``metric.score``; a plugin's metric that raises is named with its package, not shown as a traceback.

    Raises:
        PluginError: a metric from outside capbench raised; the batches scored before it are kept.
    """
    try:
        return metric.score(samples, captions, judges)
    except CapbenchError:
        raise
    except Exception as exc:
        module = type(metric).__module__
        if module == "capbench" or module.startswith("capbench."):
            raise
        from capbench.registry import PluginError

        raise PluginError(
            f"metric {metric.name!r} (from {module}) failed while scoring ({type(exc).__name__}: {exc}); the "
            "batches scored before it are saved: fix or update that package, then rerun to resume"
        ) from exc


def with_units(metric: Metric, scores: Sequence[SampleScore]) -> list[SampleScore]:
    """Return ``scores`` each carrying its headline units, so results rank without the metric's code.

    Raises:
        PluginError: the metric's units name a sample other than the one scored.
    """
    out = []
    for score in scores:
        units = metric.units([score])
        if any(u[0] != score.sample_id for u in units):
            from capbench.registry import PluginError

            raise PluginError(f"metric {metric.name!r}: units() of sample {score.sample_id!r} name another sample")
        out.append(replace(score, units=tuple((str(s), float(v), float(w)) for _, s, v, w in units)))
    return out


def judge_usage(
    judges: Mapping[str, CachedEngine], before: Mapping[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Return the judges' usage (calls, cache hits, tokens, …) summed over roles, since ``before`` if given."""
    total: dict[str, Any] = {k: 0 for k, v in CallStats().to_dict().items() if isinstance(v, (int, float))}
    for role, judge in judges.items():
        start = (before or {}).get(role, {})
        for key, value in _snapshot(judge.stats).items():
            if isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value - start.get(key, 0)
    return total


def server_stats(judge: Any) -> dict[str, dict[str, Any]]:
    """A judge's figures per server (an engine spreading calls over URLs: ``server_stats()``), else none."""
    engine = judge
    while engine is not None and not callable(getattr(engine, "server_stats", None)):
        engine = getattr(engine, "engine", None)
    return engine.server_stats() if engine is not None else {}


def server_usage(
    judges: Mapping[str, Any], before: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each judge's figures per server since ``before``: counts as differences, states as they are now.

    What a session's manifest entry records, so a server's errors, latency and load in a run can
    be read back (a URL's user name and password, if it holds any, are not written).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for role, judge in judges.items():
        for url, now in server_stats(judge).items():
            start = before.get(role, {}).get(url, {})
            figures = {
                k: (round(v - start.get(k, 0), 3) if k in _SERVER_COUNTS else v)
                for k, v in now.items()
                if k != "in_flight"
            }
            calls = figures.get("requests", 0)
            figures["mean_seconds"] = round(figures.get("seconds", 0) / calls, 4) if calls else None
            out.setdefault(role, {})[_without_credentials(url)] = figures
    return out


_SERVER_COUNTS = ("requests", "retries", "failed_calls", "errors", "seconds", "marked_down", "affine", "spilled")


def _without_credentials(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme}{sep}{authority.rpartition('@')[2]}{slash}{path}"


def _snapshot(stats: CallStats) -> dict[str, Any]:
    return stats.to_dict()


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


_SECRET_FLAGS = ("--api-key", "--key", "--token", "--password")


def redact_command(argv: Sequence[str]) -> list[str]:
    """Return ``argv`` with the values of secret-bearing flags replaced by '***'."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg in _SECRET_FLAGS:
            out.append(arg)
            hide_next = True
        elif arg.startswith(tuple(f"{f}=" for f in _SECRET_FLAGS)):
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out


def git_commit() -> str | None:
    """Return the commit of the capbench source tree, if it is a git checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    """Return the versions of Python, capbench and the engine libraries that are installed."""
    from importlib import metadata

    found = {"python": platform.python_version(), "capbench": __version__}
    for package in ("llama-cpp-python", "torch", "transformers", "vllm"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
