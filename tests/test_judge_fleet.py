"""A judge spread over several servers survives one that dies for good and uses one that comes back.

Three loopback servers answer the ``openai`` engine. Mid-run, one dies for good (the requests it
holds are cut off without an answer, and its port refuses every later connection) and another
goes away and comes back on the same port. Every request must still be answered; the dead one
may cost only what it held (and the probes that find it still dead); the one that came back must
be used again; and each server's figures must say so, in the engine and in a run's manifest.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from capbench.engines.base import Message, Request, Sampling
from capbench.engines.http_loop import Pool
from capbench.engines.openai import OpenAIEngine


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class Replica:
    """One judge server: answers "A" after ``delay``; can die (cutting off what it holds) and come back."""

    def __init__(self, delay: float = 0.03) -> None:
        self.delay, self.port = delay, 0
        self.answered = 0
        self.answered_after_restart = 0
        self.restarted = False
        self.dead = False
        self.lock = threading.Lock()
        self.server: _Server | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        replica = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # GET /v1/models: the one model it serves
                payload = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(replica.delay)
                if replica.dead:  # killed while holding this request: no answer, the connection cut
                    self.close_connection = True
                    self.connection.close()
                    return
                payload = json.dumps({
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "A"}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1},
                }).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                with replica.lock:
                    replica.answered += 1
                    replica.answered_after_restart += replica.restarted

            def log_message(self, *args: Any) -> None:
                pass

        self.dead = False
        self.server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kill(self) -> None:
        """Stop listening and cut off every request in hand."""
        self.dead = True
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    def restart(self) -> None:
        self.restarted = True
        self.start()


@pytest.fixture
def replicas():
    fleet = [Replica(), Replica(), Replica()]
    yield fleet
    for replica in fleet:
        if not replica.dead:
            replica.kill()


def _requests(count: int) -> list[Request]:
    return [
        Request((Message.text("user", f"question {i}"),), Sampling(max_tokens=4, temperature=0.0)) for i in range(count)
    ]


def test_a_server_that_dies_costs_only_what_it_held_and_one_that_comes_back_is_used_again(replicas):
    dead, returning, steady = replicas
    engine = OpenAIEngine(
        "m", [r.url for r in replicas], concurrency=4, max_retries=3, backoff=0.05, backoff_cap=0.2, timeout=10
    )
    answered = 0
    events = threading.Event()

    def on_result(index: int, response: Any) -> None:
        nonlocal answered
        answered += 1
        if answered == 60:
            events.set()

    def faults() -> None:
        events.wait(10)
        dead.kill()  # for good
        returning.kill()
        time.sleep(0.3)
        returning.restart()

    threading.Thread(target=faults, daemon=True).start()
    started = time.perf_counter()
    responses = engine.run(_requests(600), on_result)
    seconds = time.perf_counter() - started
    try:
        assert all(r.ok for r in responses), next(r.error for r in responses if not r.ok)
        stats = engine.server_stats()
        held = 4  # the dead server's concurrency: what it could hold when it died
        # the probes that found it still dead: one after each cooldown (1 s, doubling) while the run lasted
        probes = sum(1 for k in range(10) if sum(2**j for j in range(k + 1)) < seconds)
        assert stats[dead.url]["failed_calls"] <= held + probes
        assert stats[dead.url]["down"] and stats[dead.url]["marked_down"] == 1
        assert "127.0.0.1" in stats[dead.url]["last_error"]
        assert returning.answered_after_restart > 0, (json.dumps(stats), seconds)  # used again once back
        assert not stats[returning.url]["down"] and stats[returning.url]["marked_down"] >= 1
        assert steady.answered + returning.answered + dead.answered == 600
        assert stats[steady.url]["failed_calls"] == 0
    finally:
        engine.close()


def test_every_server_down_is_still_probed_and_the_failure_named(replicas):
    for replica in replicas:
        replica.kill()
    engine = OpenAIEngine("m", [r.url for r in replicas], concurrency=2, max_retries=2, backoff=0.01, timeout=5)
    try:
        [response] = engine.run(_requests(1))
        assert not response.ok and "gave up after 3 attempts" in response.error
        stats = engine.server_stats()
        # each attempt went to another server while one was left in rotation
        assert [stats[r.url]["failed_calls"] for r in replicas] == [1, 1, 1]
        assert all(stats[r.url]["down"] for r in replicas)
    finally:
        engine.close()


def test_a_503_takes_a_server_out_of_rotation_and_a_429_does_not():
    pool = Pool(("http://a/v1", "http://b/v1"), concurrency=2)
    pool.answered("http://a/v1", "HTTP 429 from http://a/v1: slow down")
    assert pool.in_rotation(avoid="http://b/v1")  # busy is not gone
    pool.answered("http://a/v1", "HTTP 503 from http://a/v1: unavailable", down=True)
    assert not pool.in_rotation(avoid="http://b/v1") and pool.stats["http://a/v1"].down
    assert pool._pick(None) == 1  # calls go to b
    pool.back_at[0] = 0.0  # its cooldown is over: one probe may go to a
    assert pool.in_rotation(avoid="http://b/v1")
    pool.answered("http://a/v1")
    assert not pool.stats["http://a/v1"].down and pool.strikes[0] == 0


def test_the_manifest_records_each_servers_figures(replicas, tmp_path: Path, monkeypatch):
    import capbench

    monkeypatch.setenv("CAPBENCH_HOME", str(tmp_path / "home"))
    urls = ",".join(r.url for r in replicas)
    capbench.evaluate(
        benchmark="mini", example_captions=True, metrics=["captionqa"], judge="openai:m",
        judge_options=[f"base_url={urls}", "concurrency=2"], answer_mode="letter", limit=3,
        results_dir=tmp_path / "results", cache=False,
    )  # fmt: skip
    manifest = json.loads((tmp_path / "results" / "mini" / "short" / "manifest.json").read_text())
    servers = manifest["sessions"][-1]["servers"]["text"]
    assert set(servers) == {r.url for r in replicas}
    assert sum(s["requests"] for s in servers.values()) == manifest["sessions"][-1]["judge_calls"] > 0
    assert all(s["mean_seconds"] > 0 and s["failed_calls"] == 0 for s in servers.values() if s["requests"])


def test_credentials_in_a_server_url_are_refused_and_never_written():
    from capbench.engines.spec import parse_engine
    from capbench.errors import ConfigError
    from capbench.evaluation import _without_credentials

    with pytest.raises(ConfigError, match=r"option 'base_url' holds a URL with a user name or password"):
        parse_engine("openai:m", ["base_url=[http://a:8000/v1, http://user:pw@b:8000/v1]"])
    # an engine built in Python with such a URL: its figures are recorded under the URL without them
    assert _without_credentials("http://user:p@ss@host:8000/v1") == "http://host:8000/v1"


def test_a_server_listed_twice_is_refused():
    from capbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"base URL 'http://a:8000/v1' is listed 2 times; list each server once"):
        OpenAIEngine("m", "http://a:8000/v1,http://b:8000/v1,http://a:8000/v1/")


def test_an_unreachable_server_at_start_is_named(replicas):
    from capbench.errors import EngineError

    gone = replicas[1]
    gone.kill()
    engine = OpenAIEngine("m", [r.url for r in replicas], timeout=5)
    with pytest.raises(EngineError) as caught:
        engine.check()
    message = str(caught.value)
    assert f"{gone.url}: ConnectError" in message and "leave that server out of the list" in message
    assert "\n" not in message


#: The faults and bad inputs this suite puts a judge fleet through (counted by benchmarks/robustness.py).
KINDS = (
    "a server that dies for good mid-run (requests in hand cut off)",
    "a server that goes away and comes back on its port",
    "every server down: each attempt on another, the failure named",
    "a 503 takes a server out of rotation, a 429 does not",
    "a URL with a user name or password",
    "a server listed twice",
    "a server unreachable at start, among several",
)
