"""The reward service judges several batches at once (``--max-batches``): overlap, exact usage, the bound, the stop.

Judges are test doubles that may be called from several threads (``concurrent = True``, as a served
model behind the ``openai`` engine), registered by name: one that holds the batches whose captions
say SLOW until the test opens a gate, and the oracle of capbench-mini counting every request it is sent.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import httpx
import pytest
from click.testing import CliRunner
from conftest import ScriptedEngine
from oracle_engine import OracleEngine

import capbench
from capbench import ConfigError, engines
from capbench.engines.base import Message, Request, Sampling
from capbench.engines.cache import CachedEngine, ResponseCache, Tally
from capbench.records import read_caption_file
from capbench.serve import Running, ServeConfig, config_from_options, prepare

MINI = capbench.load_benchmark("mini")
CAPTIONS = {name: read_caption_file(path).captions for name, path in MINI.example_captions.items()}
QUESTION = {"question": "What is on the mat?", "choices": ["a cat", "a dog", "a bird"], "answer": "a cat"}
QA = ["caprl_qa_utility"]


class HeldJudge(ScriptedEngine):
    """``held:any``: answers a letter at once, but holds a run holding a caption that says SLOW until the gate opens."""

    concurrent = True
    supports_loglik = False
    gate: ClassVar[threading.Event] = threading.Event()
    held: ClassVar[threading.Event] = threading.Event()
    running: ClassVar[list[int]] = [0, 0]  # runs now, most runs at once

    def __init__(self, model: str = "any") -> None:
        super().__init__(lambda request: "ABC"[len(_text(request)) % 3], name=model)
        self.lock = threading.Lock()

    def run(self, requests, on_result=None):
        with self.lock:
            HeldJudge.running[0] += 1
            HeldJudge.running[1] = max(HeldJudge.running)
        try:
            if any("SLOW" in _text(r) for r in requests):
                HeldJudge.held.set()
                assert HeldJudge.gate.wait(60), "the test never opened the gate"
            return super().run(requests, on_result)
        finally:
            with self.lock:
                HeldJudge.running[0] -= 1


class SerialHeldJudge(HeldJudge):
    """``serial-held:any``: the held judge, as an in-process model: not to be called from two threads at once."""

    concurrent = False


class CountingOracle(OracleEngine):
    """``counting-oracle:truth``: the oracle, callable from several threads, counting each request it is sent."""

    concurrent = True
    received: ClassVar[Counter[str]] = Counter()
    running: ClassVar[list[int]] = [0, 0]  # runs now, most runs at once
    lock = threading.Lock()

    def run(self, requests, on_result=None):
        return _counted(requests, lambda: super(CountingOracle, self).run(requests, on_result))


class CountingParity(ScriptedEngine):
    """``counting-parity:any``: a letter by the caption's length, callable from threads, counting each request."""

    concurrent = True
    supports_loglik = False

    def __init__(self, model: str = "any") -> None:
        super().__init__(lambda request: "ABC"[len(_text(request)) % 3], name=model)

    def run(self, requests, on_result=None):
        return _counted(requests, lambda: super(CountingParity, self).run(requests, on_result))


def _counted(requests, run):
    """Count the requests and the runs at once, taking long enough for concurrent callers' batches to overlap."""
    with CountingOracle.lock:
        CountingOracle.received.update(_key(r) for r in requests)
        CountingOracle.running[0] += 1
        CountingOracle.running[1] = max(CountingOracle.running)
    try:
        time.sleep(0.02)
        return run()
    finally:
        with CountingOracle.lock:
            CountingOracle.running[0] -= 1


def _text(request) -> str:
    return request.messages[-1].joined_text()


def _key(request) -> str:
    return hashlib.sha256(json.dumps(request.canonical(), sort_keys=True).encode()).hexdigest()


@pytest.fixture(autouse=True)
def registered_judges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(engines.ENGINES, "held", ("test_serve_batches", "HeldJudge", "test engine"))
    monkeypatch.setitem(engines.ENGINES, "serial-held", ("test_serve_batches", "SerialHeldJudge", "test engine"))
    monkeypatch.setitem(engines.ENGINES, "counting-oracle", ("test_serve_batches", "CountingOracle", "test engine"))
    monkeypatch.setitem(engines.ENGINES, "counting-parity", ("test_serve_batches", "CountingParity", "test engine"))
    monkeypatch.setattr(HeldJudge, "gate", threading.Event())
    monkeypatch.setattr(HeldJudge, "held", threading.Event())
    monkeypatch.setattr(HeldJudge, "running", [0, 0])
    monkeypatch.setattr(CountingOracle, "received", Counter())
    monkeypatch.setattr(CountingOracle, "running", [0, 0])


@contextmanager
def serving(log: list[str] | None = None, **settings: Any) -> Iterator[Running]:
    with Running(ServeConfig(port=0, **settings), log=(log if log is not None else []).append) as running:
        yield running


def _qa_item(caption: str) -> dict[str, Any]:
    return {"caption": caption, "reference_caption": "A cat sits on a red mat.", "questions": [QUESTION]}


def _post(url: str, body: Any) -> httpx.Response:
    return httpx.post(url + "/v1/score", json=body, timeout=60)


def _metrics(url: str) -> dict[str, float]:
    lines = httpx.get(url + "/metrics").text.splitlines()
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in lines if not line.startswith("#"))}


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _in_thread(answers: dict[str, httpx.Response], name: str, url: str, body: Any) -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.update({name: _post(url, body)}))
    thread.start()
    return thread


# --- batches overlap ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_batches", [2, 1])
def test_a_second_batch_is_answered_while_the_first_is_still_being_judged(max_batches: int):
    answers: dict[str, httpx.Response] = {}
    with serving(judge="held:any", caprl_samples=2, batch_window_ms=0, max_batches=max_batches) as running:
        slow = _in_thread(answers, "slow", running.url, {"rewards": QA, "items": [_qa_item("A SLOW cat.")]})
        assert HeldJudge.held.wait(30)  # the first batch is with the judge, held
        fast = _in_thread(answers, "fast", running.url, {"rewards": QA, "items": [_qa_item("A quick cat.")]})
        if max_batches > 1:
            fast.join(10)
        else:
            _wait_for(lambda: _metrics(running.url)["capbench_serve_queue_depth"] == 1)  # behind the held batch
        overlapped = "fast" in answers and "slow" not in answers
        metrics = _metrics(running.url)
        HeldJudge.gate.set()
        slow.join(30)
        fast.join(30)
    assert answers["slow"].status_code == answers["fast"].status_code == 200
    assert all(a.json()["results"][0]["rewards"]["caprl_qa_utility"] is not None for a in answers.values())
    if max_batches > 1:
        assert overlapped  # the second batch did not wait for the first one's slowest item
        assert HeldJudge.running[1] == 2
    else:
        assert not overlapped and HeldJudge.running[1] == 1  # one batch at a time: the second waited
        assert metrics["capbench_serve_queue_depth"] == 1 and metrics["capbench_serve_batches_in_flight"] == 1


def test_a_judge_taking_one_batch_at_a_time_gets_one_batch_at_a_time():
    answers: dict[str, httpx.Response] = {}
    lines: list[str] = []
    with serving(lines, judge="serial-held:any", caprl_samples=2, batch_window_ms=0, max_batches=4) as running:
        slow = _in_thread(answers, "slow", running.url, {"rewards": QA, "items": [_qa_item("A SLOW cat.")]})
        assert HeldJudge.held.wait(30)
        fast = _in_thread(answers, "fast", running.url, {"rewards": QA, "items": [_qa_item("A quick cat.")]})
        _wait_for(lambda: _metrics(running.url)["capbench_serve_queue_depth"] == 1)  # it waits for the slot
        metrics = _metrics(running.url)
        HeldJudge.gate.set()
        slow.join(30)
        fast.join(30)
    assert metrics["capbench_serve_batches_in_flight"] == 1
    assert json.loads(lines[0])["max_batches"] == 1  # the ready line says so
    assert answers["slow"].status_code == answers["fast"].status_code == 200


# --- usage: exact per request while batches overlap -----------------------------------------------------


def _usage_run(judge: str, rewards: list[str], items: list[dict[str, Any]], per_request: int, senders: int) -> None:
    """Send ``items`` in requests from concurrent senders; check each request's usage against the judge's counts."""
    chunks = [items[i : i + per_request] for i in range(0, len(items), per_request)]
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()
    with serving(judge=judge, benchmark="mini", caprl_samples=2, batch_window_ms=0, max_batches=4,
                 cache=False) as running:  # fmt: skip

        def sender(part: list[list[dict[str, Any]]]) -> None:
            for chunk in part:
                response = _post(running.url, {"rewards": rewards, "items": chunk})
                assert response.status_code == 200, response.text
                with lock:
                    answers.append(response.json())

        threads = [threading.Thread(target=sender, args=(chunks[k::senders],)) for k in range(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        metrics = _metrics(running.url)
    assert len(answers) == len(chunks)
    assert metrics["capbench_serve_batches_total"] > 1 and CountingOracle.running[1] > 1  # batches overlapped
    calls = sum(a["usage"]["judge_calls"] for a in answers)
    hits = sum(a["usage"]["cache_hits"] for a in answers)
    assert all(r["errors"] == {} for a in answers for r in a["results"])
    # every distinct judge request was sent once, even from two batches at once; the rest waited for it
    assert max(CountingOracle.received.values()) == 1
    assert calls == sum(CountingOracle.received.values()) == metrics["capbench_serve_judge_calls_total"]
    assert hits == metrics["capbench_serve_cache_hits_total"] and hits > 0
    assert sum(a["usage"]["failures"] for a in answers) == 0


def test_each_requests_usage_is_exact_while_batches_overlap_qa():
    # 24 items, each caption twice (in different requests), so concurrent batches ask for the same draws
    items = [_qa_item(f"A cat number {k % 12} on a mat.") for k in range(24)]
    _usage_run("counting-parity:any", ["caprl_qa_utility", "captionqa"], items, per_request=2, senders=6)


def test_each_requests_usage_is_exact_while_batches_overlap_facts():
    # the fact pipeline sends its second stage from threads of its own: those calls count for their batch too
    items = [
        {"sample_id": s.id, "caption": CAPTIONS[name][s.id]} for name in ("detailed", "short") for s in MINI.samples
    ]
    items = items + items[::-1]
    _usage_run("counting-oracle:truth", ["balcap_precision", "dcscore"], items, per_request=3, senders=6)


def test_a_tallied_view_counts_one_callers_share_of_a_shared_engine(tmp_path):
    engine = CachedEngine(CountingParity(), ResponseCache(tmp_path / "cache.sqlite"))
    request = Request((Message.text("user", "Is the cat on the mat?"),), Sampling())
    first, second = Tally(), Tally()
    threads = [threading.Thread(target=engine.tallied(tally).run, args=([request],)) for tally in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    tallies = sorted([first.to_dict(), second.to_dict()], key=lambda t: t["judge_calls"])
    # one caller sent it; the other waited for that answer, or read it from the cache
    assert tallies[0] == {"judge_calls": 0, "cache_hits": 1, "failures": 0}
    assert tallies[1] == {"judge_calls": 1, "cache_hits": 0, "failures": 0}
    assert engine.stats.calls == 1 and engine.stats.cache_hits == 1
    assert engine.tallied(first).fingerprint() == engine.fingerprint()
    assert engine.tallied(first).engine is engine.engine


# --- the bound counts items waiting and being judged; stopping answers them all -------------------------


def test_the_queue_bound_counts_items_being_judged_in_every_batch():
    answers: dict[str, httpx.Response] = {}
    settings = {"judge": "held:any", "max_queue": 4, "max_items": 2, "batch_window_ms": 0, "max_batches": 2}
    with serving(**settings) as running:
        threads = [_in_thread(answers, "a", running.url, {"rewards": QA, "items": [_qa_item("A SLOW cat.")]})]
        _wait_for(lambda: _metrics(running.url)["capbench_serve_batches_in_flight"] == 1)
        two = [_qa_item("A SLOW dog."), _qa_item("A SLOW bird.")]
        threads.append(_in_thread(answers, "b", running.url, {"rewards": QA, "items": two}))
        _wait_for(lambda: _metrics(running.url)["capbench_serve_batches_in_flight"] == 2)
        threads.append(_in_thread(answers, "c", running.url, {"rewards": QA, "items": [_qa_item("A fish.")]}))
        _wait_for(lambda: _metrics(running.url)["capbench_serve_queue_depth"] == 1)  # both slots taken: it waits
        full = _post(running.url, {"rewards": QA, "items": [_qa_item("One more.")]})
        metrics = _metrics(running.url)
        HeldJudge.gate.set()
        for thread in threads:
            thread.join(30)
    assert metrics["capbench_serve_items_in_flight"] == 3 and metrics["capbench_serve_batches_in_flight"] == 2
    assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
    assert "(1 items waiting and 3 being judged, at most 4 in all: --max-queue)" in full.json()["detail"]
    assert {name: a.status_code for name, a in answers.items()} == {"a": 200, "b": 200, "c": 200}
    assert HeldJudge.running[1] == 2  # never more batches at once than --max-batches


def test_stopping_answers_every_batch_being_judged_and_every_queued_request():
    answers: dict[str, httpx.Response] = {}
    running = Running(ServeConfig(judge="held:any", port=0, batch_window_ms=0, max_batches=2), log=lambda line: None)
    try:
        threads = []
        for name, gauge, value in (
            ("cat", "batches_in_flight", 1),
            ("dog", "batches_in_flight", 2),
            ("bird", "queue_depth", 1),
        ):  # two judged, one waiting; one at a time
            body = {"rewards": QA, "items": [_qa_item(f"A SLOW {name}.")]}
            threads.append(_in_thread(answers, name, running.url, body))
            _wait_for(lambda g=gauge, v=value: _metrics(running.url)[f"capbench_serve_{g}"] == v)
        stopper = threading.Thread(target=running.stop)
        stopper.start()
        time.sleep(0.3)
        assert stopper.is_alive()  # the stop waits for the batches
        HeldJudge.gate.set()
        stopper.join(30)
        for thread in threads:
            thread.join(30)
    finally:
        running.stop()
    assert not stopper.is_alive()
    assert {name: a.status_code for name, a in answers.items()} == {"cat": 200, "dog": 200, "bird": 200}
    assert all(a.json()["results"][0]["rewards"]["caprl_qa_utility"] is not None for a in answers.values())


# --- the setting -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [(0, "--max-batches 0 is out of range; give 1"), (65, "--max-batches 65 is out of range"),
     (2.5, "ServeConfig.max_batches must be an int, not float")],
)  # fmt: skip
def test_a_max_batches_out_of_range_is_refused_before_anything_loads(value: Any, message: str):
    with pytest.raises(ConfigError, match=message):
        prepare(ServeConfig(judge="held:any", max_batches=value))


def test_the_command_takes_max_batches():
    from capbench.cli import main

    assert config_from_options({"max_batches": 8}).max_batches == 8
    assert config_from_options({}).max_batches == ServeConfig().max_batches
    assert "--max-batches" in CliRunner().invoke(main, ["serve", "--help"]).output
    result = CliRunner().invoke(main, ["serve", "--judge", "held:any", "--max-batches", "100"])
    assert result.exit_code == 1 and "--max-batches 100 is out of range" in result.output


#: The bad settings this suite refuses (counted by benchmarks/robustness.py).
KINDS = ("--max-batches 0", "--max-batches 65", "max_batches not an int")
