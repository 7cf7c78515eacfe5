"""CaptionQA's protocol pieces against hand-computed values, and the metric on a scripted judge."""

from __future__ import annotations

import pytest
from conftest import ScriptedEngine

from capbench.engines.base import Response
from capbench.errors import ConfigError
from capbench.metrics.captionqa import (
    CANNOT_ANSWER,
    CaptionQA,
    CaptionQAConfig,
    aggregate,
    answer_status,
    is_yes_no,
    presented_options,
    question_score,
)
from capbench.metrics.parsing import LETTERS
from capbench.records import Caption, Question, Sample


@pytest.mark.parametrize(
    ("question", "choices", "expected"),
    [
        ("What colour is the cup?", ["red", "blue", "green"], False),
        ("Is the cup red?", ["Yes", "No"], True),
        ("Does the cat sleep?", ["It sleeps", "It eats", "It runs"], True),  # auxiliary-verb start
        ("Which statement fits?", ["Yes, it does", "No, it does not"], True),
        ("What is on its face?", ["eyes", "nose", "ears"], True),  # the official substring rule: eyes/nose
        ("Where is it?", ["In the snow", "On a road"], False),  # "no" but no "yes"
        ("  IS it lit?", ["bright", "dim"], True),
        ("Island or coast?", ["island", "coast"], False),  # "is" must be a word followed by a space
    ],
)
def test_yes_no_rule(question, choices, expected):
    assert is_yes_no(question, choices) is expected


def test_cannot_answer_only_for_non_yes_no():
    wh = Question("q1", "What colour is the cup?", ("red", "blue", "green"), "blue")
    yn = Question("q2", "Is the cup red?", ("Yes", "No"), "No")
    options, order = presented_options(wh, seed=0, sample_id="s")
    assert sorted(options) == sorted([*wh.choices, CANNOT_ANSWER])
    assert [([*wh.choices, CANNOT_ANSWER])[i] for i in order] == options
    options, _ = presented_options(yn, seed=0, sample_id="s")
    assert sorted(options) == ["No", "Yes"]


def test_shuffle_is_reproducible_and_seeded():
    q = Question("q1", "What colour?", ("a", "b", "c", "d"), "a")
    first = presented_options(q, 0, "s1")
    assert presented_options(q, 0, "s1") == first
    orders = {tuple(presented_options(q, seed, "s1")[1]) for seed in range(30)}
    assert len(orders) > 10  # 5! = 120 orders; 30 seeds give many distinct ones
    # different questions or samples get their own streams
    assert len({tuple(presented_options(q, 0, f"s{i}")[1]) for i in range(30)}) > 10


def test_answer_position_is_spread():
    positions = [
        presented_options(Question(f"q{i}", "What?", ("right", "w1", "w2", "w3"), "right"), 0, "s")[0].index("right")
        for i in range(500)
    ]
    counts = [positions.count(k) for k in range(5)]
    assert all(60 <= c <= 140 for c in counts), counts  # about 100 each


@pytest.mark.parametrize(
    ("status", "k", "expected"),
    [("correct", 4, 1.0), ("wrong", 4, 0.0), ("cannot_answer", 4, 0.30), ("cannot_answer", 3, 1 / 3 + 0.05),
     ("unparsed", 4, None), ("failed", 4, None)],
)  # fmt: skip
def test_question_score(status, k, expected):
    if expected is None:
        assert question_score(status, k) is None
    else:
        assert question_score(status, k) == pytest.approx(expected)


def test_answer_status():
    q = Question("q", "What?", ("a", "b", "c"), "b")
    assert answer_status(1, q) == "correct"
    assert answer_status(0, q) == "wrong"
    assert answer_status(3, q) == "cannot_answer"
    assert answer_status(None, q) == "unparsed"


def test_aggregate_hand_computed():
    records = [
        # domain x: scores 1, 0, 0.3 -> 43.33; accuracy 1/3; cannot 1/3; one unparsed reply left out
        {"domain": "x", "status": "correct", "score": 1.0},
        {"domain": "x", "status": "wrong", "score": 0.0},
        {"domain": "x", "status": "cannot_answer", "score": 0.3},
        {"domain": "x", "status": "unparsed", "score": None},
        # domain y: 1, 1 -> 100; one failed judge call left out everywhere
        {"domain": "y", "status": "correct", "score": 1.0},
        {"domain": "y", "status": "correct", "score": 1.0},
        {"domain": "y", "status": "failed", "score": None},
    ]
    summary = aggregate(records)
    assert summary["domains"]["x"]["score"] == pytest.approx(130 / 3)
    assert summary["domains"]["x"]["accuracy"] == pytest.approx(100 / 3)
    assert summary["domains"]["x"]["score_unparsed_as_wrong"] == pytest.approx(32.5)
    assert summary["domains"]["y"]["score"] == pytest.approx(100)
    assert summary["score"] == pytest.approx((130 / 3 + 100) / 2)  # unweighted mean of domains
    assert summary["accuracy"] == pytest.approx((100 / 3 + 100) / 2)
    assert (summary["questions"], summary["scored"], summary["unparsed"], summary["failed"]) == (7, 5, 1, 1)


def _sample() -> Sample:
    questions = (
        Question("s-q1", "What colour is the cup?", ("red", "blue", "green"), "blue", "attribute"),
        Question("s-q2", "Is there a saucer?", ("Yes", "No"), "Yes", "object"),
        Question("s-q3", "How many spoons?", ("one", "two", "three", "four"), "two", "count"),
    )
    return Sample("s", None, "ref", (), questions, domain="natural")


def _options_of(request) -> list[str]:
    text = request.messages[-1].joined_text()
    return [line[3:] for line in text.splitlines() if len(line) > 2 and line[1:3] == ". " and line[0] in LETTERS]


def test_metric_scores_a_scripted_judge():
    answers = {"What colour is the cup?": "blue", "Is there a saucer?": "Yes", "How many spoons?": CANNOT_ANSWER}

    def reply(request):
        text = request.messages[-1].joined_text()
        question = next(q for q in answers if q in text)
        return LETTERS[_options_of(request).index(answers[question])]

    judge = ScriptedEngine(reply)
    metric = CaptionQA(CaptionQAConfig(seed=3))
    [score] = metric.score([_sample()], [Caption("s", "A blue cup on a saucer.")], {"text": judge})
    assert [r["status"] for r in score.details["questions"]] == ["correct", "correct", "cannot_answer"]
    assert score.values["score"] == pytest.approx(100 * (1 + 1 + 0.3) / 3)
    assert score.values["accuracy"] == pytest.approx(200 / 3)
    assert score.unscored == 0
    # the caption is fenced as data and comes before the question (shared prefix first)
    user = judge.calls[0].messages[-1].joined_text()
    assert user.index("A blue cup on a saucer.") < user.index("What colour is the cup?")
    assert "<description>" in user
    assert judge.calls[0].sampling.max_tokens == 4 and judge.calls[0].sampling.temperature == 0.0


def test_unparseable_and_failed_replies_are_unscored_not_wrong():
    replies = iter(["I am not sure", Response(error="llamacpp: boom"), "B"])
    judge = ScriptedEngine(lambda request: next(replies))
    [score] = CaptionQA().score([_sample()], [Caption("s", "cap")], {"text": judge})
    statuses = [r["status"] for r in score.details["questions"]]
    assert statuses[:2] == ["unparsed", "failed"]
    assert score.unscored == 2
    assert score.details["questions"][0]["reply"] == "I am not sure"
    assert score.details["questions"][1]["error"] == "llamacpp: boom"
    summary = CaptionQA().summarize([score])
    assert summary["scored"] == 1 and summary["unparsed"] == 1 and summary["failed"] == 1


def test_loglik_mode_picks_the_option_the_caption_raises_most():
    def reply(request):
        options = request.constraint.options
        blank = "<description>\n\n</description>" in request.messages[-1].joined_text()
        # Without the caption the judge prefers "cannot answer" and short answers; the caption
        # raises the right answers by 3 nats. Raw likelihood would pick "cannot answer"; PMI must not.
        prior = tuple(-2.0 if o == CANNOT_ANSWER else -6.0 for o in options)
        lift = tuple(0.0 if blank or not any(w in o for w in ("two", "blue", "Yes")) else 3.0 for o in options)
        logprobs = tuple(p + d for p, d in zip(prior, lift, strict=True))
        return Response(texts=("",), option_logprobs=logprobs, option_tokens=tuple(1 for _ in options))

    judge = ScriptedEngine(reply)
    [score] = CaptionQA(CaptionQAConfig(answer_mode="loglik")).score(
        [_sample()], [Caption("s", "cap")], {"text": judge}
    )
    assert [r["status"] for r in score.details["questions"]] == ["correct", "correct", "correct"]
    assert len(judge.calls) == 6  # each question with and without the caption
    assert all(r.constraint.loglik and "Options" not in r.messages[-1].joined_text() for r in judge.calls)
    pmi = score.details["questions"][0]["option_scores"]
    assert sorted(pmi) == [0.0, 0.0, 0.0, 3.0]


def test_loglik_without_option_scores_is_a_failure():
    judge = ScriptedEngine(lambda request: "A")  # a text reply where scores were asked for
    [score] = CaptionQA(CaptionQAConfig(answer_mode="loglik")).score([_sample()], [Caption("s", "c")], {"text": judge})
    assert {r["status"] for r in score.details["questions"]} == {"failed"}
    assert score.details["questions"][0]["error"] == "the judge returned no option scores"


def test_loglik_needs_an_engine_that_scores():
    judge = ScriptedEngine()
    judge.supports_loglik = False
    with pytest.raises(ConfigError, match="--answer-mode letter"):
        CaptionQA(CaptionQAConfig(answer_mode="loglik")).score([_sample()], [Caption("s", "c")], {"text": judge})


def test_config_is_checked():
    with pytest.raises(ConfigError, match="answer_mode"):
        CaptionQAConfig(answer_mode="guess")  # type: ignore[arg-type]
