"""DCScore's aggregation: hand-computed cases, and the official implementation's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capbench.metrics.dcscore import aggregate_trials, dcscore_trial, summarize_images

GOLDEN = Path(__file__).parent / "golden" / "dcscore_official_cases.json"


def test_duplicates_share_credit_and_unmatched_facts_grow_the_denominator():
    # f0, f1 both match reference 0 and are correct: half a credit each; f2 is correct and
    # matches nothing: a full credit, and one more unit in the recall denominator; f3 is wrong.
    trial = dcscore_trial([True, True, True, False], [0, 0, None, 1], [True] * 4, n_references=5)
    assert trial["precision"] == pytest.approx(3 / 4)
    assert trial["recall"] == pytest.approx(2 / 6)
    assert trial["f1"] == pytest.approx(2 * 0.75 * (1 / 3) / (0.75 + 1 / 3))
    assert trial["f1_descriptive"] == pytest.approx(trial["f1"])


def test_descriptive_pass_shares_credit_over_all_facts():
    # f1 is not descriptive but still halves f0's credit in the descriptive pass (official code).
    trial = dcscore_trial([True, True, True], [0, 0, None], [True, False, True], n_references=2)
    assert trial["recall"] == pytest.approx(2 / 3) and trial["precision"] == 1
    assert trial["recall_descriptive"] == pytest.approx((0.5 + 1) / 3)
    assert trial["f1_descriptive"] == pytest.approx(2 * 0.5 / 1.5)
    image = aggregate_trials([trial])
    assert image["dcscore"] == pytest.approx(100 * (0.8 + 2 / 3) / 2)


def test_no_descriptive_facts_scores_zero_on_that_half():
    trial = dcscore_trial([True], [0], [False], n_references=1)
    assert trial["f1"] == pytest.approx(1.0)
    assert trial["precision_descriptive"] is None
    assert trial["recall_descriptive"] == 0 and trial["f1_descriptive"] == 0
    assert aggregate_trials([trial])["dcscore"] == pytest.approx(50.0)


def test_trials_average_f1_not_f1_of_averages():
    good = dcscore_trial([True, True], [0, 1], [True, True], n_references=2)
    bad = dcscore_trial([False, False], [0, 1], [True, True], n_references=2)
    image = aggregate_trials([good, bad])
    assert image["f1"] == pytest.approx((1.0 + 0.0) / 2)
    assert image["precision"] == pytest.approx(0.5) and image["recall"] == pytest.approx(0.5)
    assert image["dcscore"] == pytest.approx(50.0)


def test_failed_images_are_left_out_and_named():
    ok = {"dcscore": 60.0, "precision": 0.5, "recall": 0.4, "f1": 0.45, "precision_descriptive": 0.5,
          "recall_descriptive": 0.4, "f1_descriptive": 0.45}  # fmt: skip
    summary = summarize_images([ok, {**ok, "dcscore": 40.0}], failed=["broken"])
    assert summary["score"] == pytest.approx(50.0)
    assert summary["precision"] == pytest.approx(50.0)
    assert (summary["images"], summary["failed"], summary["failed_ids"]) == (2, 1, ["broken"])


def test_matches_the_official_implementation():
    cases = json.loads(GOLDEN.read_text())["cases"]
    assert len(cases) >= 300
    names = {"precision": "precision", "recall": "recall", "f1": "f1_score",
             "precision_descriptive": "precision_relevant", "recall_descriptive": "recall_relevant",
             "f1_descriptive": "f1_score_relevant"}  # fmt: skip
    for case in cases:
        ours = dcscore_trial(case["correct"], case["matched"], case["descriptive"], case["n_references"])
        for key, official in names.items():
            assert ours[key] == pytest.approx(case["official"][official], abs=1e-12), (key, case)
