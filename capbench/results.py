"""Reading results folders: the objects :func:`capbench.evaluate` returns, and the leaderboard's input.

A :class:`SetResult` is one caption set's run on one benchmark: its summaries, its per-sample
records and what each metric declares about its numbers, the same whether computed now or read
from its run folder (``<results>/<benchmark>/<caption set>/``, see docs/results-format.md).
:func:`load_results` reads a whole folder for the leaderboard: every metric's units (from the
score lines in format 2, through the installed metric's code for older results) and description.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capbench.config import EvalConfig
from capbench.errors import CapbenchError, InputError
from capbench.hashing import content_hash
from capbench.metrics import build_metric, describe, metric_names
from capbench.metrics.base import Metric, Unit, headline
from capbench.records import RESERVED_METRIC_NAMES, MetricInfo, SampleScore, check_format, read_caption_file
from capbench.runs import SHARDS, ScoreLog, safe_name


@dataclass(frozen=True)
class SampleRecord:
    """One sample of a run: its caption and each metric's score of it."""

    sample_id: str
    caption: str
    scores: Mapping[str, SampleScore]


@dataclass
class SetResult:
    """One caption set's results on one benchmark, computed now or read from its run folder.

    ``summary`` maps each metric to its headline numbers (``summary["balcap"]["score"]``);
    ``samples`` holds the per-sample records; ``info`` what each metric declares about its numbers.
    """

    name: str
    benchmark: str
    path: Path
    summary: dict[str, dict[str, Any]]
    samples: list[SampleRecord]
    info: dict[str, MetricInfo]
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)
    #: Judge usage of the session that produced it (calls, failures, cache hits, tokens).
    stats: dict[str, Any] = field(default_factory=dict)
    unscored: dict[str, int] = field(default_factory=dict)
    resumed: dict[str, int] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None

    @property
    def failed_share(self) -> float:
        """The share of the session's judge calls that failed (0 when none was made)."""
        calls = self.stats.get("judge_calls", 0)
        return self.stats.get("failures", 0) / calls if calls else 0.0

    def headline(self, metric: str) -> float | None:
        """The metric's headline number (``info[metric].headline`` of its summary)."""
        key = self.info[metric].headline if metric in self.info else "score"
        value = self.summary.get(metric, {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (one entry of ``capbench eval --json``'s ``runs``)."""
        return {
            "caption_set": self.name,
            "results_dir": str(self.path),
            "samples": len(self.samples),
            "metrics": self.summary,
            "unscored": self.unscored,
            "resumed_samples": self.resumed,
            "retried_samples": self.retried,
            **self.stats,
            "first_error": self.first_error,
        }


@dataclass
class Evaluation(Mapping[str, SetResult]):
    """What :func:`evaluate` returns: each caption set's :class:`SetResult` by name, and the run's settings."""

    benchmark: str
    sets: dict[str, SetResult]
    judges: dict[str, Any]
    modes: dict[str, str]
    config: EvalConfig
    generation: Any = None

    def __getitem__(self, name: str) -> SetResult:
        if name not in self.sets:
            raise KeyError(f"no caption set {name!r}; the sets: {', '.join(self.sets)}")
        return self.sets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.sets)

    def __len__(self) -> int:
        return len(self.sets)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report ``capbench eval --json`` prints."""
        report: dict[str, Any] = {
            "benchmark": self.benchmark,
            "judges": self.judges,
            **self.modes,
            "runs": [s.to_dict() for s in self.sets.values()],
        }
        if self.generation is not None:
            report["generation"] = self.generation.to_dict()
        if self.config.shard is not None:
            report["shard"] = self.config.shard
        return report


def read_run(path: str | os.PathLike[str]) -> SetResult:
    """Read one run folder (``<results>/<benchmark>/<caption set>/``) back as a :class:`SetResult`.

    Only the samples in its ``captions.jsonl`` are read (what its manifest summarises); a metric's
    description comes from the manifest (results format 2) or, for older results, from the
    installed metric.

    Raises:
        InputError: no manifest, an unreadable or newer-format manifest, or a damaged score file.
    """
    folder = Path(path)
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder}: no manifest.json; not a capbench run folder (or a run killed early)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{manifest_path}: unreadable ({exc}); rerun `capbench eval --overwrite` for it") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("metrics"), dict):
        raise InputError(f"{manifest_path}: not a capbench manifest (no 'metrics' mapping)")
    check_format(manifest.get("format", 0), str(manifest_path))
    captions: dict[str, str] = {}
    if (folder / "captions.jsonl").exists() and (folder / "captions.jsonl").stat().st_size:  # empty: a shard of none
        captions = dict(read_caption_file(folder / "captions.jsonl").captions)
    summary: dict[str, dict[str, Any]] = {}
    info: dict[str, MetricInfo] = {}
    scores: dict[str, dict[str, SampleScore]] = {}
    for name, entry in manifest["metrics"].items():
        if not isinstance(entry, dict):
            continue
        summary[name] = dict(entry.get("summary") or {})
        described = _info(name, entry)
        if described is not None:
            info[name] = described
        log_path = folder / f"{safe_name(name)}.jsonl"
        if log_path.exists():
            scores[name] = ScoreLog(log_path).load(repair=False)
    ids = list(captions) or sorted({i for by_id in scores.values() for i in by_id})
    samples = [
        SampleRecord(i, captions.get(i, ""), {m: by_id[i] for m, by_id in scores.items() if i in by_id}) for i in ids
    ]
    sessions = manifest.get("sessions") or [{}]
    last = sessions[-1] if isinstance(sessions[-1], dict) else {}
    stats = {k: v for k, v in last.items() if isinstance(v, (int, float)) and k != "seconds"}
    caption_set = manifest.get("caption_set") if isinstance(manifest.get("caption_set"), dict) else {}
    return SetResult(
        name=str(caption_set.get("name") or folder.name),
        benchmark=str(manifest.get("benchmark") or folder.parent.name),
        path=folder,
        summary=summary,
        samples=samples,
        info=info,
        manifest=manifest,
        stats=stats,
        unscored={m: sum(s.unscored for s in by_id.values()) for m, by_id in scores.items()},
    )


def read_results(
    results_dir: str | os.PathLike[str] = "results", benchmark: str | None = None
) -> dict[str, dict[str, SetResult]]:
    """Read every run under a results folder: ``{benchmark: {caption set: SetResult}}``.

    Shards of an evaluation (``capbench eval --shard``) are not runs of their own: they are read
    once ``capbench merge`` has merged them.

    Raises:
        InputError: the folder does not exist, or a run in it cannot be read.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such results folder; run `capbench eval` first, or pass the folder it wrote to")
    out: dict[str, dict[str, SetResult]] = {}
    for manifest in sorted(root.glob("*/*/manifest.json")):
        result = read_run(manifest.parent)
        if "shard" in result.manifest:  # a shard folder moved where runs live
            continue
        if benchmark is None or result.benchmark == benchmark:
            out.setdefault(result.benchmark, {})[result.name] = result
    return out


def _info(name: str, entry: Mapping[str, Any]) -> MetricInfo | None:
    if isinstance(entry.get("info"), dict):
        return MetricInfo.from_dict(entry["info"])
    try:  # results from before format 2: ask the installed metric
        return describe(build_metric(name))
    except CapbenchError:
        return None


# ---------------------------------------------------------------- the leaderboard's reading


@dataclass
class MetricResult:
    """One metric's scores of one caption set, what the metric declares, and what produced them."""

    info: MetricInfo
    units: list[Unit]
    summary: dict[str, Any]
    judges: dict[str, Any]
    config_hash: str
    failed_ids: list[str]

    @property
    def score(self) -> float | None:
        """Return the headline, recomputed from the units."""
        return headline(self.units)

    @property
    def images(self) -> int:
        """Return how many images have at least one unit."""
        return len({u[0] for u in self.units})

    @property
    def protocol(self) -> str:
        """Return a hash of the judges and settings: equal hashes mean comparable numbers."""
        return content_hash({"judges": self.judges, "config_hash": self.config_hash})


@dataclass
class Run:
    """One caption set (a "model") on one benchmark."""

    benchmark: str
    model: str
    path: Path
    samples: int
    words: float | None
    metrics: dict[str, MetricResult]
    #: The results format of its manifest (see :data:`capbench.records.RESULTS_FORMAT`).
    format: int = 0

    @property
    def infos(self) -> dict[str, MetricInfo]:
        """Return what each of its metrics declares, by name."""
        return {name: result.info for name, result in self.metrics.items()}


@dataclass
class Results:
    """Every run found in a results folder, and the warnings about what was left out."""

    root: Path
    runs: list[Run]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def benchmarks(self) -> list[str]:
        """Return the benchmarks that have runs, sorted."""
        return sorted({r.benchmark for r in self.runs})


# ---------------------------------------------------------------- loading


def load_results(results_dir: str | Path, benchmark: str | None = None) -> Results:
    """Read every run written so far under ``results_dir`` (optionally of one benchmark).

    Results of format 2 are read without any metric's code. A broken manifest, a missing score
    file, a metric with a reserved name, or older results of a metric this install lacks skip
    that part with a warning saying what to do; a damaged score file (a bad line that is not an
    unfinished last one) is an error.

    Raises:
        InputError: the folder holds no results (for ``benchmark``), or a score file is damaged.
    """
    started = time.perf_counter()
    root = Path(results_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such results folder; run `capbench eval` first, or pass the folder it wrote to")
    reader = _Reader()
    runs: list[Run] = []
    others: set[str] = set()
    for manifest_path in sorted(root.glob("*/*/manifest.json")):
        run = reader.run(manifest_path)
        if run is not None and (benchmark is None or run.benchmark == benchmark):
            runs.append(run)
        elif run is not None:
            others.add(run.benchmark)
    warnings = reader.finish()
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        if not (folder / "manifest.json").exists() and any(folder.glob("*.jsonl")):
            warnings.append(f"{folder}: scores without a manifest.json (a run killed early?); left out")
    unmerged = _unmerged(root, benchmark)
    warnings += unmerged
    if not runs and others:
        raise InputError(f"{root}: no results for benchmark {benchmark!r}; it has: {', '.join(sorted(others))}")
    if not runs and unmerged:
        raise InputError(
            f"{root}: no results yet, only {len(unmerged)} caption set(s) of shards not merged; when every shard "
            f"has finished, run `capbench merge {root}`"
        )
    if not runs:
        raise InputError(f"{root}: no results; run `capbench eval` first (it writes results there)")
    return Results(root, runs, warnings, time.perf_counter() - started)


class _Reader:
    """Reads run folders; builds a metric's code only for results that need it (formats 0 and 1), once."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self._code: dict[str, Metric | str] = {}
        #: metric -> the folders of older results of it that this install cannot read.
        self._unreadable: dict[str, list[Path]] = {}

    def run(self, path: Path) -> Run | None:
        """Return the run whose manifest is ``path`` (None, with a warning, if it cannot be read)."""
        manifest = _read_manifest(path, self.warnings)
        if manifest is None:
            return None
        if "shard" in manifest:
            self.warnings.append(
                f"{path.parent}: one shard ({manifest['shard'].get('index')}/{manifest['shard'].get('count')}) of an "
                "evaluation, not a whole run; left out: put it back under <results>/<benchmark>/_shards/<set>/ "
                "and run `capbench merge`"
            )
            return None
        folder = path.parent
        captions = _read_captions(folder / "captions.jsonl", self.warnings)
        caption_set = manifest.get("caption_set") if isinstance(manifest.get("caption_set"), dict) else {}
        found: dict[str, MetricResult] = {}
        for name, entry in manifest["metrics"].items():
            if name in RESERVED_METRIC_NAMES:
                self.warnings.append(
                    f"{path}: metric {name!r} has a reserved name (a leaderboard column or a word meaning no "
                    "metric); left out: rename the metric in the package that provides it, then rescore"
                )
            elif isinstance(entry, dict):
                result = self.metric(folder, name, entry, captions)
                if result is not None:
                    found[name] = result
        words = [len(c.split()) for c in captions.values()] if captions else []
        return Run(
            benchmark=str(manifest.get("benchmark") or folder.parent.name),
            model=str(caption_set.get("name") or folder.name),
            path=folder,
            samples=int(caption_set.get("samples") or len(captions)),
            words=sum(words) / len(words) if words else None,
            metrics=found,
            format=manifest.get("format", 0),
        )

    def metric(self, folder: Path, name: str, entry: dict[str, Any], captions: dict[str, str]) -> MetricResult | None:
        """Return one metric's result: units and description from the files, else from the metric's code."""
        info = _stated_info(folder / "manifest.json", name, entry, self.warnings)
        path = folder / f"{safe_name(name)}.jsonl"
        if not path.exists():
            self.warnings.append(f"{path}: missing, though the manifest lists {name}; left out")
            return None
        scores = read_scores(path, self.warnings)
        if captions:
            # A later run with --limit rewrites captions.jsonl; the manifest summarises those samples only.
            scores = [s for s in scores if s.sample_id in captions]
        if info is not None and all(s.units is not None for s in scores):
            units = [(s.sample_id, *unit) for s in scores for unit in s.units or ()]
        else:  # older results (formats 0 and 1): the installed metric says what its scores mean
            metric = self.code(name, folder)
            if metric is None:
                return None
            units, info = metric.units(scores), info or describe(metric)
        _check_headline(path, info, entry, units, self.warnings)
        with_units = {u[0] for u in units}
        return MetricResult(
            info=info,
            units=units,
            summary=entry.get("summary") if isinstance(entry.get("summary"), dict) else {},
            judges=_fingerprints(entry.get("judges")),
            config_hash=str(entry.get("config_hash", "")),
            failed_ids=sorted(s.sample_id for s in scores if s.sample_id not in with_units and s.unscored > 0),
        )

    def code(self, name: str, folder: Path) -> Metric | None:
        """Return the installed metric ``name`` (built once with its defaults), or None, noting the folder."""
        if name not in self._code:
            try:
                metric = build_metric(name)
                describe(metric)
                self._code[name] = metric
            except CapbenchError as exc:
                self._code[name] = str(exc)
        found = self._code[name]
        if isinstance(found, str):
            self._unreadable.setdefault(name, []).append(folder)
            return None
        return found

    def finish(self) -> list[str]:
        """Return the warnings, with one per metric whose older results this install cannot read."""
        for name, folders in self._unreadable.items():
            error = self._code[name]
            why = f"it cannot be built: {error}" if name in metric_names() else "it is not installed"
            more = f" and {len(folders) - 1} other run(s)" if len(folders) > 1 else ""
            self.warnings.append(
                f"{folders[0]}{more}: its {name!r} results predate results format 2 (no units or description "
                f"recorded), so reading them needs metric {name!r}, and {why}; left out: install the package that "
                f"provides metric {name!r}, or rescore with this capbench (`capbench eval ... -m {name} --overwrite`)"
            )
        return self.warnings


def _unmerged(root: Path, benchmark: str | None = None) -> list[str]:
    """Warn of caption sets whose shards (``capbench eval --shard``) have no merged run yet."""
    pattern = f"{safe_name(benchmark) if benchmark else '*'}/{SHARDS}/*"
    return [
        f"{folder}: shards of an evaluation, not merged yet; left out: when every shard has finished, run "
        f"`capbench merge {root}`"
        for folder in sorted(p for p in root.glob(pattern) if p.is_dir() and not p.name.startswith("."))
        if not (folder.parent.parent / folder.name).exists()
    ]


def _read_manifest(path: Path, warnings: list[str]) -> dict[str, Any] | None:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        warnings.append(f"{path}: unreadable manifest ({exc}); run left out: rerun `capbench eval --overwrite` for it")
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("metrics"), dict):
        warnings.append(f"{path}: not a capbench manifest (no 'metrics' mapping); run left out")
        return None
    try:
        check_format(manifest.get("format", 0), str(path))
    except InputError as exc:
        warnings.append(f"{exc}; run left out")
        return None
    return manifest


def _stated_info(path: Path, name: str, entry: dict[str, Any], warnings: list[str]) -> MetricInfo | None:
    """Return the description a format-2 manifest gives of metric ``name`` (None if it gives none)."""
    raw = entry.get("info")
    if raw is None:
        return None
    try:
        if not isinstance(raw, dict):
            raise InputError(f"it is a JSON {type(raw).__name__}, not an object")
        return MetricInfo.from_dict({**raw, "name": name})
    except InputError as exc:
        warnings.append(f"{path}: the description of metric {name!r} is unusable ({exc}); reading it with its code")
        return None


def _check_headline(
    path: Path, info: MetricInfo, entry: dict[str, Any], units: list[Unit], warnings: list[str]
) -> None:
    """Warn when the manifest's headline differs from the one the scores give (the scores win)."""
    summary = entry.get("summary") if isinstance(entry.get("summary"), dict) else {}
    stated, found = summary.get(info.headline), headline(units)
    if not isinstance(stated, (int, float)) or isinstance(stated, bool) or found is None:
        return
    if not math.isclose(stated, found, rel_tol=1e-9, abs_tol=1e-9):
        warnings.append(
            f"{path}: its scores give {info.name} {found:.2f} but the manifest says {stated:.2f} "
            "(an unfinished or resumed run?); the leaderboard uses the scores"
        )


def _read_captions(path: Path, warnings: list[str]) -> dict[str, str]:
    """Return the scored captions by id ({} with a warning if the file is missing or broken)."""
    if not path.exists():
        warnings.append(f"{path}: missing; caption lengths unknown for that run")
        return {}
    try:
        return dict(read_caption_file(path).captions)
    except InputError as exc:
        warnings.append(f"{exc}; caption lengths unknown for that run")
    return {}


def read_scores(path: Path, warnings: list[str]) -> list[SampleScore]:
    """Return the score records of one metric's JSONL file, the last record per sample.

    Read-only: an unfinished last line (a run still writing) is skipped with a warning, not cut.

    Raises:
        InputError: the file cannot be read, or a finished line is not a score record.
    """
    log = ScoreLog(path)
    if log.torn:
        warnings.append(f"{path}: its last line is unfinished (a run still writing, or killed); left that line out")
    return list(log.load(repair=False).values())


def _fingerprints(judges: Any) -> dict[str, dict[str, Any]]:
    """Return the judge fingerprints by role, dropping anything that is not one (a hand-edited manifest)."""
    return {str(k): v for k, v in judges.items() if isinstance(v, dict)} if isinstance(judges, dict) else {}
