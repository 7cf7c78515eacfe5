"""CapRL QA utility: draws, the option layout, scoring and what stays unscored."""

from __future__ import annotations

import pytest
from conftest import ScriptedEngine

from capbench.engines.base import Response
from capbench.errors import ConfigError
from capbench.metrics import build_metric
from capbench.metrics.caprl import CapRL, CapRLConfig, caprl_letter
from capbench.metrics.captionqa import CANNOT_ANSWER
from capbench.metrics.parsing import LETTERS
from capbench.records import Caption, Question, Sample

QUESTIONS = (
    Question("q1", "What colour is the cup?", ("red", "blue", "green"), "blue"),
    Question("q2", "Is there a saucer?", ("Yes", "No"), "Yes"),
    Question("q3", "How many spoons?", ("one", "two", "three", "four"), "two"),
)
SAMPLE = Sample("s", None, "ref", (), QUESTIONS)
RIGHT = {q.question: q.answer for q in QUESTIONS}


def _options_of(request) -> list[str]:
    text = request.messages[-1].joined_text()
    return [line[3:] for line in text.splitlines() if len(line) > 2 and line[1:3] == ". " and line[0] in LETTERS]


def _question_of(request) -> str:
    return next(q for q in RIGHT if q in request.messages[-1].joined_text())


def test_draws_are_reproducible_per_caption_and_cover_the_questions():
    metric = CapRL(CapRLConfig(samples=64, seed=1))
    plan = metric.plan(SAMPLE, Caption("s", "A blue cup."))
    again = metric.plan(SAMPLE, Caption("s", "A blue cup."))
    other = metric.plan(SAMPLE, Caption("s", "Two spoons."))
    assert [(d["question"].id, d["options"]) for d in plan] == [(d["question"].id, d["options"]) for d in again]
    assert [(d["question"].id, d["options"]) for d in plan] != [(d["question"].id, d["options"]) for d in other]
    assert {d["question"].id for d in plan} == {"q1", "q2", "q3"}  # drawn with replacement from all
    for d in plan:
        real = list(d["question"].choices)
        # "cannot answer" is always there and always last, yes/no questions included (CapRL's layout)
        assert d["options"][-1] == CANNOT_ANSWER
        assert sorted(d["options"][:-1]) == sorted(real)
        assert [([*real, CANNOT_ANSWER])[i] for i in d["order"]] == d["options"]
    # the real options are reshuffled between draws of the same question
    layouts = {tuple(d["options"]) for d in plan if d["question"].id == "q3"}
    assert len(layouts) > 1


def test_a_judge_that_always_knows_scores_100_and_one_that_cannot_answer_scores_0():
    knows = ScriptedEngine(lambda r: LETTERS[_options_of(r).index(RIGHT[_question_of(r)])])
    metric = CapRL(CapRLConfig(samples=6))
    [score] = metric.score([SAMPLE], [Caption("s", "A blue cup on a saucer with two spoons.")], {"text": knows})
    assert score.values == {"utility": 100.0, "cannot_answer_rate": 0.0}
    assert len(knows.calls) == 6
    # each draw samples with its own seed, at CapRL's temperature and token limit
    assert sorted(c.sampling.seed for c in knows.calls) == list(range(6))
    assert {(c.sampling.temperature, c.sampling.max_tokens) for c in knows.calls} == {(0.6, 10)}

    shrugs = ScriptedEngine(lambda r: LETTERS[_options_of(r).index(CANNOT_ANSWER)])
    [score] = metric.score([SAMPLE], [Caption("s", "A table.")], {"text": shrugs})
    assert score.values == {"utility": 0.0, "cannot_answer_rate": 100.0}  # no partial credit, unlike CaptionQA


def test_utility_is_the_share_of_draws_answered_right():
    # Right on the cup question only: the utility is the share of draws that drew it.
    def reply(request):
        question, options = _question_of(request), _options_of(request)
        if question == "What colour is the cup?":
            return LETTERS[options.index(RIGHT[question])]
        return LETTERS[next(i for i, o in enumerate(options) if o not in (RIGHT[question], CANNOT_ANSWER))]

    metric = CapRL(CapRLConfig(samples=10, seed=4))
    caption = Caption("s", "A blue cup.")
    plan = metric.plan(SAMPLE, caption)
    cup_draws = sum(d["question"].id == "q1" for d in plan)
    [score] = metric.score([SAMPLE], [caption], {"text": ScriptedEngine(reply)})
    assert 0 < cup_draws < 10
    assert score.values["utility"] == pytest.approx(100 * cup_draws / 10)
    assert [r["correct"] for r in score.details["draws"]] == [d["question"].id == "q1" for d in plan]


def test_unparsed_and_failed_draws_are_unscored_and_a_caption_without_any_has_no_utility():
    replies = iter(["no idea", Response(error="server: boom"), "A", "B"])
    [score] = CapRL(CapRLConfig(samples=4)).score(
        [SAMPLE], [Caption("s", "cap")], {"text": ScriptedEngine(lambda r: next(replies))}
    )
    assert [r["status"] for r in score.details["draws"]][:2] == ["unparsed", "failed"]
    assert score.unscored == 2
    assert score.details["draws"][1]["error"] == "server: boom"
    scored = [r for r in score.details["draws"] if r["correct"] is not None]
    assert score.values["utility"] == pytest.approx(100 * sum(r["correct"] for r in scored) / 2)

    [none] = CapRL(CapRLConfig(samples=2)).score(
        [SAMPLE], [Caption("s", "cap")], {"text": ScriptedEngine(lambda r: "hmm")}
    )
    assert none.values["utility"] is None
    summary = CapRL().summarize([score, none])
    assert summary["no_utility"] == 1 and summary["unscored_draws"] == 4 and summary["images"] == 1


def test_loglik_mode_asks_each_draw_with_and_without_the_caption():
    def reply(request):
        blank = "<description>\n\n</description>" in request.messages[-1].joined_text()
        right = RIGHT[_question_of(request)]
        scores = tuple(-5.0 + (0.0 if blank or o != right else 4.0) for o in request.constraint.options)
        return Response(texts=("",), option_logprobs=scores, option_tokens=tuple(1 for _ in scores))

    judge = ScriptedEngine(reply)
    [score] = CapRL(CapRLConfig(samples=3, answer_mode="loglik")).score([SAMPLE], [Caption("s", "c")], {"text": judge})
    assert score.values["utility"] == 100.0
    assert len(judge.calls) == 6 and all(c.constraint.loglik for c in judge.calls)


def test_registered_and_checked():
    assert isinstance(build_metric("caprl", samples=3), CapRL)
    with pytest.raises(ConfigError, match="samples"):
        CapRLConfig(samples=0)
    assert (
        CapRL().planned_requests([SAMPLE, Sample("t", None)], [Caption("x", "a"), Caption("t", "b")]) == 8
    )  # no questions, no draws


# One draw shown as A. red, B. blue (right), C. green, D. cannot answer.
DRAW = {"draw": 0, "question": QUESTIONS[0], "options": ["red", "blue", "green", CANNOT_ANSWER], "order": [0, 1, 2, 3]}

# (reply, CapRL's first-capital letter, (status, correct) under parse="capbench", under parse="caprl")
PARSE_RULES = [
    # a stated answer: capbench reads B; CapRL reads the A of "Answer", a wrong option
    ("Answer: (B)", "A", ("answered", True), ("answered", False)),
    # prose: capbench reads nothing (unscored); CapRL reads the I of "I think", no option: 0
    ("I think it is B", "I", ("unparsed", None), ("unparsed", False)),
    # a lower-case letter: capbench reads B; CapRL sees no capital: 0
    ("b", None, ("answered", True), ("unparsed", False)),
    # an empty reply: unscored, or 0
    ("", None, ("unparsed", None), ("unparsed", False)),
    # the format CapRL asks for: T and h are not A-I, so both read B
    ("The answer is B.", "B", ("answered", True), ("answered", True)),
    # CapRL's own "cannot answer" letter F names no option in capbench's layout
    ("F", "F", ("unparsed", None), ("unparsed", False)),
    # "cannot answer" in capbench's layout: 0 under both rules
    ("D", "D", ("cannot_answer", False), ("cannot_answer", False)),
]


@pytest.mark.parametrize(("reply", "letter", "capbench", "caprl"), PARSE_RULES)
def test_hand_written_replies_under_both_parse_rules(reply, letter, capbench, caprl):
    assert caprl_letter(reply) == letter
    for parse, expected in (("capbench", capbench), ("caprl", caprl)):
        record = CapRL(CapRLConfig(parse=parse))._judgment(DRAW, Response(texts=(reply,)), None)
        assert (record["status"], record["correct"]) == expected, parse


def test_caprl_parse_scores_unread_replies_0_and_counts_them():
    replies = iter(["hmm", "b", "Answer: (B)", Response(error="server: boom")])
    metric = CapRL(CapRLConfig(samples=4, parse="caprl"))
    [score] = metric.score([SAMPLE], [Caption("s", "cap")], {"text": ScriptedEngine(lambda r: next(replies))})
    statuses = [r["status"] for r in score.details["draws"]]
    assert statuses[:2] == ["unparsed", "unparsed"] and statuses[3] == "failed"
    # three replies scored (two of them 0 for naming nothing), the failed call left out as before
    assert score.unscored == 1 and score.failed == 1
    scored = [r["correct"] for r in score.details["draws"] if r["correct"] is not None]
    assert len(scored) == 3 and score.values["utility"] == pytest.approx(100 * sum(scored) / 3)
    assert metric.summarize([score])["unparsed_scored_0"] == 2

    # a caption whose every reply is unreadable has utility 0 under CapRL's rule, None under capbench's
    for parse, utility in (("caprl", 0.0), ("capbench", None)):
        [shrug] = CapRL(CapRLConfig(samples=3, parse=parse)).score(
            [SAMPLE], [Caption("s", "cap")], {"text": ScriptedEngine(lambda r: "no idea")}
        )
        assert shrug.values["utility"] == utility, parse
    assert "unparsed_scored_0" not in CapRL().summarize([shrug])


def test_parse_setting_is_checked_and_enters_config_only_when_set():
    from capbench.build import build_metrics
    from capbench.config import EvalConfig

    assert "parse" not in CapRL().config()  # existing config hashes are unchanged
    assert CapRL(CapRLConfig(parse="caprl")).config()["parse"] == "caprl"
    with pytest.raises(ConfigError, match="letter"):
        CapRLConfig(parse="caprl", answer_mode="loglik")
    with pytest.raises(ConfigError, match="parse"):
        CapRLConfig(parse="official")  # type: ignore[arg-type]
    [metric], _ = build_metrics(EvalConfig(metrics={"caprl": {"parse": "caprl"}}, answer_mode="letter"))
    assert isinstance(metric, CapRL) and metric.cfg.parse == "caprl"
    with pytest.raises(ConfigError, match="parse"):
        build_metrics(EvalConfig(metrics={"caprl": {"parse": "first-capital"}}, answer_mode="letter"))
