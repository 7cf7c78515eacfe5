"""What ``capbench leaderboard`` does once its options are parsed: build, write, print."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from capbench.errors import ConfigError
from capbench.leaderboard import FORMATS, Board, Leaderboard, build_leaderboard, load_results, to_records
from capbench.tables import display_rows, notes, write_tables


def parse_formats(value: str) -> list[str]:
    """Return the table formats named in a comma-separated list.

    Raises:
        ConfigError: a name is not a known format.
    """
    names = list(dict.fromkeys(f.strip().lower() for f in value.split(",") if f.strip()))
    unknown = [f for f in names if f not in FORMATS]
    if unknown:
        raise ConfigError(f"--formats: unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    return names


def run(opts: Mapping[str, Any]) -> None:
    """Run ``capbench leaderboard``."""
    started = time.perf_counter()
    formats = parse_formats(opts["formats"])
    results_dir = Path(opts["results_dir"])
    results = load_results(results_dir, opts.get("benchmark"))
    board_set = build_leaderboard(results, opts.get("sort"), opts.get("baseline"), opts["rounds"], opts["seed"])
    heatmap_metric = opts.get("heatmap_metric")
    if heatmap_metric and not any(heatmap_metric in b.metrics for b in board_set.boards):
        shown = sorted({m for b in board_set.boards for m in b.metrics})
        raise ConfigError(f"--heatmap-metric {heatmap_metric!r}: no results of it; choose from {', '.join(shown)}")
    out = Path(opts["out"]) if opts.get("out") else results_dir / "leaderboard"
    mark = time.perf_counter()
    files = write_tables(board_set, out, formats)
    board_set.timings["tables"] = time.perf_counter() - mark
    if opts["figures"]:
        mark = time.perf_counter()
        files += _figures(board_set, out, heatmap_metric)
        board_set.timings["figures"] = time.perf_counter() - mark
    board_set.timings["total"] = time.perf_counter() - started
    if opts["as_json"]:
        click.echo(json.dumps(report(board_set, results_dir, files), indent=2, ensure_ascii=False))
        return
    print_boards(board_set)
    console = Console()
    console.print(Text(f"wrote {len(files)} file(s) to {out}/:", style="bold"))
    for path in files:
        console.print(Text(f"  {path}"))


def _figures(board_set: Leaderboard, out: Path, heatmap_metric: str | None) -> list[Path]:
    from capbench.plots import write_figures

    files: list[Path] = []
    for board in board_set.boards:
        metric = heatmap_metric if heatmap_metric in board.metrics else None
        if heatmap_metric and metric is None:
            board_set.warnings.append(
                f"{board.benchmark}: no {heatmap_metric} results; its heat map shows another metric"
            )
        files += write_figures(board, out, metric)
    return files


def report(board_set: Leaderboard, results_dir: Path, files: Sequence[Path]) -> dict[str, Any]:
    """Return the ``--json`` output: every board's rows, notes and settings, the files and timings."""
    boards = []
    for board in board_set.boards:
        metrics = {
            m: {
                "higher_is_better": board.infos[m].higher_is_better,
                "range": list(board.infos[m].value_range),
                "mixed_groups": board.mixed.get(m, {}),
            }
            for m in board.metrics
        }
        boards.append(
            {
                "benchmark": board.benchmark,
                "sort": board.sort,
                "baseline": board.baseline,
                "metrics": metrics,
                "rows": to_records(board.frame),
                "notes": notes(board, board_set.rounds, board_set.seed),
            }
        )
    return {
        "results_dir": str(results_dir),
        "rounds": board_set.rounds,
        "seed": board_set.seed,
        "boards": boards,
        "warnings": board_set.warnings,
        "files": [str(p) for p in files],
        "timings": {k: round(v, 4) for k, v in board_set.timings.items()},
    }


def print_boards(board_set: Leaderboard) -> None:
    """Print each board as a rich table with its notes; warnings go to stderr."""
    console = Console()
    for board in board_set.boards:
        console.print(_table(board))
        for note in notes(board, board_set.rounds, board_set.seed):
            console.print(Text(f"  {note}", style="yellow" if note.startswith("†") else "dim"))
    errors = Console(stderr=True)
    for warning in board_set.warnings:
        errors.print(Text(f"warning: {warning}", style="yellow"))


def _table(board: Board) -> Table:
    headers, rows = display_rows(board)
    table = Table(title=f"{board.benchmark}: {len(rows)} model(s)", title_justify="left")
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right", no_wrap=index == 0)
    for row in rows:
        table.add_row(*(Text(text, style=_style(text)) for text, _ in row))
    return table


def _style(text: str) -> str:
    if "†" in text:
        return "yellow"
    if text.endswith(" *"):
        return "bold green" if text.startswith("+") else "bold red"
    return ""
