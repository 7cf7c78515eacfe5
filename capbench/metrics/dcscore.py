"""DCScore (DeCapBench, "Painting with Words", ICLR 2025): precision and recall of atomic facts.

A caption is split into atomic facts; each fact is matched to the human reference facts and
verified. Per (verification sample, matching sample) trial, with every fact and again with the
descriptive facts only:

- precision = verified facts / facts;
- recall = (verified unmatched facts + Σ over verified matched facts of 1 / the number of
  caption facts matched to the same reference fact) / (reference facts + verified unmatched
  facts): a correct fact the reference lacks counts as new information;
- F1 = 2PR / (P + R + 1e-8).

P, R and F1 are averaged over trials, and DCScore = 100 × mean over images of
(F1_all + F1_descriptive) / 2. docs/metrics/dcscore.md says where capbench deviates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from capbench.metrics.base import mean
from capbench.metrics.facts import FactConfig, FactJudgments, FactMetric
from capbench.records import SampleScore

KEYS = ("precision", "recall", "f1", "precision_descriptive", "recall_descriptive", "f1_descriptive")


def _prf(
    subset: Sequence[int],
    correct: Sequence[bool],
    matched: Sequence[int | None],
    shares: Counter[int],
    n_references: int,
) -> tuple[float | None, float, float]:
    """Return precision, recall and F1 of the facts in ``subset`` (precision None if it is empty)."""
    credit, verified, denominator = 0.0, 0, n_references
    for i in subset:
        if not correct[i]:
            continue
        verified += 1
        if matched[i] is None:
            credit += 1
            denominator += 1
        else:
            credit += 1 / shares[matched[i]]
    precision = verified / len(subset) if subset else None
    recall = credit / denominator if denominator else 0.0
    p = precision or 0.0
    return precision, recall, 2 * p * recall / (p + recall + 1e-8)


def dcscore_trial(
    correct: Sequence[bool], matched: Sequence[int | None], descriptive: Sequence[bool], n_references: int
) -> dict[str, float | None]:
    """Score one (verification, matching) trial of one caption.

    ``correct[i]``, ``matched[i]`` (a reference index or None) and ``descriptive[i]`` describe
    caption fact i. As in the official code, the credit a matched fact shares with others is
    counted over *all* caption facts that match the same reference fact, in the descriptive
    pass too.
    """
    shares = Counter(m for m in matched if m is not None)
    everything = range(len(correct))
    described = [i for i in everything if descriptive[i]]
    p, r, f1 = _prf(everything, correct, matched, shares, n_references)
    pd, rd, f1d = _prf(described, correct, matched, shares, n_references)
    return dict(zip(KEYS, (p, r, f1, pd, rd, f1d), strict=True))


def aggregate_trials(trials: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """Average every number over the trials, and give the image's DCScore (0-100)."""
    averaged = {k: mean([t[k] for t in trials if t[k] is not None]) for k in KEYS}
    f1, f1d = averaged["f1"], averaged["f1_descriptive"]
    averaged["dcscore"] = None if f1 is None else 100 * (f1 + (f1d or 0.0)) / 2
    return averaged


def score_judgments(judgments: FactJudgments) -> dict[str, float | None]:
    """Score one caption from its judgments: every verification sample × every matching sample."""
    facts = judgments.facts or ()
    descriptive = [f.descriptive for f in facts]
    trials = [
        dcscore_trial(v.correct, m, descriptive, len(judgments.references))
        for v in judgments.verdicts
        for m in judgments.matches
    ]
    return aggregate_trials(trials)


def summarize_images(values: Sequence[dict[str, Any]], failed: Sequence[str]) -> dict[str, Any]:
    """Benchmark-level numbers: means over the images that could be scored (×100 for P, R, F1)."""
    out: dict[str, Any] = {"score": mean([v["dcscore"] for v in values])}
    for key in KEYS:
        m = mean([v[key] for v in values if v.get(key) is not None])
        out[key] = None if m is None else 100 * m
    out.update(images=len(values), failed=len(failed), failed_ids=list(failed))
    return out


class DCScore(FactMetric):
    """DCScore over samples with reference facts (or reference captions to decompose)."""

    name = "dcscore"
    keys = (*KEYS, "dcscore")
    headline = "dcscore"
    title = "DCScore"
    description = "precision and recall of the caption's atomic facts against human facts (DeCapBench)"
    columns = (
        ("DCScore", "score"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("F1", "f1"),
        ("F1 descr.", "f1_descriptive"),
        ("unscored", "failed"),
        ("verified by", "verify_mode"),
    )
    rewards = (("dcscore", "dcscore", 100.0),)

    def values(self, judgments: FactJudgments) -> dict[str, float | None]:
        """Return the trial-averaged precision, recall and F1 (all and descriptive) and the image's DCScore."""
        return score_judgments(judgments)

    def summarize(self, scores: Sequence[SampleScore]) -> dict[str, Any]:
        """DCScore and its parts over the scored images; failed images are counted and named."""
        scored = [s for s in scores if s.values.get("dcscore") is not None]
        failed = [s.sample_id for s in scores if s.values.get("dcscore") is None]
        summary = summarize_images([dict(s.values) for s in scored], failed)
        summary["verify_mode"] = sorted({s.details.get("verify_mode", "?") for s in scores})
        return summary


__all__ = ["KEYS", "DCScore", "FactConfig", "score_judgments", "summarize_images"]
