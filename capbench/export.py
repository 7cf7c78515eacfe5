"""Exporting finished runs: lmms-eval's results JSON, and a flat per-sample CSV (see docs/export.md).

lmms-eval writes one ``<output>/<model>/<date>_results.json`` per model; a capbench caption set is
the model, so each caption set gets one file, whose *tasks* are its (benchmark, metric) pairs
(``mini_dcscore``), each with the metric's headline and stderr under lmms-eval's
``"<metric>,none"`` / ``"<metric>_stderr,none"`` keys and its n under ``n-samples``. The stderr is
the standard deviation of the leaderboard's stratified bootstrap of the headline units, with a
generator seeded afresh for each (caption set, metric), so it depends only on that run and the seed.

The CSV has one row per (caption set, metric, sample); text cells that a spreadsheet would run as
a formula get a leading ``'`` (:func:`guard`), which :func:`unguard` (and :func:`read_csv`) take off.

Only finished runs are exported: a run still writing, killed, interrupted, or with a missing or
unfinished score file is refused with a message saying what to do.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from capbench import __version__
from capbench.errors import CapbenchError, ConfigError, InputError
from capbench.hashing import content_hash
from capbench.metrics import build_metric
from capbench.metrics.base import Unit, headline
from capbench.records import MetricInfo, SampleScore
from capbench.results import SetResult, read_run
from capbench.runs import SHARDS, ScoreLog, atomic_write_text, safe_name, writer_state

if TYPE_CHECKING:
    import pandas as pd

Format = Literal["lmms-eval", "csv"]
FORMATS: tuple[str, ...] = ("lmms-eval", "csv")
ROUNDS = 1000
SEED = 0
#: lmms-eval's filter name for unfiltered outputs: its metric keys are ``"<metric>,<filter>"``.
FILTER = "none"
#: What lmms-eval writes where no stderr was computed.
NO_STDERR = "N/A"
#: First characters that make a spreadsheet read a cell as a formula (OWASP's list), and the quote
#: itself, so that taking one leading quote off is always the exact inverse.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
#: The CSV's fixed columns; the metrics' per-sample values follow as ``value_<name>``.
CSV_COLUMNS = (
    "benchmark", "caption_set", "metric", "sample_id", "domain", "score", "weight", "judge_failed", "unscored",
    "failed", "caption", "caption_sha256", "units",
)  # fmt: skip
_TEXT_COLUMNS = ("benchmark", "caption_set", "metric", "sample_id", "domain", "caption")
_KEY_UNSAFE = re.compile(r"[,\s]+")


@dataclass(frozen=True)
class MetricExport:
    """One metric of one run, ready to export: its description, scores in sample order, and units."""

    name: str
    info: MetricInfo
    entry: Mapping[str, Any]
    scores: list[SampleScore]
    units: list[Unit]

    @property
    def samples(self) -> int:
        """Return how many samples have at least one unit (lmms-eval's effective n)."""
        return len({u[0] for u in self.units})

    @property
    def protocol(self) -> str:
        """Return the leaderboard's protocol hash of this metric (judges and settings), 12 characters."""
        judges = self.entry.get("judges") if isinstance(self.entry.get("judges"), dict) else {}
        fingerprints = {str(k): v for k, v in judges.items() if isinstance(v, dict)}
        return content_hash({"judges": fingerprints, "config_hash": str(self.entry.get("config_hash", ""))})[:12]


@dataclass(frozen=True)
class RunExport:
    """One finished run (a caption set on a benchmark) and its metrics."""

    result: SetResult
    metrics: dict[str, MetricExport]
    #: Sample id -> domain, from any metric that records one (CaptionQA, CapRL).
    domains: dict[str, str]

    @property
    def name(self) -> str:
        """Return the caption set's name."""
        return self.result.name

    @property
    def benchmark(self) -> str:
        """Return the benchmark's name."""
        return self.result.benchmark


# ---------------------------------------------------------------- finding and checking runs


def find_runs(
    sources: Sequence[str | Path] = (), benchmark: str | None = None, names: Sequence[str] = ()
) -> tuple[list[RunExport], list[str]]:
    """Read the finished runs under ``sources`` (results folders, benchmark folders or run folders).

    Returns the runs, sorted by caption set and benchmark, and warnings (judge calls that failed
    with no reply, a manifest summary that disagrees with the scores).

    Raises:
        InputError: a source is missing or holds no runs, a run is unfinished, killed, still being
            written or a shard, a score file is missing or damaged, or two sources hold the same run.
    """
    folders: dict[Path, Path] = {}
    for source in sources or (Path("results"),):
        for folder in _run_folders(Path(source), benchmark, names):
            folders.setdefault(folder.resolve(), folder)
    warnings: list[str] = []
    runs: list[RunExport] = []
    seen: dict[tuple[str, str], Path] = {}
    for folder in folders.values():
        run = read_finished_run(folder, warnings)
        if (benchmark is not None and run.benchmark != benchmark) or (names and run.name not in names):
            continue
        key = (run.benchmark, run.name)
        if key in seen:
            raise InputError(
                f"{folder}: caption set {run.name!r} on {run.benchmark!r} is also in {seen[key]}; "
                "pass only one of the two folders"
            )
        seen[key] = folder
        runs.append(run)
    if not runs:
        wanted = " ".join(f"{k} {v!r}" for k, v in (("benchmark", benchmark), ("caption set", names)) if v)
        where = ", ".join(str(s) for s in sources or ("results",))
        raise InputError(f"{where}: no finished runs{' of ' + wanted if wanted else ''}; run `capbench eval` first")
    runs.sort(key=lambda r: (r.name, r.benchmark))
    return runs, warnings


def _run_folders(source: Path, benchmark: str | None, names: Sequence[str]) -> list[Path]:
    """Return the run folders in ``source``, refusing folders of scores without a manifest and unmerged shards."""
    if not source.is_dir():
        raise InputError(f"{source}: no such folder; pass a results folder (`capbench eval --results-dir`) or a run")
    if (source / "manifest.json").is_file():
        return [source]
    if source.name == SHARDS or SHARDS in source.parts:
        raise InputError(f"{source}: shards of an evaluation, not whole runs; run `capbench merge` first")
    found: list[Path] = []
    for depth in ("*", "*/*"):  # a benchmark's folder, or a results folder of benchmarks
        for folder in sorted(p for p in source.glob(depth) if p.is_dir() and SHARDS not in p.parts):
            if benchmark is not None and (depth == "*/*" and folder.parent.name != safe_name(benchmark)):
                continue
            if names and folder.name not in {safe_name(n) for n in names}:
                continue
            if (folder / "manifest.json").is_file():
                found.append(folder)
            elif any(folder.glob("*.jsonl")) or (folder / ".lock").exists():
                raise InputError(
                    f"{folder}: scores without a manifest.json (a run killed early, or still starting); rerun the "
                    "same `capbench eval` command to finish it, then export"
                )
    for shards in sorted(source.glob(f"{SHARDS}/*")) + sorted(source.glob(f"*/{SHARDS}/*")):
        of_benchmark = (
            benchmark is None or shards.parent.parent == source or shards.parent.parent.name == safe_name(benchmark)
        )
        selected = of_benchmark and (not names or shards.name in {safe_name(n) for n in names})
        if shards.is_dir() and selected and not (shards.parent.parent / shards.name).exists():
            raise InputError(
                f"{shards}: shards of an evaluation, not merged yet; when every shard has finished, run "
                f"`capbench merge {shards.parent.parent}`, then export"
            )
    return found


def read_finished_run(folder: str | Path, warnings: list[str] | None = None) -> RunExport:
    """Read one run folder for export, refusing it unless its run has finished and its files are whole.

    Raises:
        InputError: the run is being written, was killed or interrupted, is a shard, or a score file
            the manifest lists is missing, unfinished or damaged, or lacks samples the run lists.
    """
    folder = Path(folder)
    warnings = warnings if warnings is not None else []
    state, holder = writer_state(folder)
    if state == "running":
        raise InputError(f"{folder}: a capbench run ({holder}) is writing there now; export when it has finished")
    if state == "killed":
        raise InputError(
            f"{folder}: its run was killed before it finished; rerun the same `capbench eval` command to resume it, "
            "then export"
        )
    result = read_run(folder)
    manifest = result.manifest
    if "shard" in manifest:
        raise InputError(f"{folder}: one shard of an evaluation, not a whole run; run `capbench merge`, then export")
    status = manifest.get("status")
    if status != "complete":
        raise InputError(
            f"{folder}: its last run is {status or 'of unknown status'}, not complete; rerun the same `capbench eval` "
            "command to finish it (it resumes), then export"
        )
    metrics = {name: _metric(result, name, warnings) for name in result.summary}
    domains: dict[str, str] = {}
    for metric in metrics.values():
        for score in metric.scores:
            if isinstance(score.details.get("domain"), str):
                domains.setdefault(score.sample_id, score.details["domain"])
    return RunExport(result, metrics, domains)


def _metric(result: SetResult, name: str, warnings: list[str]) -> MetricExport:
    """Return one metric's export, refusing missing, unfinished or incomplete scores."""
    path = result.path / f"{safe_name(name)}.jsonl"
    rerun = f"rerun the same `capbench eval` command (with -m {name}) to finish it, then export"
    if not path.is_file():
        raise InputError(f"{path}: missing, though the manifest lists metric {name!r}; {rerun}")
    if ScoreLog(path).torn:
        raise InputError(f"{path}: its last line is unfinished (a run killed while writing); {rerun}")
    scores = [s.scores[name] for s in result.samples if name in s.scores]
    missing = [s.sample_id for s in result.samples if name not in s.scores]
    if missing:
        raise InputError(
            f"{path}: no score for {len(missing)} of the run's {len(result.samples)} samples "
            f"(e.g. {missing[0]!r}); {rerun}"
        )
    entry = result.manifest["metrics"][name]
    info = result.info.get(name)
    if info is not None and all(s.units is not None for s in scores):
        units = [(s.sample_id, *u) for s in scores for u in s.units or ()]
    else:  # results before format 2: the installed metric says what its scores mean
        try:
            units = build_metric(name).units(scores)
        except CapbenchError:
            raise InputError(
                f"{path}: results from before results format 2 of metric {name!r}, which this install cannot "
                f"read; install the package that provides it, or rescore (`capbench eval ... -m {name} --overwrite`)"
            ) from None
        if info is None:
            from capbench.metrics import describe

            info = describe(build_metric(name))
    pending = sum(1 for s in scores if s.failed)
    if pending:
        warnings.append(
            f"{path}: {pending} sample(s) have judge calls that failed with no reply (flagged judge_failed); rerun "
            "the same `capbench eval` command to ask again"
        )
    stated, found = result.summary[name].get(info.headline), headline(units)
    if isinstance(stated, (int, float)) and found is not None and not math.isclose(stated, found, abs_tol=1e-9):
        warnings.append(
            f"{path}: its scores give {name} {found:.4f} but the manifest says {stated:.4f}; exported the scores'"
        )
    return MetricExport(name, info, entry, scores, units)


# ---------------------------------------------------------------- lmms-eval's results JSON


def stderr(units: Sequence[Unit], rounds: int = ROUNDS, seed: int = SEED) -> float | str:
    """Return the bootstrap standard error of the headline of ``units`` ("N/A" below two samples).

    The leaderboard's stratified resampling (:func:`capbench.leaderboard.resample`), with a
    generator seeded with ``seed`` for these units alone; the standard deviation (ddof 1) of the
    ``rounds`` resampled headlines.
    """
    import numpy as np

    from capbench.leaderboard import resample

    if len({u[0] for u in units}) < 2:
        return NO_STDERR
    values = np.array([[u[2] for u in units]], dtype=float)
    weights = np.array([[u[3] for u in units]], dtype=float)
    stats = resample(values, weights, [u[1] for u in units], np.random.default_rng(seed), rounds)[0]
    kept = stats[~np.isnan(stats)]
    return float(np.std(kept, ddof=1)) if kept.size > 1 else NO_STDERR


def task_name(benchmark: str, metric: str) -> str:
    """Return the lmms-eval task name of a metric on a benchmark, e.g. ``mini_dcscore``."""
    return safe_name(f"{benchmark}_{metric}")


def lmms_eval_results(runs: Sequence[RunExport], rounds: int = ROUNDS, seed: int = SEED) -> dict[str, Any]:
    """Return one caption set's results (its runs on one or more benchmarks) as lmms-eval's results JSON.

    Raises:
        ConfigError: ``runs`` is empty or holds more than one caption set.
    """
    if len({r.name for r in runs}) != 1:
        raise ConfigError("lmms_eval_results takes the runs of exactly one caption set")
    from capbench.leaderboard import metric_order

    name = runs[0].name
    newest = max(runs, key=lambda r: str(r.result.manifest.get("updated") or ""))
    out: dict[str, Any] = {key: {} for key in ("results", "group_subtasks", "configs", "versions", "n-shot")}
    out.update({"higher_is_better": {}, "n-samples": {}})
    for run in sorted(runs, key=lambda r: r.benchmark):
        for metric in (run.metrics[m] for m in metric_order(run.metrics)):
            task = task_name(run.benchmark, metric.name)
            results, directions = _task_results(task, metric, rounds, seed)
            out["results"][task] = results
            out["group_subtasks"][task] = []
            out["configs"][task] = _task_config(task, run, metric)
            out["versions"][task] = metric.protocol
            out["n-shot"][task] = 0
            out["higher_is_better"][task] = directions
            out["n-samples"][task] = {"original": len(run.result.samples), "effective": metric.samples}
    for key in ("results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples"):
        out[key] = dict(sorted(out[key].items()))
    manifest = newest.result.manifest
    caption_set = manifest.get("caption_set") if isinstance(manifest.get("caption_set"), dict) else {}
    out["config"] = {
        "model": name,
        "model_args": f"captions={caption_set.get('source') or ''}",
        "model_backend": "capbench (captions scored by LLM judges)",
        "batch_size": None,
        "batch_sizes": [],
        "device": None,
        "use_cache": None,
        "limit": None,
        "offset": None,
        "bootstrap_iters": rounds,
        "gen_kwargs": "",
        "random_seed": seed,
        "numpy_seed": seed,
        "torch_seed": None,
        "fewshot_seed": None,
        "versions": manifest.get("versions") or {},
        "command": manifest.get("command") or [],
    }
    seconds = [s.get("seconds") for r in runs for s in r.result.manifest.get("sessions") or [] if isinstance(s, dict)]
    out.update(
        git_hash=manifest.get("git_commit"),
        lmms_eval_version=None,
        date=_date(manifest.get("updated")),
        task_hashes={
            task_name(r.benchmark, m): str((r.result.manifest.get("caption_set") or {}).get("sha256") or "")
            for r in runs
            for m in r.metrics
        },
        model_source="capbench",
        model_name=name,
        model_name_sanitized=safe_name(name),
        system_instruction=None,
        system_instruction_sha=None,
        fewshot_as_multiturn=False,
        chat_template=None,
        chat_template_sha=None,
        start_time=None,
        end_time=None,
        total_evaluation_time_seconds=str(sum(s for s in seconds if isinstance(s, (int, float)))),
    )
    out["capbench"] = {
        "exported_by": __version__,
        "stderr": f"bootstrap: std (ddof 1) of {rounds} stratified resamples of the headline units, seed {seed}",
        "runs": [_provenance(r) for r in sorted(runs, key=lambda r: r.benchmark)],
    }
    return out


def _task_results(task: str, metric: MetricExport, rounds: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return a task's ``results`` entry and its ``higher_is_better`` entry."""
    key = _key(metric.name)
    score = headline(metric.units)
    results: dict[str, Any] = {"alias": task}
    results[f"{key},{FILTER}"] = score
    results[f"{key}_stderr,{FILTER}"] = stderr(metric.units, rounds, seed) if score is not None else NO_STDERR
    directions: dict[str, bool | None] = {key: metric.info.higher_is_better}
    summary = metric.entry.get("summary") if isinstance(metric.entry.get("summary"), dict) else {}
    extra: dict[str, float] = {}
    for _, column in metric.info.columns[1:]:
        value = sum(_number(summary.get(k)) or 0.0 for k in column.split("+")) if "+" in column else summary.get(column)
        if _number(value) is not None:
            extra[_key(column)] = float(value)
    for _, mapping, field in metric.info.breakdowns:
        parts = summary.get(mapping)
        for part, numbers in parts.items() if isinstance(parts, dict) else ():
            if isinstance(numbers, dict) and _number(numbers.get(field)) is not None:
                extra[_key(f"{mapping}/{part}")] = float(numbers[field])
    for name, value in extra.items():
        if name == key:
            continue
        results[f"{name},{FILTER}"] = value
        results[f"{name}_stderr,{FILTER}"] = NO_STDERR
        directions[name] = None  # a metric declares the direction of its headline only
    return results, directions


def _task_config(task: str, run: RunExport, metric: MetricExport) -> dict[str, Any]:
    entry = metric.entry
    return {
        "task": task,
        "dataset_path": run.benchmark,
        "output_type": "generate_until",
        "metric_list": [
            {
                "metric": _key(metric.name),
                "aggregation": "capbench headline: mean over strata of each stratum's weighted mean",
                "higher_is_better": metric.info.higher_is_better,
            }
        ],
        "metadata": {
            "version": metric.protocol,
            "capbench_metric": metric.info.to_dict(),
            "config": entry.get("config") or {},
            "config_hash": entry.get("config_hash"),
            "judges": entry.get("judges") or {},
            "prompts": entry.get("prompts") or {},
            "run": str(run.result.path),
        },
    }


def _provenance(run: RunExport) -> dict[str, Any]:
    manifest = run.result.manifest
    keep = ("format", "capbench_version", "versions", "git_commit", "benchmark", "caption_set", "command", "judges",
            "judge_specs", "status", "updated")  # fmt: skip
    return {"path": str(run.result.path), **{k: manifest.get(k) for k in keep}}


def _key(name: str) -> str:
    """Return a name usable in lmms-eval's ``"<metric>,<filter>"`` keys (no comma, no whitespace)."""
    return _KEY_UNSAFE.sub("_", name)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _date(updated: Any) -> str:
    """Return lmms-eval's date stamp (``YYYYMMDD_HHMMSS``, here UTC) of a manifest's ``updated``."""
    try:
        when = datetime.datetime.fromisoformat(str(updated))
    except ValueError:
        return "00000000_000000"
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc)
    return when.strftime("%Y%m%d_%H%M%S")


def write_lmms_eval(runs: Sequence[RunExport], out: str | Path, rounds: int = ROUNDS, seed: int = SEED) -> list[Path]:
    """Write ``<out>/<caption set>/<date>_results.json`` per caption set, atomically; return the paths.

    Raises:
        InputError: ``out`` is a file, or a file cannot be written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: a file; --format lmms-eval writes a folder of results files: pass a folder")
    written = []
    for name in sorted({r.name for r in runs}):
        report = lmms_eval_results([r for r in runs if r.name == name], rounds, seed)
        path = out / report["model_name_sanitized"] / f"{report['date']}_results.json"
        atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        written.append(path)
    return written


# ---------------------------------------------------------------- the per-sample CSV


def guard(text: str) -> str:
    """Return ``text`` with a leading ``'`` if a spreadsheet would read it as a formula (or it starts with ``'``)."""
    return "'" + text if text.startswith(FORMULA_START) else text


def unguard(text: str) -> str:
    """Undo :func:`guard`: take one leading ``'`` off."""
    return text[1:] if text.startswith("'") else text


def sample_rows(runs: Iterable[RunExport]) -> list[dict[str, Any]]:
    """Return one row per (caption set, metric, sample), in caption set, benchmark, metric and sample order.

    ``score`` is the sample's score (the weighted mean of its headline units; None when it has
    none), ``weight`` their total weight, ``units`` them as ``[[stratum, value, weight], …]``;
    ``value_<name>`` are the metric's per-sample values. Text is as recorded (not guarded).
    """
    from capbench.leaderboard import metric_order

    rows = []
    for run in runs:
        captions = {s.sample_id: s.caption for s in run.result.samples}
        for metric in (run.metrics[m] for m in metric_order(run.metrics)):
            by_sample: dict[str, list[Unit]] = {}
            for unit in metric.units:
                by_sample.setdefault(unit[0], []).append(unit)
            for score in metric.scores:
                units = by_sample.get(score.sample_id, [])
                mass = sum(u[3] for u in units)
                row: dict[str, Any] = {
                    "benchmark": run.benchmark,
                    "caption_set": run.name,
                    "metric": metric.name,
                    "sample_id": score.sample_id,
                    "domain": run.domains.get(score.sample_id, ""),
                    "score": sum(u[2] * u[3] for u in units) / mass if mass > 0 else None,
                    "weight": mass,
                    "judge_failed": score.unscored > 0 or score.failed > 0,
                    "unscored": score.unscored,
                    "failed": score.failed,
                    "caption": captions.get(score.sample_id, ""),
                    "caption_sha256": score.caption_sha256,
                    "units": [[u[1], u[2], u[3]] for u in units],
                }
                row.update({f"value_{k}": _number(v) for k, v in score.values.items()})
                rows.append(row)
    return rows


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Return rows as CSV text (RFC 4180 quoting), formula-guarded, with the value columns after the fixed ones."""
    values = list(dict.fromkeys(k for row in rows for k in row if k not in CSV_COLUMNS))
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL)
    writer.writerow([*CSV_COLUMNS, *values])
    for row in rows:
        writer.writerow([_cell(column, row.get(column)) for column in (*CSV_COLUMNS, *values)])
    return buffer.getvalue()


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    return guard(str(value)) if column in _TEXT_COLUMNS else str(value)


def write_csv(runs: Sequence[RunExport], out: str | Path) -> Path:
    """Write the runs' per-sample rows to the CSV file ``out`` (UTF-8), atomically; return its path.

    Raises:
        InputError: ``out`` is a folder, or the file cannot be written.
    """
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: a folder; --format csv writes one file: pass a file name, e.g. {out / 'samples.csv'}")
    atomic_write_text(out, to_csv(sample_rows(runs)))
    return out


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSV that :func:`write_csv` wrote: text exactly as recorded, numbers as floats, flags as bools."""
    import pandas as pd

    frame = pd.read_csv(
        path, dtype={c: str for c in (*_TEXT_COLUMNS, "caption_sha256", "units")}, keep_default_na=False,
        na_values={c: [""] for c in ("score", "weight", "unscored", "failed")}, encoding="utf-8",
    )  # fmt: skip
    for column in _TEXT_COLUMNS:
        frame[column] = frame[column].map(unguard)
    frame["units"] = frame["units"].map(json.loads)
    frame["judge_failed"] = frame["judge_failed"].map({"true": True, "false": False, True: True, False: False})
    for column in frame.columns:
        if column.startswith("value_"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


# ---------------------------------------------------------------- the entry point


def export_results(
    *sources: str | Path,
    format: Format,
    out: str | Path,
    benchmark: str | None = None,
    names: Sequence[str] = (),
    rounds: int = ROUNDS,
    seed: int = SEED,
) -> tuple[list[Path], list[str]]:
    """Export the finished runs under ``sources`` (default ``results``); what ``capbench export`` does.

    Returns the files written and the warnings.

    Raises:
        ConfigError: an unknown ``format``.
        InputError: a source holds no finished runs, a run is unfinished or damaged, or ``out`` cannot be written.
    """
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: unknown; choose from {', '.join(FORMATS)}")
    runs, warnings = find_runs(sources, benchmark, names)
    if format == "csv":
        return [write_csv(runs, out)], warnings
    return write_lmms_eval(runs, out, rounds, seed), warnings
