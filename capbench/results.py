"""Evaluation results as objects: what :func:`capbench.evaluate` returns and :func:`read_run` reads back.

A :class:`SetResult` is one caption set's run on one benchmark: its summaries, its per-sample
records and what each metric declares about its numbers, the same whether computed now or read
from its run folder (``<results>/<benchmark>/<caption set>/``, see docs/results-format.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capbench.config import EvalConfig
from capbench.errors import CapbenchError, InputError
from capbench.metrics import build_metric, describe
from capbench.records import MetricInfo, SampleScore, check_format, read_caption_file
from capbench.runs import ScoreLog, safe_name


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
    if (folder / "captions.jsonl").exists():
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

    Raises:
        InputError: the folder does not exist, or a run in it cannot be read.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such results folder; run `capbench eval` first, or pass the folder it wrote to")
    out: dict[str, dict[str, SetResult]] = {}
    for manifest in sorted(root.glob("*/*/manifest.json")):
        result = read_run(manifest.parent)
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
