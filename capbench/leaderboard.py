"""Leaderboards from results folders: headlines with bootstrap intervals, paired differences, tables.

Reads what ``capbench eval`` wrote (``<results>/<benchmark>/<caption set>/``, described in
``docs/results-format.md``) and needs no metric's code: every metric gives *units* whose
stratified mean is its headline (:func:`capbench.metrics.base.headline`), so one stratified
bootstrap (:mod:`capbench.bootstrap`) serves them all. Results of format 2 carry each sample's units and the metric's
description (direction, range, title); only older results are read with the installed metric's
code. A column whose rows were judged by different judges or protocols is flagged, never
silently compared; so is a row that scored other images than the board's reference set
(:mod:`capbench.coverage`), and such rows are listed after the comparable ones.

Every interval is drawn from a generator seeded by the leaderboard's seed and the row's own
units (:func:`unit_rng`), so a row's interval does not change with the other rows on the board.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capbench.arena_board import ArenaBoard, load_arenas
from capbench.bootstrap import (
    LEVEL,
    ROUNDS,
    Difference,
    bootstrap,
    paired_difference,
    percentile_interval,
    resample,
    unit_rng,
)
from capbench.coverage import Coverage, read_coverage, reference_set
from capbench.errors import ConfigError, InputError
from capbench.metrics import METRICS
from capbench.metrics.base import headline
from capbench.records import MetricInfo
from capbench.results import MetricResult, Results, Run, load_results, read_scores
from capbench.runs import safe_name

__all__ = [
    "FORMATS", "LEVEL", "MIN_PAIRS", "ROUNDS", "SEED", "Board", "Difference", "Leaderboard", "MetricInfo",
    "MetricResult", "Results", "Run", "bootstrap", "build_leaderboard", "domain_metrics", "leaderboard_report",
    "load_results", "metric_order", "paired_difference", "per_image", "percentile_interval", "publish", "read_scores",
    "resample", "sort_frame", "sort_metric", "to_records", "unit_rng",
]  # fmt: skip

if TYPE_CHECKING:
    import pandas as pd

SEED = 0
#: Fewest images two rows must share for their paired difference to get a significance mark.
MIN_PAIRS = 30
FORMATS = {"md": "leaderboard.md", "csv": "leaderboard.csv", "tex": "leaderboard.tex", "html": "leaderboard.html"}


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
    #: model -> the images it scored; rows whose ids are not ``reference`` are flagged.
    coverage: dict[str, Coverage] = field(default_factory=dict)
    #: The image set the rows are compared on (:func:`capbench.coverage.reference_set`).
    reference: frozenset[str] = frozenset()
    #: Fewest shared images for a paired difference's significance mark.
    min_pairs: int = MIN_PAIRS
    #: metric -> its domains, for the metrics shown per domain (``per_domain``).
    domains: dict[str, list[str]] = field(default_factory=dict)

    def flagged(self) -> dict[str, str]:
        """Return the rows that scored other images than the reference set, each with what it covers."""
        return {m: c.describe() for m, c in sorted(self.coverage.items()) if c.ids != self.reference}

    def reference_text(self) -> str:
        """Say what the reference set is: ``18 of 18 images`` (the count alone when the benchmark's is unknown)."""
        of = next((c.of for c in self.coverage.values() if c.of is not None), None)
        return f"{len(self.reference)} of {of} images" if of is not None else f"{len(self.reference)} images"


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
    #: Tournament rankings (``capbench arena``), one per benchmark that has one.
    arenas: list[ArenaBoard] = field(default_factory=list)
    min_pairs: int = MIN_PAIRS
    #: benchmark -> its figures, drawn before the tables so that the HTML page can embed them.
    figures: dict[str, list[Path]] = field(default_factory=dict)
    #: Where the HTML page's metric cells link to (an inspector report; ``#`` and the cell's anchor are added).
    inspect: str | None = None


def build_leaderboard(
    results: Results,
    sort: str | None = None,
    baseline: str | None = None,
    rounds: int = ROUNDS,
    seed: int = SEED,
    *,
    min_pairs: int = MIN_PAIRS,
    per_domain: bool = False,
    arenas: Sequence[ArenaBoard] = (),
) -> Leaderboard:
    """Rank each benchmark's models with bootstrap intervals (each row's draws seeded by ``seed`` and its units).

    ``per_domain`` adds one column per domain to metrics that break their score down by domain
    (:func:`domain_metrics`); ``arenas`` are tournament rankings shown beside the boards.

    Raises:
        ConfigError: ``baseline`` is no model of any benchmark, or ``sort`` names no column.
    """
    if baseline is not None and not any(r.model == baseline for r in results.runs):
        models = ", ".join(sorted({r.model for r in results.runs}))
        raise ConfigError(f"--baseline {baseline!r}: no such model (caption set); choose from: {models}")
    started = time.perf_counter()
    warnings = list(results.warnings)
    boards = []
    settings = {"rounds": rounds, "seed": seed, "min_pairs": min_pairs, "per_domain": per_domain}
    for name in results.benchmarks():
        runs = [r for r in results.runs if r.benchmark == name]
        if baseline is not None and not any(r.model == baseline for r in runs):
            warnings.append(f"{name}: baseline {baseline!r} has no results there; no differences in its table")
        boards.append(_board(name, runs, baseline, warnings, **settings))
    timings = {"load": results.seconds, "bootstrap": time.perf_counter() - started}
    if sort is not None:
        having = [b for b in boards if sort in b.frame.columns]
        for board in having or boards[:1]:
            board.frame, board.sort = sort_frame(board, sort), sort
        warnings += [f"{b.benchmark}: no column {sort!r}; sorted by {b.sort}" for b in boards if b not in having]
    return Leaderboard(boards, warnings, rounds, seed, timings, results.root, arenas=list(arenas), min_pairs=min_pairs)


def metric_order(names: Iterable[str]) -> list[str]:
    """Order metric names: capbench's own in registry order, then any others (plugins' too) alphabetically."""
    known = list(METRICS)
    return sorted(set(names), key=lambda n: (known.index(n) if n in known else len(known), n))


def domain_metrics(infos: dict[str, MetricInfo]) -> list[str]:
    """Return the metrics whose units are strata by domain: those declaring a breakdown of their ``domains``."""
    return [name for name, info in infos.items() if any(b[1] == "domains" for b in info.breakdowns)]


def _board(
    benchmark: str,
    runs: list[Run],
    baseline: str | None,
    warnings: list[str],
    *,
    rounds: int,
    seed: int,
    min_pairs: int,
    per_domain: bool,
) -> Board:
    import pandas as pd

    runs = sorted(runs, key=lambda r: r.model)
    metrics = _columnable(benchmark, metric_order(m for r in runs for m in r.metrics), warnings)
    infos = {m: _agreed_info(benchmark, m, runs, warnings) for m in metrics}
    mixed = _mixed_groups(runs, metrics)
    base = next((r for r in runs if r.model == baseline), None)
    domains = _domains(runs, domain_metrics(infos)) if per_domain else {}
    coverage = {r.model: read_coverage(r) for r in runs}
    reference = reference_set(coverage)
    rows = []
    for run in runs:
        row: dict[str, Any] = {"benchmark": benchmark, "model": run.model}
        for name in metrics:
            row.update(_metric_cells(run, base, name, seed, rounds, min_pairs, domains.get(name, [])))
        failed = {i for m in run.metrics.values() for i in m.failed_ids}
        judges = dict.fromkeys(
            str(fp.get("model", "?")) for m in metric_order(run.metrics) for fp in run.metrics[m].judges.values()
        )
        row.update(words=run.words, judges=", ".join(judges), images=run.samples, failed=len(failed))
        cover = coverage[run.model]
        row.update(images_of=cover.of, same_images=cover.ids == reference, covers=cover.describe())
        rows.append(row)
    frame = pd.DataFrame(rows, columns=_columns(metrics, base is not None, domains))
    sort = metrics[0] if metrics else "model"
    board = Board(
        benchmark, metrics, infos, frame, {r.model: r for r in runs}, sort, baseline if base else None, mixed,
        coverage, reference, min_pairs, domains,
    )  # fmt: skip
    board.frame = sort_frame(board, sort)
    return board


def _domains(runs: Sequence[Run], metrics: Sequence[str]) -> dict[str, list[str]]:
    """Return each metric's domains (its units' strata) over the board's runs, sorted."""
    return {m: sorted({u[1] for r in runs if m in r.metrics for u in r.metrics[m].units}) for m in metrics}


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


#: The columns of a row after its metrics' columns.
ROW_COLUMNS = ("words", "judges", "images", "failed", "images_of", "same_images", "covers")


def _columns(metrics: Sequence[str], with_baseline: bool, domains: dict[str, list[str]] | None = None) -> list[str]:
    columns = ["benchmark", "model"]
    for m in metrics:
        columns += _metric_columns(m, with_baseline, (domains or {}).get(m, ()))
    return [*columns, *ROW_COLUMNS]


def domain_column(metric: str, domain: str) -> str:
    """Return the column of ``metric``'s score on one domain."""
    return f"{metric}_domain_{domain}"


def _metric_columns(m: str, with_baseline: bool, domains: Sequence[str] = ()) -> list[str]:
    columns = [m, f"{m}_low", f"{m}_high", f"{m}_images", f"{m}_failed", f"{m}_protocol"]
    for domain in domains:
        column = domain_column(m, domain)
        columns += [column, f"{column}_low", f"{column}_high"]
    if with_baseline:
        columns += [f"{m}_diff", f"{m}_diff_low", f"{m}_diff_high", f"{m}_diff_excludes_zero"]
        columns += [f"{m}_diff_images", f"{m}_diff_significant"]
    return columns


def _metric_cells(
    run: Run, base: Run | None, name: str, seed: int, rounds: int, min_pairs: int, domains: Sequence[str]
) -> dict[str, Any]:
    result = run.metrics.get(name)
    if result is None:
        return {}
    low, high = bootstrap(result.units, unit_rng(seed, f"interval:{name}", result.units), rounds)
    cells: dict[str, Any] = {
        name: result.score,
        f"{name}_low": low,
        f"{name}_high": high,
        f"{name}_images": result.images,
        f"{name}_failed": len(result.failed_ids),
        f"{name}_protocol": result.protocol[:12],
    }
    for domain in domains:
        units = [u for u in result.units if u[1] == domain]
        column = domain_column(name, domain)
        cells[column] = headline(units)
        rng = unit_rng(seed, f"interval:{name}:{domain}", units)
        cells[f"{column}_low"], cells[f"{column}_high"] = bootstrap(units, rng, rounds)
    other = base.metrics.get(name) if base is not None and base is not run else None
    # Differences across judges or protocols would compare the judges, not the models: leave them out.
    if other is not None and other.protocol == result.protocol:
        rng = unit_rng(seed, f"difference:{name}", result.units, other.units)
        diff = paired_difference(result.units, other.units, rng, rounds)
        if diff is not None:
            cells.update({f"{name}_diff": diff.point, f"{name}_diff_low": diff.low, f"{name}_diff_high": diff.high})
            cells[f"{name}_diff_excludes_zero"] = diff.excludes_zero
            cells[f"{name}_diff_images"] = diff.images
            cells[f"{name}_diff_significant"] = diff.excludes_zero and diff.images >= min_pairs
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

    Rows that scored the reference image set come first, then the others (flagged), each group
    sorted by ``column``: a score over other images is never ranked among the comparable ones.

    Raises:
        ConfigError: the board has no such column.
    """
    frame = board.frame
    if column not in frame.columns or column == "benchmark":
        shown = ", ".join([*board.metrics, "words", "judges", "images", "failed", "model"])
        raise ConfigError(f"--sort {column!r}: no such column; choose from {shown}, or any CSV column")
    metric = sort_metric(board, column)
    if column in ("model", "judges", "failed", "covers") or column.endswith(("_protocol", "_failed")):
        ascending = True
    elif metric is not None and not column.endswith(("_images", "_excludes_zero", "_significant")):
        ascending = not board.infos[metric].higher_is_better
    else:
        ascending = False
    other = ~frame["same_images"].astype(bool) if "same_images" in frame.columns else frame["model"].isna()
    keyed = frame.assign(_other_images=other)
    return keyed.sort_values(
        ["_other_images", column, "model"],
        ascending=[True, ascending, True],
        na_position="last",
        kind="stable",
        ignore_index=True,
    ).drop(columns="_other_images")


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
        out.append({k: (None if _missing(v) else _plain(v)) for k, v in record.items()})
    return out


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN, and pandas' NA
    except (TypeError, ValueError):
        return False


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
    min_pairs: int = MIN_PAIRS,
    per_domain: bool = False,
    inspect: str | None = None,
) -> Leaderboard:
    """Build the leaderboard of ``results_dir`` and write its tables (and figures) to ``out`` if given.

    What ``capbench leaderboard`` does; the written paths are in the result's ``files``. Tournament
    rankings (``capbench arena``) under ``results_dir`` are read too, and shown as tables of their
    own. ``inspect``: an inspector report (a URL, or a path, linked relative to ``out``) that the
    HTML page's caption set × metric cells link to.

    Raises:
        InputError: no results there (for ``benchmark``), or a score file is damaged.
        ConfigError: an unknown ``baseline``, ``sort`` column, table format or ``heatmap_metric``.
    """
    started = time.perf_counter()
    arena_warnings: list[str] = []
    arenas = load_arenas(Path(results_dir), benchmark, arena_warnings) if Path(results_dir).is_dir() else []
    results = _results(Path(results_dir), benchmark, arenas)
    results.warnings += arena_warnings
    board_set = build_leaderboard(
        results, sort, baseline, rounds, seed, min_pairs=min_pairs, per_domain=per_domain, arenas=arenas
    )
    if heatmap_metric and not any(heatmap_metric in b.metrics for b in board_set.boards):
        shown = sorted({m for b in board_set.boards for m in b.metrics})
        raise ConfigError(f"--heatmap-metric {heatmap_metric!r}: no results of it; choose from {', '.join(shown)}")
    board_set.inspect = _link_base(inspect, out)
    if out is not None:
        if figures:
            from capbench.plots import write_all_figures

            mark = time.perf_counter()
            board_set.files += write_all_figures(board_set, Path(out), heatmap_metric)
            board_set.timings["figures"] = time.perf_counter() - mark
        from capbench.tables import write_tables

        mark = time.perf_counter()
        board_set.files += write_tables(board_set, Path(out), formats)
        board_set.timings["tables"] = time.perf_counter() - mark
    board_set.timings["total"] = time.perf_counter() - started
    return board_set


def _results(root: Path, benchmark: str | None, arenas: Sequence[ArenaBoard]) -> Results:
    """Load the runs; a folder holding tournament rankings but no run (of ``benchmark``) gives no runs, not an error."""
    try:
        return load_results(root, benchmark)
    except InputError:
        runs_there = any(root.glob(f"{safe_name(benchmark) if benchmark else '*'}/*/manifest.json"))
        if not arenas or runs_there:
            raise
    return Results(root, [])


def _link_base(inspect: str | None, out: str | Path | None) -> str | None:
    """Return the href of an inspector report: a URL as given, a path relative to the page's folder."""
    if not inspect:
        return None
    from urllib.parse import quote, urlsplit

    if len(urlsplit(inspect).scheme) > 1 or out is None:  # a URL (a one-letter "scheme" is a Windows drive)
        return inspect
    import os

    relative = os.path.relpath(Path(inspect).resolve(), Path(out).resolve())
    return quote(Path(relative).as_posix())


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
    columns), each metric's description, the notes, the arena rankings, the warnings, the settings
    and timings. ``writing`` (``out``, ``formats``, ``figures``, ``heatmap_metric``, ``min_pairs``,
    ``per_domain``, ``inspect``) is passed to :func:`publish`.

    Raises:
        InputError: no results there (for ``benchmark``), or a score file is damaged.
        ConfigError: an unknown ``baseline``, ``sort`` column, table format or ``heatmap_metric``.
    """
    from capbench.tables import to_report

    return to_report(publish(results_dir, benchmark, sort, baseline, rounds, seed, **writing))
