"""What ``capbench leaderboard`` does once its options are parsed: build, write, print."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from capbench.arena_board import ArenaBoard, arena_notes
from capbench.errors import ConfigError
from capbench.leaderboard import FORMATS, MIN_PAIRS, Board, Leaderboard, leaderboard_report, publish
from capbench.tables import OTHER_IMAGES, arena_rows, display_rows, notes


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
    """Run ``capbench leaderboard``: the library's :func:`~capbench.leaderboard.publish`, then print."""
    results_dir = Path(opts["results_dir"])
    out = Path(opts["out"]) if opts.get("out") else results_dir / "leaderboard"
    settings = {
        "benchmark": opts.get("benchmark"),
        "sort": opts.get("sort"),
        "baseline": opts.get("baseline"),
        "rounds": opts["rounds"],
        "seed": opts["seed"],
        "out": out,
        "formats": parse_formats(opts["formats"]),
        "figures": opts["figures"],
        "heatmap_metric": opts.get("heatmap_metric"),
        "min_pairs": opts.get("min_pairs") or MIN_PAIRS,
        "per_domain": bool(opts.get("per_domain")),
        "inspect": opts.get("inspect"),
    }
    if opts["as_json"]:
        click.echo(json.dumps(leaderboard_report(results_dir, **settings), indent=2, ensure_ascii=False))
        return
    board_set = publish(results_dir, **settings)
    print_boards(board_set)
    console = Console()
    console.print(Text(f"wrote {len(board_set.files)} file(s) to {out}/:", style="bold"))
    for path in board_set.files:
        console.print(Text(f"  {path}"))


def print_boards(board_set: Leaderboard) -> None:
    """Print each board as a rich table with its notes; warnings go to stderr."""
    console = Console()
    for board in board_set.boards:
        console.print(_table(board))
        for note in notes(board, board_set.rounds, board_set.seed):
            console.print(Text(f"  {note}", style="yellow" if note.startswith(("†", OTHER_IMAGES)) else "dim"))
    for arena in board_set.arenas:
        console.print(_arena_table(arena))
        for note in arena_notes(arena):
            console.print(Text(f"  {note}", style="dim"))
    errors = Console(stderr=True)
    for warning in board_set.warnings:
        errors.print(Text(f"warning: {warning}", style="yellow"))


def _table(board: Board) -> Table:
    headers, rows = display_rows(board)
    table = Table(title=Text(f"{board.benchmark}: {len(rows)} model(s)"), title_justify="left")
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right", no_wrap=index == 0)
    for row in rows:
        table.add_row(*(Text(text, style=_style(text)) for text, _ in row))
    return table


def _arena_table(arena: ArenaBoard) -> Table:
    headers, rows = arena_rows(arena)
    table = Table(title=Text(f"{arena.benchmark}: arena, {arena.battles} battle(s)"), title_justify="left")
    for header in headers:
        table.add_column(header, justify="left" if header == "caption set" else "right")
    for row in rows:
        table.add_row(*(Text(text) for text in row))
    return table


def _style(text: str) -> str:
    if OTHER_IMAGES in text:
        return "bold magenta"
    if "†" in text:
        return "yellow"
    if text.endswith(" *"):
        return "bold green" if text.startswith("+") else "bold red"
    return ""
