"""Arena rankings on the leaderboard: what ``capbench arena`` wrote to ``<results>/<benchmark>/_arena/``.

A tournament ranks caption sets from pairwise battles (Bradley–Terry and CapArena's bootstrap
Elo, each with a 95% interval; :mod:`capbench.tournament`), which is no per-image score: the
leaderboard shows it as a table of its own beside the benchmark's board, as ``rankings.json``
holds it. A folder with battles but no ``rankings.json`` (a tournament killed before ranking) is
left out with a warning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capbench.runs import safe_name

__all__ = ["ARENA_FOLDER", "ArenaBoard", "ArenaRow", "arena_notes", "load_arenas"]

#: The folder of a benchmark's tournament (:class:`capbench.tournament.Tournament`).
ARENA_FOLDER = "_arena"


@dataclass(frozen=True)
class ArenaRow:
    """One caption set's ratings: Bradley–Terry and Elo, each with its 95% bootstrap interval, and its record."""

    model: str
    rating: float
    low: float
    high: float
    elo: float | None
    elo_low: float | None
    elo_high: float | None
    battles: int
    wins: int
    losses: int
    ties: int

    def to_dict(self) -> dict[str, Any]:
        """Return the row as the JSON report holds it."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class ArenaBoard:
    """One benchmark's tournament ranking, best first by Bradley–Terry rating."""

    benchmark: str
    path: Path
    judge: str
    order: str
    battles: int
    failed: int
    consistency: float | None
    rows: tuple[ArenaRow, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the board as the JSON report holds it (``arenas`` of the leaderboard report)."""
        return {
            "benchmark": self.benchmark,
            "path": str(self.path),
            "judge": self.judge,
            "order": self.order,
            "battles": self.battles,
            "failed": self.failed,
            "consistency": self.consistency,
            "rows": [r.to_dict() for r in self.rows],
            "notes": arena_notes(self),
        }


def load_arenas(root: Path, benchmark: str | None, warnings: list[str]) -> list[ArenaBoard]:
    """Read every tournament under ``root`` (of ``benchmark`` only, if given), warning of those that cannot be."""
    boards = []
    pattern = f"{safe_name(benchmark) if benchmark else '*'}/{ARENA_FOLDER}"
    for folder in sorted(p for p in Path(root).glob(pattern) if p.is_dir()):
        path = folder / "rankings.json"
        if not path.exists():
            if (folder / "battles.jsonl").exists():
                warnings.append(
                    f"{folder}: battles but no rankings.json (a tournament stopped before ranking); left out: rerun "
                    "its `capbench arena` command (judged battles are kept)"
                )
            continue
        board = _read(path, warnings)
        if board is not None and (benchmark is None or board.benchmark == benchmark):
            boards.append(board)
    return boards


def _read(path: Path, warnings: list[str]) -> ArenaBoard | None:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(report, dict):
            raise ValueError("not a JSON object")
        elo = {str(r["model"]): r for r in report.get("elo") or []}
        rows = [_row(r, elo.get(str(r["model"]))) for r in report["bradley_terry"]]
        board = ArenaBoard(
            benchmark=str(report.get("benchmark") or path.parent.parent.name),
            path=path.parent,
            judge=str(report.get("judge") or "?"),
            order=str(report.get("order") or "?"),
            battles=int(report.get("battles") or 0),
            failed=int(report.get("failed") or 0),
            consistency=_number(report.get("consistency")),
            rows=tuple(sorted(rows, key=lambda r: (-r.rating, r.model))),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.append(f"{path}: not a readable arena ranking ({type(exc).__name__}: {exc}); left out: rerun its "
                        "`capbench arena` command")  # fmt: skip
        return None
    return board


def _row(bt: dict[str, Any], elo: dict[str, Any] | None) -> ArenaRow:
    rating, low, high = (_number(bt[k]) for k in ("rating", "low", "high"))
    if rating is None or low is None or high is None:
        raise ValueError(f"caption set {bt['model']!r} has no Bradley-Terry rating")
    return ArenaRow(
        model=str(bt["model"]),
        rating=rating,
        low=low,
        high=high,
        elo=None if elo is None else _number(elo.get("rating")),
        elo_low=None if elo is None else _number(elo.get("low")),
        elo_high=None if elo is None else _number(elo.get("high")),
        battles=int(bt.get("battles", 0)),
        wins=int(bt.get("wins", 0)),
        losses=int(bt.get("losses", 0)),
        ties=int(bt.get("ties", 0)),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def arena_notes(board: ArenaBoard) -> list[str]:
    """Return the footnotes of an arena table: what the ratings are, who judged, what was left out."""
    swap = "" if board.consistency is None else f"; verdicts that survived the order swap: {board.consistency:.1f}%"
    return [
        "Arena: caption sets ranked by pairwise battles (capbench arena), best first by Bradley-Terry rating on the "
        "Elo scale, with CapArena's bootstrap Elo beside it; each with its 95% bootstrap interval over battles, as "
        f"written to {board.path / 'rankings.json'}. W-L-T: the set's wins, losses and ties.",
        f"Judge {board.judge} ({board.order} order); {board.battles} battle(s) ranked, {board.failed} without a "
        f"verdict left out{swap}.",
    ]
