"""The judge-call cache: hits, misses, failures, de-duplication, two writers, and a crash mid-write."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ScriptedEngine

from capbench.engines.base import Message, Request, Response, Sampling, request_key
from capbench.engines.cache import CachedEngine, ResponseCache
from capbench.errors import ConfigError


def _request(text: str, **sampling) -> Request:
    return Request((Message.text("user", text),), Sampling(**sampling))


def test_hit_miss_and_counts(tmp_path: Path):
    engine = ScriptedEngine(lambda r: r.messages[0].joined_text().upper())
    cached = CachedEngine(engine, ResponseCache(tmp_path / "c.sqlite"))
    first = cached.run([_request("a"), _request("b")])
    assert [r.text for r in first] == ["A", "B"] and not any(r.cached for r in first)
    again = cached.run([_request("a"), _request("c")])
    assert [r.text for r in again] == ["A", "C"] and [r.cached for r in again] == [True, False]
    assert len(engine.calls) == 3
    assert (cached.stats.calls, cached.stats.cache_hits) == (3, 1)
    assert cached.stats.prompt_tokens == 30


def test_what_changes_output_changes_the_key():
    fp = {"backend": "x", "model": "m"}
    base = request_key(fp, _request("a"))
    assert request_key(fp, _request("a")) == base
    assert request_key(fp, _request("a", seed=1)) != base
    assert request_key(fp, _request("a", n=3)) != base
    assert request_key(fp, _request("a", temperature=0.5)) != base
    assert request_key(fp, _request("a", max_tokens=5)) != base
    assert request_key({"backend": "x", "model": "other"}, _request("a")) != base


def test_identical_requests_in_a_batch_are_sent_once(tmp_path: Path):
    engine = ScriptedEngine(lambda r: "x")
    cached = CachedEngine(engine, ResponseCache(tmp_path / "c.sqlite"))
    seen = []
    out = cached.run([_request("a"), _request("a"), _request("b")], lambda i, r: seen.append(i))
    assert len(engine.calls) == 2 and len(out) == 3 and sorted(seen) == [0, 1, 2]


def test_failures_are_not_cached(tmp_path: Path):
    replies = iter([Response(error="timeout"), "ok"])
    engine = ScriptedEngine(lambda r: next(replies))
    cached = CachedEngine(engine, ResponseCache(tmp_path / "c.sqlite"))
    assert cached.run([_request("a")])[0].error == "timeout"
    assert cached.stats.failures == 1 and cached.stats.errors == {"timeout": 1}
    assert cached.run([_request("a")])[0].text == "ok"  # asked again, not served from the cache
    assert len(engine.calls) == 2


def test_no_cache_means_every_call_runs():
    engine = ScriptedEngine()
    cached = CachedEngine(engine, None)
    cached.run([_request("a")])
    cached.run([_request("a")])
    assert len(engine.calls) == 2


def test_each_response_is_stored_as_it_arrives(tmp_path: Path):
    """A batch interrupted half-way keeps what finished before the interruption."""
    path = tmp_path / "c.sqlite"

    def reply(request):
        if request.messages[0].joined_text() == "boom":
            raise KeyboardInterrupt
        return "x"

    cached = CachedEngine(ScriptedEngine(reply), ResponseCache(path))
    with pytest.raises(KeyboardInterrupt):
        cached.run([_request("a"), _request("b"), _request("boom")])
    assert ResponseCache(path).stats()["entries"] == 2


def test_stats_and_clear(tmp_path: Path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    cached = CachedEngine(ScriptedEngine(name="m1"), cache)
    cached.run([_request("a"), _request("b")])
    CachedEngine(ScriptedEngine(name="m2"), cache).run([_request("a")])
    stats = cache.stats()
    assert stats["entries"] == 3
    assert {e["engine"]: e["entries"] for e in stats["engines"]} == {"scripted:m1": 2, "scripted:m2": 1}
    assert cache.clear("scripted:m1") == 2
    assert cache.stats()["entries"] == 1
    assert cache.clear() == 1


def _writer(path: str, tag: str, count: int) -> None:
    cache = ResponseCache(path)
    for i in range(count):
        cache.put(f"{tag}-{i}", {"backend": "t", "model": tag}, _request(f"{tag}{i}"), Response(texts=(tag,)))


def test_two_processes_write_at_once(tmp_path: Path):
    path = str(tmp_path / "shared.sqlite")
    ResponseCache(path)  # create the schema first, as the first run would
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, tag, 200)) for tag in ("p1", "p2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = ResponseCache(path)
    assert cache.stats()["entries"] == 400
    assert cache.get("p1-199").text == "p1" and cache.get("p2-0").text == "p2"


def test_crash_between_write_and_commit_leaves_no_row(tmp_path: Path):
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    cache.put("kept", {"backend": "t", "model": "m"}, _request("kept"), Response(texts=("yes",)))
    script = textwrap.dedent(
        f"""
        import os, signal, sqlite3
        db = sqlite3.connect({str(path)!r}, isolation_level=None)
        db.execute("BEGIN")
        db.execute("INSERT INTO responses VALUES ('torn', 'e', '{{}}', '{{}}', '{{}}', 0)")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -signal.SIGKILL
    reopened = ResponseCache(path)
    assert reopened.get("torn") is None
    assert reopened.get("kept").text == "yes"
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_file_that_is_not_a_cache(tmp_path: Path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ConfigError, match="not a usable capbench cache"):
        ResponseCache(path)


def test_a_recorder_sees_cached_and_new_responses(tmp_path: Path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    CachedEngine(ScriptedEngine(), cache).run([_request("a")])
    seen = []

    class Recorder:
        def write(self, request, response):
            seen.append((request.messages[0].joined_text(), response.cached))

    engine = ScriptedEngine()
    CachedEngine(engine, cache, Recorder()).run([_request("a"), _request("b")])
    assert sorted(seen) == [("a", True), ("b", False)] and len(engine.calls) == 1


# --- requests in flight from several threads -----------------------------------------------------


class _SlowEngine:
    """Answers after a pause; counts every request it receives and the most batches it ran at once."""

    backend, accepts_images, supports_loglik = "slow", False, False

    def __init__(self, concurrent: bool, pause: float = 0.2, fail: bool = False) -> None:
        import threading

        self.concurrent = concurrent
        self.pause, self.fail = pause, fail
        self.received: list[str] = []
        self.running = self.most = 0
        self.lock = threading.Lock()

    def fingerprint(self) -> dict:
        return {"backend": "slow"}

    def run(self, requests, on_result=None):
        import time

        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.received += [r.messages[-1].joined_text() for r in requests]
        time.sleep(self.pause)
        with self.lock:
            self.running -= 1
        if self.fail:
            raise RuntimeError("the engine broke")
        return [Response(texts=(f"answer to {r.messages[-1].joined_text()}",)) for r in requests]


def _together(judge, batches):
    """Run each batch on its own thread, all at once; return each thread's responses (or exception)."""
    import threading

    out: list = [None] * len(batches)

    def one(i: int) -> None:
        try:
            out[i] = judge.run([Request((Message.text("user", t),), Sampling()) for t in batches[i]])
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a caller never got its answer"
    return out


@pytest.mark.parametrize("concurrent", [True, False])
def test_identical_requests_in_flight_from_other_threads_are_sent_once(tmp_path, concurrent):
    engine = _SlowEngine(concurrent)
    judge = CachedEngine(engine, ResponseCache(tmp_path / "cache.sqlite"))
    first, second = _together(judge, [["a", "b", "c"], ["b", "c", "d"]])
    assert sorted(engine.received) == ["a", "b", "c", "d"]  # b and c were asked once
    assert [r.text for r in first] == ["answer to a", "answer to b", "answer to c"]
    assert [r.text for r in second] == ["answer to b", "answer to c", "answer to d"]
    assert judge.stats.calls == 4 and judge.stats.cache_hits == 2
    # an engine that is not safe from two threads gets one batch at a time; a concurrent one, both
    assert engine.most == (2 if concurrent else 1)


def test_a_call_that_fails_in_flight_fails_its_waiters_too_and_nothing_hangs(tmp_path):
    engine = _SlowEngine(concurrent=True, fail=True)
    judge = CachedEngine(engine, ResponseCache(tmp_path / "cache.sqlite"))
    first, second = _together(judge, [["a"], ["a"]])
    errors = [r for r in (first, second) if isinstance(r, Exception)]
    answered = [r for r in (first, second) if not isinstance(r, Exception)]
    assert len(errors) == 1 and "the engine broke" in str(errors[0])
    if answered:  # the waiter got the failure as a failure, never a reply, and no cache hit
        assert not answered[0][0].ok and judge.stats.cache_hits == 0
    assert engine.received == ["a"]
