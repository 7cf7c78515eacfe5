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

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capbench.errors import ConfigError
from capbench.metrics import METRICS
from capbench.metrics.base import Unit, headline
from capbench.records import MetricInfo
from capbench.results import MetricResult, Results, Run, load_results, read_scores

__all__ = [
    "FORMATS", "LEVEL", "ROUNDS", "SEED", "Board", "Difference", "Leaderboard", "MetricInfo", "MetricResult", "Results",
    "Run", "bootstrap", "build_leaderboard", "leaderboard_report", "load_results", "metric_order", "paired_difference",
    "per_image", "percentile_interval", "publish", "read_scores", "resample", "sort_frame", "sort_metric", "to_records",
]  # fmt: skip

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

ROUNDS = 1000
SEED = 0
LEVEL = 0.95
FORMATS = {"md": "leaderboard.md", "csv": "leaderboard.csv", "tex": "leaderboard.tex", "html": "leaderboard.html"}
#: Cap on one resampling block (rounds × units) so a huge stratum does not exhaust memory.
_BLOCK = 4_000_000


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
