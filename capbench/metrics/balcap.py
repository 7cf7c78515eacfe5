"""The BalCapRL rewards (arXiv 2605.07394) and b-CapScore, on the shared fact pipeline.

- precision: share of the caption's atomic facts judged both correct (visually verifiable)
  and pointable (about something locatable in the image; mood and meta-commentary are not);
- recall: share of the reference units that the caption covers, a unit being covered when a
  correct caption fact matches it;
- linguistic: mean of clarity, fluency and coherence ratings (1-10), scaled to [0, 1];
- b-CapScore: 100 × the harmonic mean of the three.

Precision is averaged over verification samples, recall over (verification, matching)
trials. docs/metrics/balcap.md says which details are our reading of the paper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from capbench.metrics.base import mean
from capbench.metrics.facts import RATINGS, FactConfig, FactJudgments, FactMetric, Verdicts
from capbench.records import SampleScore

KEYS = ("precision", "recall", "linguistic", "b_capscore")


def balcap_precision(verdicts: Verdicts) -> float:
    """Share of facts both correct and pointable, in one verification sample."""
    n = len(verdicts.correct)
    return sum(c and p for c, p in zip(verdicts.correct, verdicts.pointable, strict=True)) / n if n else 0.0


def balcap_recall(correct: Sequence[bool], matched: Sequence[int | None], n_references: int) -> float:
    """Share of reference units matched by at least one correct caption fact."""
    covered = {m for c, m in zip(correct, matched, strict=True) if c and m is not None}
    return len(covered) / n_references if n_references else 0.0


def linguistic_score(ratings: Mapping[str, int]) -> float:
    """Mean of the 1-10 ratings, scaled to [0, 1]."""
    return (sum(ratings[k] for k in RATINGS) / len(RATINGS) - 1) / 9


def b_capscore(precision: float, recall: float, linguistic: float) -> float:
    """100 × the harmonic mean of the three rewards (0 if any is 0)."""
    parts = (precision, recall, linguistic)
    if min(parts) <= 0:
        return 0.0
    return 100 * len(parts) / sum(1 / x for x in parts)


def score_judgments(judgments: FactJudgments) -> dict[str, float | None]:
    """Score one caption from its judgments; without a rating, linguistic and b-CapScore are None."""
    n_refs = len(judgments.references)
    precision = mean([balcap_precision(v) for v in judgments.verdicts]) or 0.0
    recall = mean([balcap_recall(v.correct, m, n_refs) for v in judgments.verdicts for m in judgments.matches]) or 0.0
    linguistic = None if judgments.ratings is None else linguistic_score(judgments.ratings)
    return {
        "precision": precision,
        "recall": recall,
        "linguistic": linguistic,
        "b_capscore": None if linguistic is None else b_capscore(precision, recall, linguistic),
    }


class BalCap(FactMetric):
    """The three BalCapRL rewards and b-CapScore."""

    name = "balcap"
    stages = ("match", "verify", "linguistic")
    linguistic = True
    keys = KEYS
    headline = "b_capscore"
    title = "BalCapRL"
    description = "BalCapRL rewards: pointable precision, reference recall, linguistic quality; b-CapScore"
    columns = (
        ("b-CapScore", "score"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("linguistic", "linguistic"),
        ("unscored", "failed"),
        ("verified by", "verify_mode"),
    )
    rewards = (
        ("balcap_precision", "precision", 1.0),
        ("balcap_recall", "recall", 1.0),
        ("balcap_linguistic", "linguistic", 1.0),
    )

    def values(self, judgments: FactJudgments) -> dict[str, float | None]:
        """Return precision, recall and linguistic in [0, 1], and b-CapScore (None without a rating)."""
        return score_judgments(judgments)

    def summarize(self, scores: Sequence[SampleScore]) -> dict[str, Any]:
        """Means over the scored captions (×100); failed captions are counted and named."""
        scored = [s for s in scores if s.values.get("b_capscore") is not None]
        out: dict[str, Any] = {"score": mean([s.values["b_capscore"] for s in scored])}
        for key in ("precision", "recall", "linguistic"):
            m = mean([s.values[key] for s in scores if s.values.get(key) is not None])
            out[key] = None if m is None else 100 * m
        failed = [s.sample_id for s in scores if s.values.get("b_capscore") is None]
        out.update(images=len(scored), failed=len(failed), failed_ids=failed)
        out["verify_mode"] = sorted({s.details.get("verify_mode", "?") for s in scores})
        return out


__all__ = ["KEYS", "BalCap", "FactConfig", "b_capscore", "score_judgments"]
