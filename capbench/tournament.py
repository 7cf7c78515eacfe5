"""Many models at once: pairwise battles between caption sets, then Bradley–Terry and Elo rankings.

Battles are judged with the same :class:`~capbench.metrics.arena.PairJudge` as the ``arena``
metric and appended to ``<results>/<benchmark>/_arena/battles.jsonl`` batch by batch, so a
killed run resumes where it stopped; ``rankings.json`` beside it holds the ratings with 95%
bootstrap intervals.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from capbench.data import Benchmark
from capbench.errors import InputError
from capbench.evaluation import Progress, ProgressEngine, select_samples
from capbench.hashing import content_hash, sha256_text
from capbench.metrics.arena import PairJudge, PairTask
from capbench.metrics.base import Judges
from capbench.records import CaptionSet, Sample
from capbench.runs import JsonlLog, atomic_write_text, safe_name


@dataclass(frozen=True)
class Match:
    """One planned battle: caption sets ``a`` and ``b`` (a < b) on one image."""

    sample: Sample
    a: str
    b: str

    @property
    def key(self) -> tuple[str, str, str]:
        """Identify the battle."""
        return (self.sample.id, self.a, self.b)


def plan(
    benchmark: Benchmark,
    sets: Sequence[CaptionSet],
    budget: int | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> list[Match]:
    """Return every pair of caption sets on every image both caption, or a seeded sample of ``budget``.

    With ``limit``, only the first ``limit`` images (in benchmark order) that have a battle take
    part, as ``eval --limit`` scores only the first images a caption set covers.
    """
    for caption_set in sets:
        select_samples(benchmark, caption_set)  # refuses ids the benchmark does not have
    names = sorted(s.name for s in sets)
    by_name = {s.name: s for s in sets}
    matches = [
        Match(sample, a, b)
        for sample in benchmark.samples
        for a, b in itertools.combinations(names, 2)
        if sample.id in by_name[a].captions and sample.id in by_name[b].captions
    ]
    if not matches and len(sets) > 1:
        raise InputError("no image is captioned by two of the caption sets, so there is nothing to compare")
    if limit is not None:
        kept = set(list(dict.fromkeys(m.sample.id for m in matches))[:limit])
        matches = [m for m in matches if m.sample.id in kept]
    if budget is not None and budget < len(matches):
        matches = sorted(random.Random(f"arena-budget:{seed}").sample(matches, budget), key=lambda m: m.key)
    return matches


class Tournament:
    """Judges battles between caption sets on one benchmark and ranks the sets."""

    def __init__(
        self, benchmark: Benchmark, sets: Sequence[CaptionSet], judges: Judges, pairs: PairJudge, results_dir: Path
    ) -> None:
        if len(sets) < 2:
            raise InputError("a tournament needs at least two caption sets; pass --captions twice or more")
        self.benchmark = benchmark
        self.sets = {s.name: s for s in sets}
        self.judges = judges
        self.pairs = pairs
        self.folder = Path(results_dir) / safe_name(benchmark.name) / "_arena"
        self.log = JsonlLog(self.folder / "battles.jsonl")

    @property
    def battles_path(self) -> Path:
        """Where battles are appended."""
        return self.log.path

    def config(self) -> dict[str, Any]:
        """Return what makes stored battles incomparable when it changes."""
        judge, mode = self.pairs.pick_judge(self.judges)
        return {
            "benchmark": self.benchmark.name,
            "arena": self.pairs.settings(),
            "prompts": self.pairs.prompt_hashes(),
            "judge": judge.fingerprint(),
            "judge_mode": mode,
        }  # fmt: skip

    def run(
        self,
        matches: Sequence[Match],
        batch_size: int = 16,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> list[dict[str, Any]]:
        """Judge the battles not yet stored, appending each batch; return every battle of ``matches``.

        ``progress`` is told the judge calls the pending battles need (stored ones need none), then
        each call as it completes.
        """
        config = self.config()
        done = {} if overwrite else self._load(config)
        if overwrite:
            self.log.reset()
        atomic_write_text(self.folder / "config.json", json.dumps({**config, "hash": content_hash(config)}, indent=2))
        pending = [m for m in matches if self._row_key(m) not in done]
        judges = self.judges
        if progress is not None:
            progress.start("arena", sum(len(self._task(m).orders) for m in pending))
            judges = {role: ProgressEngine(judge, progress) for role, judge in self.judges.items()}
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            tasks = [self._task(m) for m in batch]
            records, mode = self.pairs.judge(tasks, judges)
            rows = [self._row(m, r, mode) for m, r in zip(batch, records, strict=True)]
            self.log.append_rows(rows)
            done.update((self._row_key(m), row) for m, row in zip(batch, rows, strict=True))
        return [done[self._row_key(m)] for m in matches]

    def _task(self, match: Match) -> PairTask:
        a, b = self.sets[match.a].captions[match.sample.id], self.sets[match.b].captions[match.sample.id]
        return PairTask(match.sample, a, b, self.pairs.orders(match.sample.id, match.a, match.b))

    def _row_key(self, match: Match) -> tuple[str, str, str, str, str]:
        a, b = self.sets[match.a].captions[match.sample.id], self.sets[match.b].captions[match.sample.id]
        return (*match.key, sha256_text(a), sha256_text(b))

    def _row(self, match: Match, record: Mapping[str, Any], mode: str) -> dict[str, Any]:
        key = self._row_key(match)
        return {
            "sample_id": match.sample.id, "model_a": match.a, "model_b": match.b,
            "caption_a_sha256": key[3], "caption_b_sha256": key[4], "outcome": record["outcome"],
            "consistent": record["consistent"], "orders": record["orders"], "judge_mode": mode,
        }  # fmt: skip

    def _load(self, config: Mapping[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
        if not self.battles_path.exists():
            return {}
        stored = self.folder / "config.json"
        if stored.exists() and _stored_hash(stored) != content_hash(config):
            raise InputError(
                f"{self.folder}: its battles were judged with another judge, prompts or settings; "
                "rerun with --overwrite to replace them, or choose another --results-dir"
            )
        rows = {}
        for number, row in self.log.rows():
            try:
                key = tuple(str(row[k]) for k in _KEY)
            except KeyError as exc:
                raise InputError(
                    f"{self.battles_path}:{number}: not a capbench battle (no {exc.args[0]!r}); rerun with --overwrite"
                ) from None
            rows[key] = row
        return rows


_KEY = ("sample_id", "model_a", "model_b", "caption_a_sha256", "caption_b_sha256")


def _stored_hash(path: Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("hash")
    except (ValueError, AttributeError):
        return None  # unreadable: treated as other settings, so the user is told to --overwrite


def rank(battles: Sequence[Mapping[str, Any]], rounds: int = 1000, seed: int = 42) -> dict[str, Any]:
    """Rank caption sets from judged battles: Bradley–Terry and CapArena's bootstrap Elo, with 95% intervals."""
    from capbench.ranking import Battle, bt_ratings, elo_ratings

    valid = [Battle(b["model_a"], b["model_b"], b["outcome"]) for b in battles if b["outcome"] is not None]
    failed = sum(1 for b in battles if b["outcome"] is None)
    if not valid:
        raise InputError("no battle has a usable verdict, so nothing can be ranked; check the judge's replies")
    consistent = [b["consistent"] for b in battles if b.get("consistent") is not None]
    return {
        "battles": len(valid),
        "failed": failed,
        "consistency": None if not consistent else 100.0 * sum(consistent) / len(consistent),
        "bradley_terry": [asdict(r) for r in bt_ratings(valid, rounds=rounds, seed=seed)],
        "elo": [asdict(r) for r in elo_ratings(valid, rounds=rounds, seed=seed)],
    }
