"""Which images a run scored, and whether the rows of one leaderboard scored the same ones.

A headline over 2 images of one domain is not comparable with one over the whole benchmark,
however the numbers look. ``capbench eval`` records in each manifest what part of the benchmark
a run covers (``caption_set.coverage``: the benchmark's sample count and, per domain, scored and
total); the leaderboard reads that with the ids in ``captions.jsonl``, picks the board's
*reference* image set (the whole benchmark where some row covers it, else the set most rows
share) and flags every row whose set differs from it. ``capbench eval`` warns when a caption
file covers only part of the benchmark (:func:`warn_partial`).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capbench.errors import InputError
from capbench.records import CaptionSet, Sample, read_caption_file

if TYPE_CHECKING:
    from capbench.data import Benchmark
    from capbench.results import Run

__all__ = [
    "Coverage", "describe_domains", "merge_coverage", "read_coverage", "reference_set", "sample_coverage",
    "warn_partial",
]  # fmt: skip


def sample_coverage(benchmark: Benchmark, samples: Sequence[Sample]) -> dict[str, Any]:
    """Return what part of ``benchmark`` ``samples`` are, as a manifest records it (``caption_set.coverage``).

    ``benchmark_samples``: the benchmark's sample count (as loaded: a split or domain option counts);
    ``domains``: per domain, [samples among ``samples``, samples of the benchmark].
    """
    total = Counter(s.domain for s in benchmark.samples)
    mine = Counter(s.domain for s in samples)
    return {"benchmark_samples": len(benchmark.samples), "domains": {d: [mine[d], n] for d, n in sorted(total.items())}}


def merge_coverage(parts: Sequence[Any]) -> dict[str, Any] | None:
    """Return the coverage of a run merged from shards, from each shard's (None if one lacks it or they disagree)."""
    if not parts or not all(isinstance(p, dict) and isinstance(p.get("domains"), dict) for p in parts):
        return None
    if len({p.get("benchmark_samples") for p in parts}) != 1:
        return None
    domains: dict[str, list[int]] = {}
    for part in parts:
        for name, (scored, total) in part["domains"].items():
            domains[name] = [domains.get(name, [0, total])[0] + scored, total]
    return {"benchmark_samples": parts[0]["benchmark_samples"], "domains": dict(sorted(domains.items()))}


def warn_partial(benchmark: Benchmark, captions: CaptionSet, chosen: Sequence[Sample], limit: int | None) -> None:
    """Warn when a caption set covers fewer of the benchmark's samples than the run asked for.

    A run with ``--limit N`` asked for N; without it, for all of them. The warning names the
    coverage, so that a score over 1 image of 18 is not read as a score of the benchmark.
    """
    total = len(benchmark.samples)
    wanted = total if limit is None else min(limit, total)
    if len(chosen) >= wanted:
        return
    domains = describe_domains(sample_coverage(benchmark, chosen)["domains"])
    where = Path(captions.source).name if captions.source else f"caption set {captions.name!r}"
    n = len(chosen)
    warnings.warn(
        f"{where} covers {n} of {total} images of {benchmark.name}{f' ({domains})' if domains else ''}; scores of "
        f"{captions.name!r} are over those {n} only, and the leaderboard flags the run as covering other images: "
        f"caption the other {total - n}, or pass --limit {n} to score a part on purpose",
        UserWarning,
        stacklevel=3,
    )


@dataclass(frozen=True)
class Coverage:
    """The images one row scored, and what its manifest says about the benchmark they are part of."""

    ids: frozenset[str]
    #: The benchmark's sample count (None for runs written before capbench recorded it).
    of: int | None = None
    #: domain -> (scored, total), from the manifest ({} when not recorded).
    domains: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def whole(self) -> bool:
        """Return whether the row scored every sample of the benchmark (as its manifest counts them)."""
        return self.of is not None and len(self.ids) >= self.of

    def describe(self) -> str:
        """Say which part of the benchmark the row covers: ``2 of 18 images (natural 2/10, science 0/6)``."""
        noun = "image" if len(self.ids) == 1 and self.of in (None, 1) else "images"
        count = f"{len(self.ids)} of {self.of} {noun}" if self.of is not None else f"{len(self.ids)} {noun}"
        domains = describe_domains(self.domains)
        return f"{count} ({domains})" if domains else count


def describe_domains(domains: Mapping[str, Sequence[int]]) -> str:
    """Return ``natural 2/10, science 0/6`` (empty when there is one domain only, or none known)."""
    if len(domains) < 2:
        return ""
    return ", ".join(f"{name} {counts[0]}/{counts[1]}" for name, counts in sorted(domains.items()))


def read_coverage(run: Run) -> Coverage:
    """Return the images ``run`` scored (the ids of its ``captions.jsonl``) and its manifest's coverage entry.

    A run without a readable ``captions.jsonl`` counts the images its metrics scored or failed.
    """
    ids: frozenset[str] = frozenset()
    captions = run.path / "captions.jsonl"
    if captions.exists() and captions.stat().st_size:
        try:
            ids = frozenset(read_caption_file(captions).captions)
        except InputError:
            ids = frozenset()
    if not ids:
        ids = frozenset(u[0] for m in run.metrics.values() for u in m.units)
        ids |= {i for m in run.metrics.values() for i in m.failed_ids}
    of, domains = _recorded(run.path / "manifest.json")
    if sum(scored for scored, _ in domains.values()) != len(ids):  # counts of other samples (a merged shard's)
        domains = {}
    return Coverage(ids, of, domains)


def _recorded(path: Path) -> tuple[int | None, dict[str, tuple[int, int]]]:
    """The benchmark's sample count and the per-domain counts a manifest records (None, {} if it does not)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, {}
    caption_set = manifest.get("caption_set") if isinstance(manifest, dict) else None
    entry: Any = caption_set.get("coverage") if isinstance(caption_set, dict) else None
    if not isinstance(entry, dict) or not _count(entry.get("benchmark_samples")):
        return None, {}
    raw = entry.get("domains") if isinstance(entry.get("domains"), dict) else {}
    domains = {
        str(k): (int(v[0]), int(v[1]))
        for k, v in raw.items()
        if isinstance(v, list) and len(v) == 2 and all(_count(x) for x in v)
    }
    return int(entry["benchmark_samples"]), domains


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def reference_set(coverages: Mapping[str, Coverage]) -> frozenset[str]:
    """Return the image set a board's rows are compared on.

    The whole benchmark if some row covers it (the largest such set); otherwise the set shared by
    the most rows, a larger set winning a tie (then the set whose sorted ids come first).
    """
    whole = [c.ids for c in coverages.values() if c.whole]
    if whole:
        return max(whole, key=len)
    counts = Counter(c.ids for c in coverages.values())
    if not counts:
        return frozenset()
    best = max(counts.values())
    tied = [ids for ids, n in counts.items() if n == best]
    return min(tied, key=lambda ids: (-len(ids), sorted(ids)))
