"""The BalCapRL rewards and b-CapScore against hand-computed values."""

from __future__ import annotations

import pytest

from capbench.metrics.balcap import b_capscore, balcap_precision, balcap_recall, linguistic_score, score_judgments
from capbench.metrics.facts import Fact, FactJudgments, Verdicts


def test_precision_needs_correct_and_pointable():
    verdicts = Verdicts(correct=(True, True, False, True), pointable=(True, False, True, True))
    assert balcap_precision(verdicts) == pytest.approx(2 / 4)


def test_recall_counts_each_reference_unit_once_and_only_for_correct_facts():
    # units 0 and 2 are covered (0 twice); unit 1 only by a wrong fact; unit 3 by nothing
    assert balcap_recall([True, True, False, True, True], [0, 0, 1, 2, None], n_references=4) == pytest.approx(2 / 4)


def test_linguistic_scales_1_to_10_onto_0_to_1():
    assert linguistic_score({"clarity": 10, "fluency": 10, "coherence": 10}) == 1.0
    assert linguistic_score({"clarity": 1, "fluency": 1, "coherence": 1}) == 0.0
    assert linguistic_score({"clarity": 7, "fluency": 8, "coherence": 9}) == pytest.approx(7 / 9)


def test_b_capscore_is_the_harmonic_mean():
    assert b_capscore(0.5, 0.5, 0.5) == pytest.approx(50.0)
    assert b_capscore(1.0, 0.5, 0.25) == pytest.approx(100 * 3 / (1 + 2 + 4))
    assert b_capscore(0.9, 0.0, 0.9) == 0.0


def test_score_averages_over_samples_and_trials():
    judgments = FactJudgments(
        facts=(Fact("a"), Fact("b")),
        references=("r0", "r1"),
        verdicts=[Verdicts((True, True), (True, True)), Verdicts((True, False), (True, True))],
        matches=[(0, 1), (0, None)],
        ratings={"clarity": 10, "fluency": 10, "coherence": 10},
    )
    values = score_judgments(judgments)
    assert values["precision"] == pytest.approx((1.0 + 0.5) / 2)
    # trials: (v0,m0) 2/2, (v0,m1) 1/2, (v1,m0) 1/2, (v1,m1) 1/2
    assert values["recall"] == pytest.approx((1 + 0.5 + 0.5 + 0.5) / 4)
    assert values["b_capscore"] == pytest.approx(b_capscore(0.75, 0.625, 1.0))


def test_a_failed_rating_leaves_precision_and_recall():
    judgments = FactJudgments(
        facts=(Fact("a"),), references=("r0",), verdicts=[Verdicts((True,), (True,))], matches=[(0,)], ratings=None
    )
    values = score_judgments(judgments)
    assert values["precision"] == 1.0 and values["recall"] == 1.0
    assert values["linguistic"] is None and values["b_capscore"] is None
