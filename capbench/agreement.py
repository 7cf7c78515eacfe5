"""Agreement of a pairwise judge with human battles (CapArena's annotation format).

A battle row has ``img``, ``source1``, ``source2``, ``caption1``, ``caption2``, ``ref`` and
``winner`` (the human verdict: ``source1``, ``source2``, or anything else for a tie), and
optionally ``cluster`` (the difficulty level). Battles with a ``"human"`` side are skipped, as
in CapArena. Caption-level agreement counts ties (a judge tie matches only a human tie);
model-level agreement compares the judge's bootstrap-Elo ratings with the humans' (computed
from the same battles the same way) by Spearman (average ranks) and Kendall τ-b correlation:
equal ratings are ties, never ordered by name, and a side whose ratings are all equal (a judge
that tied every battle) has no rank correlation, reported as undefined with the reason.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from capbench.errors import InputError
from capbench.evaluation import Progress, ProgressEngine
from capbench.hashing import sha256_file
from capbench.metrics.arena import PairJudge, PairTask
from capbench.metrics.base import Judges
from capbench.records import ImageRef, Sample, read_json_file

REQUIRED = ("img", "source1", "source2", "caption1", "caption2", "ref", "winner")
HUMAN = "human"
#: The level of battles without a ``cluster``, among battles that have one.
NO_LEVEL = "(no level)"


def read_annotations(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON list of CapArena human battles, checking each row's fields."""
    rows = read_json_file(path, "CapArena's annotation file (a JSON list of battles)")
    if not isinstance(rows, list):
        raise InputError(f"{path}: expected a JSON list of battles, as CapArena's caparena_annots_eval.json is")
    for index, row in enumerate(rows):
        missing = [k for k in REQUIRED if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            raise InputError(f"{path}: battle {index} lacks {', '.join(missing)} (strings); fix or drop that battle")
    return rows


def human_outcome(row: Mapping[str, Any]) -> float:
    """Return source1's result by the human verdict: 1 win, 0 loss, 0.5 for anything else (a tie)."""
    if row["winner"] == row["source1"]:
        return 1.0
    return 0.0 if row["winner"] == row["source2"] else 0.5


def judge_battles(
    rows: Sequence[Mapping[str, Any]],
    pairs: PairJudge,
    judges: Judges,
    images_dir: Path | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Judge every battle without a human side; return each with both outcomes and the raw judgments.

    In single-order mode the battle is judged in its stored order, as CapArena does. ``progress``
    is told the judge calls planned, then each as it completes.
    """
    kept = [r for r in rows if HUMAN not in (r["source1"], r["source2"])]
    tasks = []
    for row in kept:
        sample = Sample(row["img"], _image(images_dir, row["img"]), reference_caption=row["ref"])
        orders = (True,) if pairs.cfg.order == "single" else pairs.orders(row["img"], row["source1"], row["source2"])
        tasks.append(PairTask(sample, row["caption1"], row["caption2"], orders))
    if progress is not None:
        progress.start("agreement", sum(len(t.orders) for t in tasks))
        judges = {role: ProgressEngine(judge, progress) for role, judge in judges.items()}
    records, mode = pairs.judge(tasks, judges) if tasks else ([], "reference")
    return [_judged(row, record, mode) for row, record in zip(kept, records, strict=True)]


def _judged(row: Mapping[str, Any], record: Mapping[str, Any], mode: str) -> dict[str, Any]:
    return {
        "img": row["img"],
        "source1": row["source1"],
        "source2": row["source2"],
        "cluster": str(row.get("cluster", "")),
        "human": human_outcome(row),
        "judge": record["outcome"],
        "consistent": record["consistent"],
        "orders": record["orders"],
        "judge_mode": mode,
    }


def _image(images_dir: Path | None, name: str) -> ImageRef | None:
    if images_dir is None:
        return None
    path = images_dir / name
    if not path.is_file():
        raise InputError(f"{path}: image missing; --images-dir must hold the battles' images, named as in 'img'")
    return ImageRef(str(path), sha256_file(str(path)))


def caption_agreement(judged: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Share of battles where the judge's verdict (1, 2 or tie) equals the human's, overall and per level.

    ``levels`` holds one entry per difficulty level (``cluster``) named in the battles, with
    ``NO_LEVEL`` for battles without one when others have one; it is empty when no battle names a
    level (the overall numbers say it all).
    """
    usable = [j for j in judged if j["judge"] is not None]
    levels: dict[str, list[bool]] = defaultdict(list)
    for j in usable:
        levels[j["cluster"]].append(j["judge"] == j["human"])
    if set(levels) == {""}:
        levels.clear()
    elif "" in levels:
        levels[NO_LEVEL] = levels.pop("")

    def share(hits: Sequence[bool]) -> dict[str, Any]:
        return {"agreement": 100.0 * sum(hits) / len(hits) if hits else None, "battles": len(hits)}

    return {
        **share([j["judge"] == j["human"] for j in usable]),
        "failed": len(judged) - len(usable),
        "judge_ties": sum(1 for j in usable if j["judge"] == 0.5),
        "human_ties": sum(1 for j in usable if j["human"] == 0.5),
        "levels": {level: share(hits) for level, hits in sorted(levels.items())},
    }


def model_agreement(judged: Sequence[Mapping[str, Any]], rounds: int = 1000, seed: int = 42) -> dict[str, Any]:
    """Correlate the judge's bootstrap-Elo ratings of models with the humans' on the same battles.

    Returns:
        ``spearman`` and ``kendall`` (τ-b) of the median Elo ratings, ties as ties (None when
        undefined: fewer than 2 models, or one side rates every model the same), ``undefined``
        (why, or None), ``shared``, ``models``, both rankings best first (equal ratings in name
        order: read ``judge_ratings`` and ``human_ratings`` for the ties) and the ratings.
    """
    from capbench.judge_stats import rank_correlation
    from capbench.ranking import Battle, elo_ratings

    usable = [j for j in judged if j["judge"] is not None]
    judge = elo_ratings([Battle(j["source1"], j["source2"], j["judge"]) for j in usable], rounds=rounds, seed=seed)
    human = elo_ratings([Battle(j["source1"], j["source2"], j["human"]) for j in usable], rounds=rounds, seed=seed)
    judge_ratings, human_ratings = ({r.model: r.rating for r in side} for side in (judge, human))
    return {
        **rank_correlation(judge_ratings, human_ratings, ("judge's Elo rating", "human Elo rating")),
        "models": len(judge),
        "judge_ranking": [r.model for r in judge],
        "human_ranking": [r.model for r in human],
        "judge_ratings": judge_ratings,
        "human_ratings": human_ratings,
    }
