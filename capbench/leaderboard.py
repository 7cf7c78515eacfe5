"""Leaderboards from results folders: headlines with bootstrap intervals, paired differences, tables.

Reads what ``capbench eval`` wrote (``<results>/<benchmark>/<caption set>/``, described in
``docs/results-format.md``) and needs no metric's code: every metric gives *units* whose
stratified mean is its headline (:func:`capbench.metrics.base.headline`), so one stratified
bootstrap serves them all. Results of format 2 carry each sample's units and the metric's
description (direction, range, title); only older results are read with the installed metric's
code. A column whose rows were judged by different judges or protocols is flagged, never
silently compared.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capbench.errors import CapbenchError, ConfigError, InputError
from capbench.hashing import content_hash
from capbench.metrics import METRICS, build_metric, describe, metric_names
from capbench.metrics.base import Metric, Unit, headline
from capbench.records import RESERVED_METRIC_NAMES, MetricInfo, SampleScore, check_format, read_caption_file
from capbench.runs import ScoreLog, safe_name

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

ROUNDS = 1000
SEED = 0
LEVEL = 0.95
FORMATS = {"md": "leaderboard.md", "csv": "leaderboard.csv", "tex": "leaderboard.tex", "html": "leaderboard.html"}
#: Cap on one resampling block (rounds × units) so a huge stratum does not exhaust memory.
_BLOCK = 4_000_000


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
    if not runs and others:
        raise InputError(f"{root}: no results for benchmark {benchmark!r}; it has: {', '.join(sorted(others))}")
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


# ---------------------------------------------------------------- the bootstrap


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


@dataclass(frozen=True)
class Difference:
    """A paired difference of headlines (model − baseline) over the units both have."""

    point: float
    low: float
    high: float
    units: int

    @property
    def excludes_zero(self) -> bool:
        """Return whether the interval lies wholly on one side of zero."""
        return self.low > 0 or self.high < 0


def paired_difference(
    units: Sequence[Unit], base: Sequence[Unit], rng: np.random.Generator, rounds: int = ROUNDS
) -> Difference | None:
    """Return the paired bootstrap difference of two unit lists, aligned by (sample id, stratum).

    None when they share no unit.
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
    return Difference(point - other, low, high, len(keys))


def _keyed(units: Iterable[Unit]) -> dict[tuple[str, str, int], tuple[float, float]]:
    """Key units by (sample id, stratum, occurrence), so repeated units of one image stay apart."""
    seen: dict[tuple[str, str], int] = {}
    out = {}
    for sample_id, stratum, value, weight in units:
        n = seen[(sample_id, stratum)] = seen.get((sample_id, stratum), -1) + 1
        out[(sample_id, stratum, n)] = (value, weight)
    return out


# ---------------------------------------------------------------- the table


@dataclass
class Board:
    """One benchmark's table: one row per model, numeric columns, and what marks and notes it needs."""

    benchmark: str
    metrics: list[str]
    infos: dict[str, MetricInfo]
    frame: pd.DataFrame
    runs: dict[str, Run]
    sort: str
    baseline: str | None
    #: metric -> model -> group letter, for metrics whose rows used different judges or protocols.
    mixed: dict[str, dict[str, str]]


@dataclass
class Leaderboard:
    """Every benchmark's board, with the settings and timings that produced them."""

    boards: list[Board]
    warnings: list[str]
    rounds: int
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    #: The results folder it was built from.
    root: Path | None = None
    #: The tables and figures written from it (:func:`publish`).
    files: list[Path] = field(default_factory=list)


def build_leaderboard(
    results: Results, sort: str | None = None, baseline: str | None = None, rounds: int = ROUNDS, seed: int = SEED
) -> Leaderboard:
    """Rank each benchmark's models with bootstrap intervals (one seeded generator for everything).

    Raises:
        ConfigError: ``baseline`` is no model of any benchmark, or ``sort`` names no column.
    """
    import numpy as np

    if baseline is not None and not any(r.model == baseline for r in results.runs):
        models = ", ".join(sorted({r.model for r in results.runs}))
        raise ConfigError(f"--baseline {baseline!r}: no such model (caption set); choose from: {models}")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    warnings = list(results.warnings)
    boards = []
    for name in results.benchmarks():
        runs = [r for r in results.runs if r.benchmark == name]
        if baseline is not None and not any(r.model == baseline for r in runs):
            warnings.append(f"{name}: baseline {baseline!r} has no results there; no differences in its table")
        boards.append(_board(name, runs, rng, rounds, baseline, warnings))
    timings = {"load": results.seconds, "bootstrap": time.perf_counter() - started}
    if sort is not None:
        having = [b for b in boards if sort in b.frame.columns]
        for board in having or boards[:1]:
            board.frame, board.sort = sort_frame(board, sort), sort
        warnings += [f"{b.benchmark}: no column {sort!r}; sorted by {b.sort}" for b in boards if b not in having]
    return Leaderboard(boards, warnings, rounds, seed, timings, results.root)


def metric_order(names: Iterable[str]) -> list[str]:
    """Order metric names: capbench's own in registry order, then any others (plugins' too) alphabetically."""
    known = list(METRICS)
    return sorted(set(names), key=lambda n: (known.index(n) if n in known else len(known), n))


def _board(
    benchmark: str, runs: list[Run], rng: np.random.Generator, rounds: int, baseline: str | None, warnings: list[str]
) -> Board:
    import pandas as pd

    runs = sorted(runs, key=lambda r: r.model)
    metrics = _columnable(benchmark, metric_order(m for r in runs for m in r.metrics), warnings)
    infos = {m: _agreed_info(benchmark, m, runs, warnings) for m in metrics}
    mixed = _mixed_groups(runs, metrics)
    base = next((r for r in runs if r.model == baseline), None)
    rows = []
    for run in runs:
        row: dict[str, Any] = {"benchmark": benchmark, "model": run.model}
        for name in metrics:
            row.update(_metric_cells(run, base, name, rng, rounds))
        failed = {i for m in run.metrics.values() for i in m.failed_ids}
        judges = dict.fromkeys(
            str(fp.get("model", "?")) for m in metric_order(run.metrics) for fp in run.metrics[m].judges.values()
        )
        row.update(words=run.words, judges=", ".join(judges), images=run.samples, failed=len(failed))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=_columns(metrics, base is not None))
    sort = metrics[0] if metrics else "model"
    board = Board(benchmark, metrics, infos, frame, {r.model: r for r in runs}, sort, baseline if base else None, mixed)
    board.frame = sort_frame(board, sort)
    return board


def _columnable(benchmark: str, metrics: Sequence[str], warnings: list[str]) -> list[str]:
    """Return the metrics whose columns clash with no other column (``x`` and ``x_low`` cannot both be)."""
    taken = set(_columns([], True))
    kept = []
    for name in metrics:
        own = _metric_columns(name, True)
        if taken.intersection(own):
            warnings.append(f"{benchmark}: metric {name!r} would share a table column with another; left out")
            continue
        taken.update(own)
        kept.append(name)
    return kept


def _agreed_info(benchmark: str, name: str, runs: Sequence[Run], warnings: list[str]) -> MetricInfo:
    """Return the metric's description; warn when runs disagree on its direction or range (the first wins)."""
    infos = [r.metrics[name].info for r in runs if name in r.metrics]
    if len({(i.higher_is_better, i.value_range) for i in infos}) > 1:
        warnings.append(
            f"{benchmark}: the runs of {name} disagree on its direction or range (written by different versions "
            f"of the metric?); the table uses {infos[0].value_range} with "
            f"{'higher' if infos[0].higher_is_better else 'lower'} is better: rescore them with one version"
        )
    return infos[0]


def _columns(metrics: Sequence[str], with_baseline: bool) -> list[str]:
    columns = ["benchmark", "model"]
    for m in metrics:
        columns += _metric_columns(m, with_baseline)
    return [*columns, "words", "judges", "images", "failed"]


def _metric_columns(m: str, with_baseline: bool) -> list[str]:
    columns = [m, f"{m}_low", f"{m}_high", f"{m}_images", f"{m}_failed", f"{m}_protocol"]
    if with_baseline:
        columns += [f"{m}_diff", f"{m}_diff_low", f"{m}_diff_high", f"{m}_diff_excludes_zero"]
    return columns


def _metric_cells(run: Run, base: Run | None, name: str, rng: np.random.Generator, rounds: int) -> dict[str, Any]:
    result = run.metrics.get(name)
    if result is None:
        return {}
    low, high = bootstrap(result.units, rng, rounds)
    cells: dict[str, Any] = {
        name: result.score,
        f"{name}_low": low,
        f"{name}_high": high,
        f"{name}_images": result.images,
        f"{name}_failed": len(result.failed_ids),
        f"{name}_protocol": result.protocol[:12],
    }
    other = base.metrics.get(name) if base is not None and base is not run else None
    # Differences across judges or protocols would compare the judges, not the models: leave them out.
    if other is not None and other.protocol == result.protocol:
        diff = paired_difference(result.units, other.units, rng, rounds)
        if diff is not None:
            cells.update({f"{name}_diff": diff.point, f"{name}_diff_low": diff.low, f"{name}_diff_high": diff.high})
            cells[f"{name}_diff_excludes_zero"] = diff.excludes_zero
    return cells


def _mixed_groups(runs: Sequence[Run], metrics: Sequence[str]) -> dict[str, dict[str, str]]:
    """Letter each metric's protocol groups (in model order) where a column holds more than one."""
    mixed: dict[str, dict[str, str]] = {}
    for name in metrics:
        letters: dict[str, str] = {}
        for run in runs:
            if name in run.metrics:
                letters.setdefault(run.metrics[name].protocol, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[len(letters) % 26])
        if len(letters) > 1:
            mixed[name] = {r.model: letters[r.metrics[name].protocol] for r in runs if name in r.metrics}
    return mixed


def sort_frame(board: Board, column: str) -> pd.DataFrame:
    """Sort a board's rows by ``column``, best first for metric columns (ties by model name).

    Raises:
        ConfigError: the board has no such column.
    """
    frame = board.frame
    if column not in frame.columns or column == "benchmark":
        shown = ", ".join([*board.metrics, "words", "judges", "images", "failed", "model"])
        raise ConfigError(f"--sort {column!r}: no such column; choose from {shown}, or any CSV column")
    metric = sort_metric(board, column)
    if column in ("model", "judges", "failed") or column.endswith(("_protocol", "_failed")):
        ascending = True
    elif metric is not None and not column.endswith(("_images", "_excludes_zero")):
        ascending = not board.infos[metric].higher_is_better
    else:
        ascending = False
    return frame.sort_values(
        [column, "model"], ascending=[ascending, True], na_position="last", kind="stable", ignore_index=True
    )


def sort_metric(board: Board, column: str | None = None) -> str | None:
    """Return the metric that ``column`` (default: the sort column) belongs to, if any."""
    column = column or board.sort
    return next((m for m in board.metrics if column == m or column.startswith(f"{m}_")), None)


def per_image(board: Board, metric: str) -> pd.DataFrame:
    """Return each model's per-image score of ``metric`` (the weighted mean of the image's units)."""
    import pandas as pd

    rows = [
        (model, sample_id, value * weight, weight)
        for model, run in board.runs.items()
        if metric in run.metrics
        for sample_id, _, value, weight in run.metrics[metric].units
    ]
    frame = pd.DataFrame(rows, columns=["model", "image", "vw", "w"]).groupby(["model", "image"]).sum()
    return (frame["vw"] / frame["w"].where(frame["w"] > 0)).unstack("image")


def to_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Return a frame's rows as JSON-ready dicts (NaN becomes None)."""
    out = []
    for record in frame.to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else _plain(v)) for k, v in record.items()})
    return out


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# ---------------------------------------------------------------- the entry point


def publish(
    results_dir: str | Path,
    benchmark: str | None = None,
    sort: str | None = None,
    baseline: str | None = None,
    rounds: int = ROUNDS,
    seed: int = SEED,
    *,
    out: str | Path | None = None,
    formats: Sequence[str] = (),
    figures: bool = False,
    heatmap_metric: str | None = None,
) -> Leaderboard:
    """Build the leaderboard of ``results_dir`` and write its tables (and figures) to ``out`` if given.

    What ``capbench leaderboard`` does; the written paths are in the result's ``files``.

    Raises:
        InputError: no results there (for ``benchmark``), or a score file is damaged.
        ConfigError: an unknown ``baseline``, ``sort`` column, table format or ``heatmap_metric``.
    """
    started = time.perf_counter()
    board_set = build_leaderboard(load_results(results_dir, benchmark), sort, baseline, rounds, seed)
    if heatmap_metric and not any(heatmap_metric in b.metrics for b in board_set.boards):
        shown = sorted({m for b in board_set.boards for m in b.metrics})
        raise ConfigError(f"--heatmap-metric {heatmap_metric!r}: no results of it; choose from {', '.join(shown)}")
    if out is not None:
        from capbench.tables import write_tables

        mark = time.perf_counter()
        board_set.files += write_tables(board_set, Path(out), formats)
        board_set.timings["tables"] = time.perf_counter() - mark
        if figures:
            from capbench.plots import write_all_figures

            mark = time.perf_counter()
            board_set.files += write_all_figures(board_set, Path(out), heatmap_metric)
            board_set.timings["figures"] = time.perf_counter() - mark
    board_set.timings["total"] = time.perf_counter() - started
    return board_set


def leaderboard_report(
    results_dir: str | Path,
    benchmark: str | None = None,
    sort: str | None = None,
    baseline: str | None = None,
    rounds: int = ROUNDS,
    seed: int = SEED,
    **writing: Any,
) -> dict[str, Any]:
    """Return the leaderboard of ``results_dir`` as the JSON-ready report ``capbench leaderboard --json`` prints.

    Its structure is ``capbench/schemas/leaderboard.schema.json``: every board's rows (the CSV's
    columns), each metric's description, the notes, the warnings, the settings and timings.
    ``writing`` (``out``, ``formats``, ``figures``, ``heatmap_metric``) also writes files, as :func:`publish`.

    Raises:
        InputError: no results there (for ``benchmark``), or a score file is damaged.
        ConfigError: an unknown ``baseline``, ``sort`` column, table format or ``heatmap_metric``.
    """
    from capbench.tables import to_report

    return to_report(publish(results_dir, benchmark, sort, baseline, rounds, seed, **writing))
