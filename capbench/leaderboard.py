"""Leaderboards from results folders: headlines with bootstrap intervals, paired differences, tables.

Reads what ``capbench eval`` wrote (``<results>/<benchmark>/<caption set>/``) and knows no metric
by name: every metric gives *units* whose stratified mean is its headline
(:func:`capbench.metrics.base.headline`), so one stratified bootstrap serves them all. A column
whose rows were judged by different judges or protocols is flagged, never silently compared.
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
from capbench.metrics import METRICS, build_metric
from capbench.metrics.base import Metric, Unit, headline
from capbench.records import SampleScore, check_format, read_caption_file
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


@dataclass(frozen=True)
class MetricInfo:
    """What the leaderboard needs to know about a metric: its direction and range."""

    name: str
    higher_is_better: bool
    value_range: tuple[float, float]


@dataclass
class MetricResult:
    """One metric's scores of one caption set, and what produced them."""

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

    A broken manifest, an unknown metric or a missing score file skips that part with a warning;
    a damaged score file (a bad line that is not an unfinished last one) is an error.

    Raises:
        InputError: the folder holds no results (for ``benchmark``), or a score file is damaged.
    """
    started = time.perf_counter()
    root = Path(results_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such results folder; run `capbench eval` first, or pass the folder it wrote to")
    warnings: list[str] = []
    metrics: dict[str, Metric | None] = {}
    runs: list[Run] = []
    others: set[str] = set()
    for manifest_path in sorted(root.glob("*/*/manifest.json")):
        run = _load_run(manifest_path, metrics, warnings)
        if run is not None and (benchmark is None or run.benchmark == benchmark):
            runs.append(run)
        elif run is not None:
            others.add(run.benchmark)
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        if not (folder / "manifest.json").exists() and any(folder.glob("*.jsonl")):
            warnings.append(f"{folder}: scores without a manifest.json (a run killed early?); left out")
    if not runs and others:
        raise InputError(f"{root}: no results for benchmark {benchmark!r}; it has: {', '.join(sorted(others))}")
    if not runs:
        raise InputError(f"{root}: no results; run `capbench eval` first (it writes results there)")
    return Results(root, runs, warnings, time.perf_counter() - started)


def _load_run(path: Path, metrics: dict[str, Metric | None], warnings: list[str]) -> Run | None:
    manifest = _read_manifest(path, warnings)
    if manifest is None:
        return None
    folder = path.parent
    captions = _read_captions(folder / "captions.jsonl", warnings)
    caption_set = manifest.get("caption_set") if isinstance(manifest.get("caption_set"), dict) else {}
    found: dict[str, MetricResult] = {}
    for name, entry in manifest["metrics"].items():
        if name not in metrics:
            metrics[name] = _build(name, path, warnings)
        metric = metrics[name]
        if metric is not None and isinstance(entry, dict):
            result = _load_metric(folder / f"{safe_name(name)}.jsonl", metric, entry, captions, warnings)
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
    )


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


def _build(name: str, path: Path, warnings: list[str]) -> Metric | None:
    try:
        return build_metric(name)
    except CapbenchError as exc:
        warnings.append(f"{path}: metric {name!r} cannot be read by this capbench ({exc}); left out")
        return None


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


def _load_metric(
    path: Path, metric: Metric, entry: dict[str, Any], captions: dict[str, str], warnings: list[str]
) -> MetricResult | None:
    if not path.exists():
        warnings.append(f"{path}: missing, though the manifest lists {metric.name}; left out")
        return None
    scores = read_scores(path, warnings)
    if captions:
        # A later run with --limit rewrites captions.jsonl; the manifest summarises those samples only.
        scores = [s for s in scores if s.sample_id in captions]
    units = metric.units(scores)
    with_units = {u[0] for u in units}
    summary = entry.get("summary") if isinstance(entry.get("summary"), dict) else {}
    stated, found = summary.get("score"), headline(units)
    if stated is not None and found is not None and not math.isclose(stated, found, rel_tol=1e-9, abs_tol=1e-9):
        warnings.append(
            f"{path}: its scores give {metric.name} {found:.2f} but the manifest says {stated:.2f} "
            "(an unfinished or resumed run?); the leaderboard uses the scores"
        )
    return MetricResult(
        info=MetricInfo(metric.name, bool(metric.higher_is_better), tuple(metric.value_range)),
        units=units,
        summary=summary,
        judges=_fingerprints(entry.get("judges")),
        config_hash=str(entry.get("config_hash", "")),
        failed_ids=sorted(s.sample_id for s in scores if s.sample_id not in with_units and s.unscored > 0),
    )


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
        boards.append(_board(name, runs, rng, rounds, baseline))
    timings = {"load": results.seconds, "bootstrap": time.perf_counter() - started}
    if sort is not None:
        having = [b for b in boards if sort in b.frame.columns]
        for board in having or boards[:1]:
            board.frame, board.sort = sort_frame(board, sort), sort
        warnings += [f"{b.benchmark}: no column {sort!r}; sorted by {b.sort}" for b in boards if b not in having]
    return Leaderboard(boards, warnings, rounds, seed, timings)


def metric_order(names: Iterable[str]) -> list[str]:
    """Order metric names as the registry does; unregistered ones after, alphabetically."""
    known = list(METRICS)
    return sorted(set(names), key=lambda n: (known.index(n) if n in known else len(known), n))


def _board(benchmark: str, runs: list[Run], rng: np.random.Generator, rounds: int, baseline: str | None) -> Board:
    import pandas as pd

    runs = sorted(runs, key=lambda r: r.model)
    metrics = metric_order(m for r in runs for m in r.metrics)
    infos = {m: next(r.metrics[m].info for r in runs if m in r.metrics) for m in metrics}
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


def _columns(metrics: Sequence[str], with_baseline: bool) -> list[str]:
    columns = ["benchmark", "model"]
    for m in metrics:
        columns += [m, f"{m}_low", f"{m}_high", f"{m}_images", f"{m}_failed", f"{m}_protocol"]
        if with_baseline:
            columns += [f"{m}_diff", f"{m}_diff_low", f"{m}_diff_high", f"{m}_diff_excludes_zero"]
    return [*columns, "words", "judges", "images", "failed"]


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
