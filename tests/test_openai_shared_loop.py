"""The openai engine's one event loop per engine: one limit per server across every caller.

A stdlib server on 127.0.0.1 counts the requests it holds at once, the connections they came
on and the keys they carried, so the tests can see what the shared loop, client and pool do
when threads, event loops, forked children and unpickled copies use one engine.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import pickle
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from capbench.engines.base import Message, Request, Response, Sampling
from capbench.engines.openai import OpenAIEngine
from capbench.errors import EngineError

FAST = {"backoff": 0.01, "backoff_cap": 0.05}


class Counting:
    """An OpenAI-compatible server that echoes the prompt and counts what it holds at once.

    ``status(prompt)`` picks each reply's HTTP status (200 echoes the prompt); ``delay`` is how
    long each request is held. Connections are kept alive (HTTP/1.1), so reuse can be seen.
    """

    def __init__(self, delay: float = 0.0, status: Callable[[str], int] = lambda prompt: 200) -> None:
        self.delay, self.status = delay, status
        self.in_flight = self.peak = 0
        self.ports: set[int] = set()
        self.prompts: Counter[str] = Counter()
        self.authorization: list[str | None] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with server.lock:
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                    server.ports.add(self.client_address[1])
                    server.prompts[prompt] += 1
                    server.authorization.append(self.headers.get("Authorization"))
                try:
                    time.sleep(server.delay)
                    status = server.status(prompt)
                    reply = {
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": prompt}}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
                    }
                    data = json.dumps(reply if status == 200 else {"error": {"message": "no"}}).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Counting]]:
    started: list[Counting] = []

    def start(delay: float = 0.0, status: Callable[[str], int] = lambda prompt: 200) -> Counting:
        started.append(Counting(delay, status))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
def engines() -> Iterator[list[OpenAIEngine]]:
    """Engines to close after the test, so no loop thread outlives it."""
    built: list[OpenAIEngine] = []
    yield built
    for engine in built:
        engine.close()


def _ask(prompt: str) -> Request:
    return Request((Message.text("user", prompt),), Sampling(max_tokens=4))


def _texts(replies: list[Response]) -> list[str]:
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    return [r.text for r in replies]


def test_the_limit_holds_across_threads_loops_and_calls(serve, engines):
    one, two = serve(delay=0.05), serve(delay=0.05)
    engine = OpenAIEngine("m", f"{one.url},{two.url}", concurrency=3)
    engines.append(engine)
    results: dict[int, list[str]] = {}
    caller_threads: dict[int, set[int]] = {}

    def caller(n: int) -> None:
        prompts = [f"t{n}-{k}" for k in range(6)]
        seen: set[int] = set()
        on_result = lambda index, response: seen.add(threading.get_ident())  # noqa: E731
        if n % 3 == 0:  # from a coroutine on the caller's own event loop
            replies = asyncio.run(engine.arun([_ask(p) for p in prompts], on_result))
        elif n % 3 == 1:  # blocking inside a running event loop
            replies = asyncio.run(_blocking(engine, prompts, on_result))
        else:
            replies = engine.run([_ask(p) for p in prompts], on_result)
        results[n], caller_threads[n] = _texts(replies), seen

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {n: [f"t{n}-{k}" for k in range(6)] for n in range(9)}  # answers line up with prompts
    assert all(caller_threads[n] == {threads[n].ident} for n in range(9))  # on_result in the caller's thread
    # 9 callers x 6 requests, yet each server never held more than the engine's limit, and reached it
    assert one.peak == two.peak == 3
    stats = engine.server_stats()
    assert [stats[s.url]["peak_in_flight"] for s in (one, two)] == [3, 3]
    assert sum(stats[s.url]["requests"] for s in (one, two)) == 54
    assert all(stats[s.url]["in_flight"] == 0 for s in (one, two))
    assert len(one.ports | two.ports) <= 6  # the shared client reuses its connections


async def _blocking(engine: OpenAIEngine, prompts: list[str], on_result: Any) -> list[Response]:
    return engine.run([_ask(p) for p in prompts], on_result)


def test_a_caller_that_gives_up_cancels_only_its_own_requests(serve, engines):
    server = serve(delay=0.2)
    engine = OpenAIEngine("m", server.url, concurrency=2)
    engines.append(engine)
    box: dict[str, Any] = {}

    def give_up(index: int, response: Response) -> None:
        raise KeyboardInterrupt

    def quitter() -> None:
        try:
            engine.run([_ask(f"quit-{k}") for k in range(20)], give_up)
        except KeyboardInterrupt:
            box["quit"] = True

    def stayer() -> None:
        time.sleep(0.05)  # the quitter's requests are queued first
        box["stayed"] = engine.run([_ask(f"stay-{k}") for k in range(4)])

    threads = [threading.Thread(target=quitter), threading.Thread(target=stayer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert box["quit"] and _texts(box["stayed"]) == [f"stay-{k}" for k in range(4)]
    quit_sent = sum(n for prompt, n in server.prompts.items() if prompt.startswith("quit-"))
    assert quit_sent < 8  # the rest of the 20 were cancelled, not sent
    assert engine.server_stats()[server.url]["in_flight"] == 0


def test_arun_from_the_engines_own_loop_and_run_refused_there(serve, engines):
    server = serve()
    engine = OpenAIEngine("m", server.url)
    engines.append(engine)
    assert _texts(engine.run([_ask("warm")])) == ["warm"]
    loop = engine._shared.loop

    async def inside() -> list[Response]:
        with pytest.raises(EngineError, match="await arun"):
            engine.run([_ask("x")])  # would wait for the loop it runs on
        return await engine.arun([_ask("in"), _ask("side")])

    replies = asyncio.run_coroutine_threadsafe(inside(), loop).result(10)
    assert _texts(replies) == ["in", "side"]


def test_the_key_is_read_at_each_run(serve, engines, monkeypatch):
    server = serve()
    engine = OpenAIEngine("m", server.url, api_key_env="CAPBENCH_TEST_KEY")
    engines.append(engine)
    for key in ("sk-first", "sk-second", None):
        if key is None:
            monkeypatch.delenv("CAPBENCH_TEST_KEY")
        else:
            monkeypatch.setenv("CAPBENCH_TEST_KEY", key)
        engine.run([_ask("hi")])
    assert server.authorization == ["Bearer sk-first", "Bearer sk-second", None]


def test_close_stops_the_loop_and_a_later_run_restarts_it(serve, engines):
    server = serve()
    engine = OpenAIEngine("m", server.url)
    engines.append(engine)
    engine.run([_ask("before")])
    first = engine._shared
    engine.close()
    assert not first.thread.is_alive() and first.client.is_closed and first.loop.is_closed()
    assert _texts(engine.run([_ask("after")])) == ["after"]
    assert engine._shared is not first and engine._shared.thread.is_alive()
    assert engine.server_stats()[server.url]["requests"] == 2  # counted across the restart
    engine.close()
    engine.close()  # twice is harmless


def test_an_engine_dropped_without_close_ends_its_loop(serve):
    server = serve()
    engine = OpenAIEngine("m", server.url)
    engine.run([_ask("hi")])
    thread = engine._shared.thread
    del engine
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()


def test_close_during_a_run_fails_that_run(serve, engines):
    server = serve(delay=0.5)
    engine = OpenAIEngine("m", server.url)
    engines.append(engine)
    box: dict[str, Any] = {}

    def caller() -> None:
        try:
            engine.run([_ask("slow")])
        except EngineError as exc:
            box["error"] = str(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    time.sleep(0.2)
    engine.close()
    thread.join(10)
    assert "closed while a batch was running" in box["error"]


def test_an_unpickled_engine_starts_its_own_loop(serve, engines):
    server = serve()
    engine = OpenAIEngine("m", server.url)
    engines.append(engine)
    engine.run([_ask("parent")])
    copy = pickle.loads(pickle.dumps(engine))  # a loop, thread or client would not pickle
    engines.append(copy)
    assert copy._shared is None
    assert _texts(copy.run([_ask("copy")])) == ["copy"]
    assert copy._shared.loop is not engine._shared.loop


def _in_child(engine: OpenAIEngine, out: Any) -> None:
    replies = engine.run([_ask("child")])
    out.send((replies[0].text, engine._shared.pid == os.getpid(), engine.server_stats()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_loop(serve, engines):
    server = serve()
    engine = OpenAIEngine("m", server.url)
    engines.append(engine)
    engine.run([_ask("parent")])
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_in_child, args=(engine, send))
    child.start()
    assert receive.poll(20), "the child's run did not finish"
    text, own_loop, stats = receive.recv()
    child.join(10)
    assert (text, own_loop) == ("child", True)
    assert stats[server.url]["requests"] == 1  # the child counts its own calls
    assert _texts(engine.run([_ask("parent again")])) == ["parent again"]  # the parent's loop is untouched


def test_server_stats_count_calls_retries_and_errors(serve, engines, monkeypatch):
    secret = "sk-stats-1234"
    monkeypatch.setenv("CAPBENCH_TEST_KEY", secret)
    flaky: Counter[str] = Counter()

    def status(prompt: str) -> int:
        flaky[prompt] += 1
        return {"retried": 503 if flaky[prompt] == 1 else 200, "refused": 404}.get(prompt, 200)

    server = serve(status=status)
    engine = OpenAIEngine("m", server.url, api_key_env="CAPBENCH_TEST_KEY", concurrency=1, **FAST)
    engines.append(engine)
    assert engine.server_stats() == {
        server.url: {"requests": 0, "retries": 0, "failed_calls": 0, "errors": 0, "seconds": 0.0, "in_flight": 0,
                     "peak_in_flight": 0, "marked_down": 0, "down": False, "last_error": "", "affine": 0, "spilled": 0}
    }  # fmt: skip
    fine, retried, refused = engine.run([_ask("fine"), _ask("retried"), _ask("refused")])
    assert fine.ok and retried.ok and "HTTP 404" in refused.error
    stats = engine.server_stats()[server.url]
    keys = ("requests", "retries", "failed_calls", "errors", "in_flight", "peak_in_flight", "marked_down", "down")
    assert {k: stats[k] for k in keys} == {
        "requests": 4,
        "retries": 1,
        "failed_calls": 2,  # the 503 (retried) and the 404
        "errors": 1,
        "in_flight": 0,
        "peak_in_flight": 1,
        "marked_down": 1,  # a 503: out of rotation until it answered the retry
        "down": False,
    }
    assert "HTTP 404" in stats["last_error"]
    assert stats["seconds"] > 0 and secret not in json.dumps(engine.server_stats())
