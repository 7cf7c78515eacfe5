"""Where DeCapBench's code and capbench read the same judge replies differently (docs/metrics/dcscore.md).

Each case is a judge reply the official code scores one way and capbench another; the
deviations table of the metric card names each one.
"""

from __future__ import annotations

import json

from conftest import ScriptedEngine

from capbench.metrics.dcscore import DCScore
from capbench.metrics.facts import FactConfig
from capbench.records import Caption, Sample

THREE_FACTS = [
    {"fact": "A cat.", "object": "cat_0", "descriptive": True},
    {"fact": "The cat is grey.", "object": "cat_0", "descriptive": True},
    {"fact": "It sits on a mat.", "object": "mat_0", "descriptive": True},
]


def _judge(verdicts: list, matches: list, facts: list = THREE_FACTS) -> ScriptedEngine:
    def reply(request) -> str:
        system = request.messages[0].joined_text()
        if "split image captions" in system:
            return json.dumps({"facts": facts})
        if "check statements" in system:
            return json.dumps(verdicts)
        return json.dumps(matches)

    return ScriptedEngine(reply)


def _score(judge: ScriptedEngine, sample: Sample | None = None):
    sample = sample or Sample("a", None, "A grey cat on a mat.", ("There is a cat.", "The cat is grey."))
    [score] = DCScore(FactConfig.preset("greedy")).score([sample], [Caption("a", "cap")], {"text": judge})
    return score


def test_guessed_readings_are_used_and_counted_as_failures():
    # Verdicts without ids or the facts' texts (read in order), a match naming reference 7 of 2
    # (read as unmatched), and a fact without a descriptive flag (read as descriptive).
    facts = [*THREE_FACTS[:2], {"fact": "It sits on a mat.", "object": "mat_0"}]
    verdicts = [{"correct": True}, {"correct": True}, {"correct": False}]
    matches = {"matches": [{"id": 1, "reference": 1}, {"id": 2, "reference": 7}, {"id": 3, "reference": None}]}
    score = _score(_judge(verdicts, matches, facts))
    guesses = {f["stage"]: f["error"] for f in score.details["failures"]}
    assert set(guesses) == {"decompose", "verify", "match"}
    assert "read as descriptive" in guesses["decompose"] and "read in order" in guesses["verify"]
    assert "read as unmatched" in guesses["match"] and "fact 2: 7" in guesses["match"]
    assert all(f["raw"] is not None for f in score.details["failures"])
    assert score.unscored == 3 and score.failed == 0
    # the readings were used: 2 of 3 correct; fact 1 matches reference 1, fact 2 counts as new
    assert score.values["precision"] == 2 / 3
    assert score.values["recall"] == (1 + 1) / (2 + 1)


def test_verdicts_named_by_text_in_another_order_are_placed_by_their_text():
    verdicts = [{"fact": "It sits on a mat.", "verification": 0}, {"fact": "A cat.", "verification": 1},
                {"fact": "The cat is grey.", "verification": 1}]  # fmt: skip
    matches = [{"fact": f["fact"], "matched_oracle_id": i if i < 2 else "None"} for i, f in enumerate(THREE_FACTS)]
    score = _score(_judge(verdicts, matches))
    assert score.details["verdicts"] == [{"correct": [True, True, False], "pointable": [True, True, True]}]
    assert score.details["failures"] == [] and score.unscored == 0
    assert score.values["precision"] == 2 / 3 and score.values["recall"] == 1.0


def test_every_reply_omitting_the_same_fact_fails_the_image():
    # DeCapBench's code checks the replies against each other only, so it scores this image over
    # the two facts the replies name; capbench leaves out each reply that skips a fact.
    verdicts = {"verdicts": [{"id": 1, "correct": True, "pointable": True}, {"id": 2, "correct": True,
                                                                                "pointable": True}]}  # fmt: skip
    matches = {"matches": [{"id": 1, "reference": 1}, {"id": 2, "reference": 2}]}
    score = _score(_judge(verdicts, matches))
    assert score.values["dcscore"] is None
    assert score.details["error"] == "every verification failed"
    assert [f["stage"] for f in score.details["failures"]] == ["match", "verify"]
    assert all(f["error"] == "reply does not cover every fact" for f in score.details["failures"])
    assert DCScore().summarize([score])["failed_ids"] == ["a"]


def test_an_image_without_reference_facts_is_not_scored():
    # No reference facts and no reference caption to decompose: recall has nothing to count
    # against (DeCapBench's code would score every verified fact as new, recall 1).
    verdicts = {"verdicts": [{"id": i, "correct": True, "pointable": True} for i in (1, 2, 3)]}
    judge = _judge(verdicts, {"matches": [{"id": i, "reference": None} for i in (1, 2, 3)]})
    score = _score(judge, Sample("a", None, "", ()))
    assert score.values["dcscore"] is None and score.details["error"] == "no reference facts"
    assert score.unscored == 1
    assert DCScore().summarize([score])["failed"] == 1
