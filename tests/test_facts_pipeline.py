"""The fact pipeline: tolerant readers of judge replies, batching by stage, and failure records."""

from __future__ import annotations

import json

import pytest
from conftest import ScriptedEngine

from capbench.engines.base import ImagePart, Response
from capbench.metrics.dcscore import dcscore_trial
from capbench.metrics.facts import (
    Fact,
    FactConfig,
    FactPipeline,
    _read_facts,
    _read_matches,
    _read_verdicts,
)
from capbench.metrics.parsing import parse_json
from capbench.records import ImageRef, Sample

FACT_REPLIES = [
    # the schema's shape
    ('{"facts": [{"fact": "A cat.", "object": "cat_0", "descriptive": true}]}', [("A cat.", "cat_0", True)]),
    # a bare list of strings
    ('["A cat.", "The cat is grey."]', [("A cat.", "", True), ("The cat is grey.", "", True)]),
    # DeCapBench's own keys: identifier and relevance 0/1
    ('[{"fact": "It feels calm.", "identifier": "scene_0", "relevance": 0}]', [("It feels calm.", "scene_0", False)]),
    # prose and a code fence around JSON with a trailing comma
    ('Here you go:\n```json\n{"facts": [{"fact": "A dog.", "object": "dog_0", "descriptive": "yes"},]}\n```',
     [("A dog.", "dog_0", True)]),
    # a judge that repeats itself: the repeat is one fact
    ('{"facts": [{"fact": "A cat."}, {"fact": "a cat."}, {"fact": "A mat."}]}',
     [("A cat.", "", True), ("A mat.", "", True)]),
    # items without text are skipped
    ('{"facts": [{"object": "x"}, {"fact": "  "}, {"fact": "Ok."}]}', [("Ok.", "", True)]),
    # not a list of facts
    ('{"answer": 3}', []),
    ("I cannot help with that.", []),
]  # fmt: skip


@pytest.mark.parametrize(("reply", "expected"), FACT_REPLIES)
def test_read_facts(reply, expected):
    assert [(f.text, f.object, f.descriptive) for f in _read_facts(parse_json(reply))[0]] == expected


UNFLAGGED = [
    # every fact flagged, ours or DeCapBench's way (the string "1" is read as true)
    ('[{"fact": "a", "descriptive": false}, {"fact": "b", "relevance": "1"}]', (False, True), 0),
    # a missing relevance key (DeCapBench's code then fails the image): descriptive, and counted
    ('[{"fact": "a", "identifier": "x"}, {"fact": "b", "relevance": 0}]', (True, False), 1),
    # an unreadable flag and a bare string: descriptive, and counted
    ('[{"fact": "a", "descriptive": "maybe"}, "b"]', (True, True), 2),
]


@pytest.mark.parametrize(("reply", "descriptive", "unflagged"), UNFLAGGED)
def test_facts_without_a_readable_flag_are_descriptive_and_counted(reply, descriptive, unflagged):
    facts, count = _read_facts(parse_json(reply))
    assert tuple(f.descriptive for f in facts) == descriptive and count == unflagged


FACTS = ["a", "b"]

# (reply, (correct, pointable) or None if unusable, whether the reading was a guess)
VERDICT_REPLIES = [
    # in order, booleans
    ('{"verdicts": [{"id": 1, "correct": true, "pointable": true}, {"id": 2, "correct": false, "pointable": true}]}',
     ((True, False), (True, True)), False),
    # out of order, words and numbers
    ('{"verdicts": [{"id": 2, "correct": "no", "pointable": 0}, {"id": 1, "correct": "yes", "pointable": 1}]}',
     ((True, False), (True, False)), False),
    # exactly as many entries as facts, but misnumbered: read in order, and that guess is recorded
    ('{"verdicts": [{"id": 7, "correct": true, "pointable": false}, {"id": 9, "correct": true, "pointable": true}]}',
     ((True, True), (False, True)), True),
    # an entry missing: the sample is unusable
    ('{"verdicts": [{"id": 1, "correct": true, "pointable": true}]}', None, False),
    # DeCapBench's own format: facts echoed without numbers, "verification" 1/0
    ('[{"fact": "a", "identifier": "x", "verification": 1}, {"fact": "b", "identifier": "y", "verification": 0}]',
     ((True, False), (True, True)), False),
    # the same in another order than the facts: placed by their text, as DeCapBench's code does
    ('[{"fact": "B", "verification": 0}, {"fact": " a ", "verification": 1}]', ((True, False), (True, True)), False),
    # "1" as a string is true (DeCapBench's code compares with the number 1: false)
    ('[{"fact": "a", "verification": "1"}, {"fact": "b", "verification": "0"}]',
     ((True, False), (True, True)), False),
    # neither ids nor the facts' texts: read in order, and that guess is recorded
    ('[{"fact": "x", "verification": 0}, {"verification": 1}]', ((False, True), (True, True)), True),
    # a verdict that is neither yes nor no
    ('{"verdicts": [{"id": 1, "correct": "maybe", "pointable": true}, {"id": 2, "correct": true}]}', None, False),
]  # fmt: skip


@pytest.mark.parametrize(("reply", "expected", "guessed"), VERDICT_REPLIES)
def test_read_verdicts(reply, expected, guessed):
    verdicts, guesses = _read_verdicts(parse_json(reply), facts=FACTS)
    assert (None if verdicts is None else (verdicts.correct, verdicts.pointable)) == expected
    assert bool(guesses) == guessed


# (reply, reference indices or None if unusable, whether a reading was a guess); 3 reference facts
MATCH_REPLIES = [
    ('{"matches": [{"id": 1, "reference": 2}, {"id": 2, "reference": null}]}', (1, None), False),
    ('[{"id": 1, "reference": "None"}, {"id": 2, "reference": "3"}]', (None, 2), False),
    # a reference that does not exist (DeCapBench's code counts it as matched): unmatched, and recorded
    ('{"matches": [{"id": 1, "reference": 99}, {"id": 2, "reference": 1}]}', (None, 0), True),
    ('{"matches": [{"id": 1, "reference": 0}, {"id": 2, "reference": 1}]}', (None, 0), True),  # ours count from 1
    ('{"matches": [{"id": 1, "reference": "two"}, {"id": 2}]}', (None, None), True),  # unreadable, and none given
    ('{"matches": [{"id": 2, "reference": 1}]}', None, False),
    # DeCapBench's own format: "matched_oracle_id" counts from 0, "None" for no match
    ('[{"fact": "a", "matched_oracle_id": 0}, {"fact": "b", "matched_oracle_id": "None"}]', (0, None), False),
    # 0 and "0" name one reference fact (DeCapBench's code counts them as two)
    ('[{"fact": "a", "matched_oracle_id": 0}, {"fact": "b", "matched_oracle_id": "0"}]', (0, 0), False),
    # by text, in another order
    ('[{"fact": "b", "matched_oracle_id": 2}, {"fact": "a", "matched_oracle_id": "None"}]', (None, 2), False),
    ('[{"fact": "a", "matched_oracle_id": 3}, {"fact": "b", "matched_oracle_id": 2}]', (None, 2), True),  # out of range
]  # fmt: skip


@pytest.mark.parametrize(("reply", "expected", "guessed"), MATCH_REPLIES)
def test_read_matches(reply, expected, guessed):
    matches, guesses = _read_matches(parse_json(reply), facts=FACTS, references=3)
    assert matches == expected and bool(guesses) == guessed


def test_one_reference_id_written_two_ways_shares_its_credit():
    # Two correct facts matched to reference 0, once as 0 and once as "0", and one reference fact:
    # one reference, credit shared, recall 1 (DeCapBench's code: two keys, recall 2).
    reply = '[{"fact": "a", "matched_oracle_id": 0}, {"fact": "b", "matched_oracle_id": "0"}]'
    matches, _ = _read_matches(parse_json(reply), facts=FACTS, references=1)
    assert dcscore_trial([True, True], matches, [True, True], n_references=1)["recall"] == pytest.approx(1.0)


def test_truncated_reply_keeps_complete_elements():
    cut = '{"facts": [{"fact": "a", "object": "x"}, {"fact": "b [1]", "object": "y"}, {"fact": "The c'
    assert parse_json(cut) is None or "facts" not in parse_json(cut)
    assert parse_json(cut, truncated=True) == {
        "facts": [{"fact": "a", "object": "x"}, {"fact": "b [1]", "object": "y"}]
    }


def _stage_reply(request) -> str:
    system = request.messages[0].joined_text()
    if "split image captions" in system:
        return json.dumps({"facts": [{"fact": "A cat.", "object": "cat_0", "descriptive": True},
                                     {"fact": "It is calm.", "object": "scene_0", "descriptive": False}]})  # fmt: skip
    if "check statements" in system:
        return json.dumps({"verdicts": [{"id": 1, "correct": True, "pointable": True},
                                        {"id": 2, "correct": True, "pointable": False}]})  # fmt: skip
    if "align two lists" in system:
        return json.dumps({"matches": [{"id": 1, "reference": 1}, {"id": 2, "reference": None}]})
    return json.dumps({"clarity": 8, "fluency": 9, "coherence": 7})


def test_one_batch_per_stage_and_missing_references_decomposed():
    judge = ScriptedEngine(_stage_reply)
    batches = []
    original = judge.run
    judge.run = lambda requests, on_result=None: batches.append(len(requests)) or original(requests, on_result)
    with_facts = Sample("a", None, "A grey cat.", ("There is a cat.",))
    without = Sample("b", None, "A cat on a mat.")
    out = FactPipeline(FactConfig.preset("greedy")).run(
        [with_facts, without], ["cap a", "cap b"], {"text": judge}, True
    )
    # stage 1: 2 decompositions + 1 reference decomposition + 2 ratings; stage 2: 2 matches + 2 verifications
    assert batches == [5, 4]
    assert out[0].references == ("There is a cat.",)
    assert out[1].references == ("A cat.", "It is calm.")
    assert out[0].ratings == {"clarity": 8, "fluency": 9, "coherence": 7}
    assert out[0].verdicts[0].pointable == (True, False) and out[0].matches == [(0, None)]
    assert out[0].error(need_linguistic=True) is None


def test_vision_judge_sees_the_image_and_the_mode_is_recorded():
    text, vision = ScriptedEngine(_stage_reply), ScriptedEngine(_stage_reply, name="vlm")
    vision.accepts_images = True
    sample = Sample("a", ImageRef("/x/a.png", "f" * 64), "A grey cat.", ("There is a cat.",))
    [judgment] = FactPipeline().run([sample], ["cap"], {"text": text, "vision": vision})
    [verify] = vision.calls
    assert isinstance(verify.messages[-1].parts[0], ImagePart)
    assert verify.sampling.n == 3 and verify.sampling.temperature == 0.3  # DeCapBench's settings
    assert all("check statements" not in r.messages[0].joined_text() for r in text.calls)
    assert judgment.verify_mode == "image" and judgment.log()["verify_mode"] == "image"


def test_failures_are_kept_with_their_raw_reply():
    def reply(request):
        system = request.messages[0].joined_text()
        if "check statements" in system:
            return "I think they are all fine."
        if "align two lists" in system:
            return Response(error="llamacpp: timeout")
        return _stage_reply(request)

    [judgment] = FactPipeline(FactConfig.preset("greedy")).run(
        [Sample("a", None, "ref", ("r",))], ["cap"], {"text": ScriptedEngine(reply)}
    )
    stages = {f["stage"]: f for f in judgment.failures}
    assert stages["verify"]["raw"] == "I think they are all fine."
    assert stages["match"]["error"] == "llamacpp: timeout"
    assert judgment.error() == "every verification failed"


def test_decompose_requests_do_not_depend_on_the_metric():
    pipeline = FactPipeline()
    assert pipeline.decompose_request("A cat.") == FactPipeline().decompose_request("A cat.")
    assert pipeline.match_request([Fact("a")], ["r"]).sampling.n == 3


def test_official_style_templates(tmp_path):
    (tmp_path / "facts.decompose.example_caption.txt").write_text("")
    (tmp_path / "facts.match.user.txt").write_text("Predicted:\n$facts_json\nOracle:\n$reference_facts_json")
    pipeline = FactPipeline(FactConfig(prompt_dir=str(tmp_path)))
    assert len(pipeline.decompose_request("A cat.").messages) == 2  # no worked example
    text = pipeline.match_request([Fact("A cat.", "cat_0")], ["There is a cat."]).messages[-1].joined_text()
    assert '{"fact": "A cat.", "identifier": "cat_0"}' in text
    assert '{"id": 0, "fact": "There is a cat."}' in text


# ---------------------------------------------------------------- a caption's second stage, sent at once


class ThreadedEngine:
    """A served judge: ``concurrent = True``; each request answered on its own thread after its delay.

    ``delay(request)`` gives the seconds; ``events`` records (time, "sent"/"done", stage, caption).
    """

    backend = "threaded"
    accepts_images = True
    supports_loglik = False
    concurrent = True

    def __init__(self, reply, delay=lambda request: 0.0) -> None:
        import threading

        self.reply, self.delay = reply, delay
        self.events: list[tuple[float, str, str, str]] = []
        self.lock = threading.Lock()

    def fingerprint(self) -> dict:
        return {"backend": self.backend, "model": "threaded"}

    def run(self, requests, on_result=None):
        import queue
        import threading
        import time

        done: queue.Queue = queue.Queue()

        def answer(index, request):
            label = (_stage_of(request), request.messages[-1].joined_text())
            with self.lock:
                self.events.append((time.perf_counter(), "sent", *label))
            time.sleep(self.delay(request))
            reply = self.reply(request)
            response = reply if isinstance(reply, Response) else Response(texts=(reply,) * request.sampling.n)
            with self.lock:
                self.events.append((time.perf_counter(), "done", *label))
            done.put((index, response))

        for index, request in enumerate(requests):
            threading.Thread(target=answer, args=(index, request), daemon=True).start()
        out = [None] * len(requests)
        for _ in requests:
            index, response = done.get()
            out[index] = response
            if on_result is not None:
                on_result(index, response)
        return out


def _stage_of(request) -> str:
    system = request.messages[0].joined_text()
    for key, stage in (("split image captions", "decompose"), ("check statements", "verify"),
                       ("align two lists", "match")):  # fmt: skip
        if key in system:
            return stage
    return "linguistic"


def _mixed_reply(request):
    """Good replies, except for caption 'cap c': facts without their flag, and its rating failed."""
    text = request.messages[-1].joined_text()
    if "cap c" in text and _stage_of(request) == "linguistic":
        return Response(error="served: timeout")
    if "cap c" in text and _stage_of(request) == "decompose":
        return json.dumps({"facts": [{"fact": "A cat.", "object": "cat_0"}, {"fact": "It is calm.", "object": "x"}]})
    return _stage_reply(request)


def _samples():
    return [
        Sample("a", ImageRef("/x/a.png", "a" * 64), "A grey cat.", ("There is a cat.",)),
        Sample("b", ImageRef("/x/b.png", "b" * 64), "A cat on a mat."),  # its reference is decomposed
        Sample("c", ImageRef("/x/c.png", "c" * 64), "A cat.", ("A cat.", "A mat.")),
    ]


@pytest.mark.parametrize("with_vision", [False, True])
def test_streamed_second_stage_gives_the_same_judgments_as_stage_by_stage(monkeypatch, with_vision):
    from capbench.metrics import facts

    def judgments(stream):
        monkeypatch.setattr(facts, "STREAM_PER_CAPTION", stream)
        judges = {"text": ThreadedEngine(_mixed_reply, delay=lambda r: 0.001)}
        if with_vision:
            judges["vision"] = ThreadedEngine(_mixed_reply)
        out = FactPipeline(FactConfig.preset("greedy")).run(_samples(), ["cap a", "cap b", "cap c"], judges, True)
        return [(j.log(), j.references, j.error(True)) for j in out]

    streamed, batched = judgments(True), judgments(False)
    assert streamed == batched
    # the records are not trivially equal: caption c has failures, recorded in the same order
    assert [f["stage"] for f in streamed[2][0]["failures"]] == ["decompose", "linguistic"]
    assert streamed[2][2] == "linguistic rating failed" and streamed[1][1] == ("A cat.", "It is calm.")


def test_a_captions_checks_do_not_wait_for_the_slowest_decomposition():
    # caption 0's decomposition takes 0.6 s, every other request 0.01 s
    def delay(request):
        return 0.6 if _stage_of(request) == "decompose" and "cap 0" in request.messages[-1].joined_text() else 0.01

    judge = ThreadedEngine(_stage_reply, delay)
    samples = [Sample(str(i), None, "A grey cat.", ("There is a cat.",)) for i in range(4)]
    out = FactPipeline(FactConfig.preset("greedy")).run(samples, [f"cap {i}" for i in range(4)], {"text": judge})
    assert all(j.error() is None for j in out)
    slow_done = next(t for t, kind, stage, text in judge.events if kind == "done" and "cap 0" in text)
    checks_sent = [t for t, kind, stage, _ in judge.events if kind == "sent" and stage in ("match", "verify")]
    assert len(checks_sent) == 8  # a match and a verification per caption
    # captions 1-3 were matched and verified while caption 0 was still being decomposed
    assert sum(t < slow_done for t in checks_sent) == 6


def test_stage_by_stage_for_judges_that_cannot_share_threads():
    # ScriptedEngine has no `concurrent`: the second stage is one batch, as an in-process model prefers
    judge = ScriptedEngine(_stage_reply)
    batches = []
    original = judge.run
    judge.run = lambda requests, on_result=None: batches.append(len(requests)) or original(requests, on_result)
    samples = [Sample(str(i), None, "A grey cat.", ("There is a cat.",)) for i in range(3)]
    FactPipeline(FactConfig.preset("greedy")).run(samples, ["a", "b", "c"], {"text": judge})
    assert batches == [3, 6]


def test_a_judge_error_in_a_captions_checks_is_raised_and_no_worker_is_left(monkeypatch):
    import threading

    from capbench.errors import EngineError

    class Down(ThreadedEngine):
        def run(self, requests, on_result=None):
            if any(_stage_of(r) == "verify" for r in requests):
                raise EngineError("served: the judge server went away")
            return super().run(requests, on_result)

    before = {t.name for t in threading.enumerate()}
    samples = [Sample(str(i), None, "A grey cat.", ("There is a cat.",)) for i in range(3)]
    with pytest.raises(EngineError, match="went away"):
        FactPipeline(FactConfig.preset("greedy")).run(samples, ["a", "b", "c"], {"text": Down(_stage_reply)})
    left = {t.name for t in threading.enumerate()} - before
    assert not any(name.startswith("capbench-facts") for name in left)


def test_wrapped_engines_are_seen_through():
    from capbench.engines.base import EngineWrapper
    from capbench.engines.cache import CachedEngine
    from capbench.metrics.facts import concurrent

    served = ThreadedEngine(_stage_reply)
    assert concurrent(CachedEngine(EngineWrapper(served), None))
    assert not concurrent(CachedEngine(ScriptedEngine(), None))


def test_facts_decomposed_from_the_reference_caption_are_recorded_and_shown():
    from capbench.inspector_page import _facts
    from capbench.metrics.dcscore import DCScore
    from capbench.records import Caption

    samples = _samples()[:2]  # "a" has reference facts, "b" only a reference caption
    judge = ThreadedEngine(_mixed_reply)
    scores = DCScore(FactConfig.preset("greedy")).score(
        samples, [Caption("a", "cap a"), Caption("b", "cap b")], {"text": judge}
    )
    by_id = {s.sample_id: s.details for s in scores}
    assert "reference_facts" not in by_id["a"]  # the benchmark's own: not copied into every record
    derived = by_id["b"]["reference_facts"]
    assert derived and by_id["b"]["references"] == len(derived)
    html, _ = _facts(dict(by_id["b"]), samples[1])
    assert "decomposed from the reference caption by the judge)" in html and "not recorded" not in html
    before = {k: v for k, v in by_id["b"].items() if k != "reference_facts"}  # a record written before they were kept
    assert "their text is not recorded" in _facts(before, samples[1])[0]
