"""The OpenAI-compatible engine against real servers on 127.0.0.1.

The main server is llama-cpp-python's (``python -m llama_cpp.server``) running the bundled
SmolLM2-135M; a few tests use a scripted stdlib HTTP server for replies llama.cpp never gives
(429 with Retry-After, several choices, an error that echoes the Authorization header).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from capbench.engines import build_engine, llamacpp_build
from capbench.engines import openai as openai_engine
from capbench.engines.base import (
    Choice,
    ImagePart,
    JsonSchema,
    Message,
    Request,
    Sampling,
    TextPart,
)
from capbench.engines.openai import (
    OpenAIEngine,
    backoff_delay,
    is_retryable_status,
    message_payload,
    parse_base_urls,
    parse_retry_after,
)
from capbench.errors import ConfigError, MissingDependencyError
from capbench.hashing import sha256_file
from capbench.records import ImageRef

pytestmark = pytest.mark.engine

QUESTIONS = (
    "Name a colour.",
    "Name a fruit.",
    "What is 2+2?",
    "Say hello.",
    "Name an animal.",
    "What is the capital of France?",
    "Name a vegetable.",
    "What colour is grass?",
    "Name a planet.",
    "What is 3+5?",
    "Name a sport.",
    "Name a musical instrument.",
)
FAST = {"backoff": 0.01, "backoff_cap": 0.05}
# One thread each: on a small shared machine a second llama.cpp thread mostly waits for a core.
THREADS = ("--n_threads", "1", "--n_threads_batch", "1")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ask(question: str, max_tokens: int = 16, **sampling: Any) -> Request:
    return Request((Message.text("user", question),), Sampling(max_tokens=max_tokens, seed=7, **sampling))


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server as a subprocess on a fixed port."""

    def __init__(self, log: Path) -> None:
        from capbench.engines.llamacpp import resolve_model

        self.model = resolve_model("smollm2")
        self.port = _free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        args = ["--model", str(self.model), "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llama_cpp.server", *args, *THREADS, "--n_ctx", "2048", "--verbose", "False"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"llama.cpp server did not answer on {self.url}:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    for module in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        pytest.importorskip(module, reason="the test server needs: pip install 'llama-cpp-python[server]'")
    running = LlamaServer(tmp_path_factory.mktemp("llama-server") / "server.log")
    running.start()
    yield running
    running.stop()


class Scripted:
    """A stdlib HTTP server that answers POSTs from a script and records what it was sent."""

    def __init__(self, replies: list[tuple[int, dict[str, str], Any]]) -> None:
        self.replies, self.seen = replies, []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                script.seen.append((time.monotonic(), dict(self.headers), body))
                status, headers, reply = script.replies.pop(0) if len(script.replies) > 1 else script.replies[0]
                data = json.dumps(reply(self.headers) if callable(reply) else reply).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _completion(*texts: str) -> dict[str, Any]:
    choices = [{"index": i, "message": {"role": "assistant", "content": t}} for i, t in enumerate(texts)]
    return {"choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": len(texts)}}


# --- against llama.cpp's server ---------------------------------------------------------------


def test_batch_is_answered_in_order_and_greedy_is_repeatable(server):
    engine = OpenAIEngine("smollm2", server.url, concurrency=2)
    requests = [_ask(q) for q in QUESTIONS[:6]]
    done: list[int] = []
    first = engine.run(requests, on_result=lambda index, response: done.append(index))
    assert sorted(done) == list(range(6))
    assert all(r.ok and r.text and r.prompt_tokens > 0 and r.completion_tokens > 0 for r in first)
    assert "4" in first[2].text  # answers line up with their questions
    assert [r.texts for r in engine.run(requests)] == [r.texts for r in first]


def test_json_schema_falls_back_to_the_form_llamacpp_takes(server):
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    request = Request(
        (Message.text("user", "What colour is the sky? Reply in JSON."),),
        Sampling(max_tokens=40),
        JsonSchema.of(schema),
    )
    engine = OpenAIEngine("smollm2", server.url)
    [reply] = engine.run([request])
    # llama-cpp-python rejects {"type": "json_schema"} (HTTP 500) but takes json_object with a schema
    assert engine.json_mode == "json_object"
    assert isinstance(json.loads(reply.text)["colour"], str)
    assert engine.calls_per_endpoint[server.url] == 2
    engine.run([request])
    assert engine.calls_per_endpoint[server.url] == 3  # the step down is remembered

    strict = OpenAIEngine("smollm2", server.url, json_schema="on", max_retries=3)
    [refused] = strict.run([request])
    assert "HTTP 500" in refused.error and "response_format" in refused.error
    assert strict.calls_per_endpoint[server.url] == 1  # a rejected format is not retried

    [free] = OpenAIEngine("smollm2", server.url, json_schema="off").run([request])
    assert free.ok


def test_missing_draws_are_asked_for_again_with_their_own_seeds(server):
    engine = OpenAIEngine("smollm2", server.url)
    request = _ask("Name a colour.", max_tokens=8, temperature=0.9, n=3)
    [reply] = engine.run([request])
    assert len(reply.texts) == 3 and len(set(reply.texts)) > 1  # the server ignores n
    again = engine.run([request])[0].texts
    # The second call meets the server's prompt cache, so its prompt is computed in other batch shapes:
    # the portable build's kernels give the same draws then, a native AVX-512 build did not.
    problem = llamacpp_build.installed().problem()
    assert again == reply.texts, (
        f"identical seeded calls drew {again} and {reply.texts}: "
        + (f"the server runs a non-portable llama.cpp ({problem}); rebuild: {llamacpp_build.REBUILD}"
           if problem else "REGRESSION in the engine's seeding (the server runs the portable build)")
    )  # fmt: skip


def test_batch_survives_a_server_killed_and_restarted(server):
    requests = [_ask(q, max_tokens=8) for q in QUESTIONS]
    engine = OpenAIEngine("smollm2", server.url, concurrency=2, max_retries=40, backoff=0.1, backoff_cap=0.5)
    expected = engine.run(requests)
    assert all(r.ok for r in expected)
    calls_before = engine.calls_per_endpoint[server.url]
    done: list[int] = []
    started = threading.Event()

    def on_result(index: int, response) -> None:
        done.append(index)
        if len(done) >= 2:
            started.set()

    box: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: box.update(out=engine.run(requests, on_result)))
    runner.start()
    assert started.wait(30)
    server.kill()
    time.sleep(1.5)
    server.start()
    runner.join(60)
    assert not runner.is_alive()
    out = box["out"]
    assert all(r.ok for r in out), [r.error for r in out if not r.ok]
    assert [r.texts for r in out] == [r.texts for r in expected]
    assert sorted(done) == list(range(len(requests)))
    assert engine.calls_per_endpoint[server.url] - calls_before > len(requests)  # some were retried


def test_a_rejected_path_fails_at_once(server):
    engine = OpenAIEngine("smollm2", f"{server.url}/nope", max_retries=5, backoff=1.0)
    started = time.monotonic()
    [reply] = engine.run([_ask("Hi")])
    assert time.monotonic() - started < 5
    assert not reply.ok and "HTTP 404" in reply.error
    assert sum(engine.calls_per_endpoint.values()) == 1


def test_a_server_down_for_good_gives_errors_after_the_retries():
    engine = OpenAIEngine("smollm2", f"http://127.0.0.1:{_free_port()}/v1", max_retries=2, **FAST)
    replies = engine.run([_ask("Hi"), _ask("Bye")])
    assert all(not r.ok and "ConnectError" in r.error and "after 3 attempts" in r.error for r in replies)
    assert sum(engine.calls_per_endpoint.values()) == 6


def test_requests_are_spread_over_base_urls(server):
    other = server.url.replace("127.0.0.1", "localhost")
    engine = OpenAIEngine("smollm2", f"{server.url},{other}", concurrency=1)
    replies = engine.run([_ask(q, max_tokens=4) for q in QUESTIONS[:6]])
    assert all(r.ok for r in replies)
    assert engine.calls_per_endpoint == {server.url: 3, other: 3}


def test_run_inside_a_running_event_loop(server):
    engine = OpenAIEngine("smollm2", server.url)
    requests = [_ask(q, max_tokens=4) for q in QUESTIONS[:3]]
    threads: list[int] = []

    async def reward() -> tuple[list, list]:
        inside = engine.run(requests, on_result=lambda index, response: threads.append(threading.get_ident()))
        return inside, await engine.arun(requests)

    inside, awaited = asyncio.run(reward())
    assert all(r.ok for r in inside) and [r.texts for r in awaited] == [r.texts for r in inside]
    assert set(threads) == {threading.get_ident()}  # on_result runs on the caller's thread


def test_images_to_a_text_only_server_fail_cleanly(server, tmp_path):
    image = _png(tmp_path / "red.png")
    ask_image = Request((Message("user", (TextPart("What is this?"), ImagePart(image))),), Sampling(max_tokens=4))
    missing = Request((Message("user", (ImagePart(ImageRef(str(tmp_path / "gone.png"), "0" * 64)),)),))
    engine = OpenAIEngine("smollm2", server.url, max_retries=1, **FAST)
    sent, lost, fine = engine.run([ask_image, missing, _ask("Hi", max_tokens=2)])
    # llama-cpp-python's server answers list content with HTTP 500, retried once, then given up
    assert not sent.ok and "HTTP 500" in sent.error
    assert not lost.ok and "FileNotFoundError" in lost.error
    assert fine.ok
    [refused] = OpenAIEngine("smollm2", server.url, accepts_images=False).run([ask_image])
    assert "text-only" in refused.error


# --- against a scripted server ----------------------------------------------------------------


def test_the_key_is_sent_but_never_shown(monkeypatch):
    secret = "sk-test-9f8e7d6c5b4a"
    monkeypatch.setenv("CAPBENCH_TEST_KEY", secret)
    scripted = Scripted([(401, {}, lambda headers: {"error": {"message": f"bad key {headers['Authorization']}"}})])
    try:
        engine = OpenAIEngine("gpt-test", scripted.url, api_key_env="CAPBENCH_TEST_KEY", max_retries=3)
        [reply] = engine.run([_ask("Hi")])
    finally:
        scripted.close()
    assert scripted.seen[0][1]["Authorization"] == f"Bearer {secret}" and len(scripted.seen) == 1
    assert "HTTP 401" in reply.error and "bad key Bearer ***" in reply.error
    for shown in (reply.error, json.dumps(engine.fingerprint()), repr(engine), json.dumps(vars(engine), default=str)):
        assert secret not in shown


def test_no_key_sends_no_authorization(monkeypatch):
    monkeypatch.delenv("CAPBENCH_TEST_KEY", raising=False)
    scripted = Scripted([(200, {}, _completion("A", "B"))])
    try:
        [reply] = OpenAIEngine("m", scripted.url, api_key_env="CAPBENCH_TEST_KEY").run([_ask("Hi", n=2)])
    finally:
        scripted.close()
    assert "Authorization" not in scripted.seen[0][1]
    assert reply.texts == ("A", "B") and reply.completion_tokens == 2 and len(scripted.seen) == 1
    body = scripted.seen[0][2]
    assert body["n"] == 2 and body["seed"] == 7 and body["max_tokens"] == 16 and body["top_p"] == 1.0
    assert body["messages"] == [{"role": "user", "content": "Hi"}]


def test_retry_after_is_honoured():
    scripted = Scripted([(429, {"Retry-After": "1"}, {"error": "slow down"}), (200, {}, _completion("ok"))])
    try:
        engine = OpenAIEngine("m", scripted.url, **FAST)
        [reply] = engine.run([_ask("Hi")])
    finally:
        scripted.close()
    assert reply.text == "ok" and len(scripted.seen) == 2
    assert scripted.seen[1][0] - scripted.seen[0][0] >= 1.0


def test_strict_only_for_closed_schemas():
    scripted = Scripted([(200, {}, _completion("{}"))])
    closed = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    opened = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    try:
        engine = OpenAIEngine("m", scripted.url)
        engine.run([Request((Message.text("user", "J"),), constraint=JsonSchema.of(s)) for s in (closed, opened)])
    finally:
        scripted.close()
    formats = sorted(
        (b["response_format"]["json_schema"]["strict"], b["response_format"]["type"]) for *_, b in scripted.seen
    )
    assert formats == [(False, "json_schema"), (True, "json_schema")]


# --- without a server -------------------------------------------------------------------------


def _png(path: Path) -> ImageRef:
    from PIL import Image

    Image.new("RGB", (4, 3), (255, 0, 0)).save(path)
    return ImageRef(str(path), sha256_file(path))


def test_images_become_data_urls_read_once(tmp_path):
    image = _png(tmp_path / "red.png")
    images: dict[str, str] = {}
    message = Message("user", (TextPart("Look:"), ImagePart(image), ImagePart(image)))
    payload = message_payload(message, images)
    assert payload["content"][0] == {"type": "text", "text": "Look:"}
    url = payload["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == Path(image.path).read_bytes()
    assert list(images) == [image.sha256]
    assert message_payload(Message.text("system", "Be brief."), images) == {"role": "system", "content": "Be brief."}


def test_mime_type_comes_from_the_bytes(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.bin"
    Image.new("RGB", (2, 2)).save(path, format="JPEG")
    payload = message_payload(Message("user", (ImagePart(ImageRef(str(path), "j" * 64)),)), {})
    assert payload["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_backoff_is_capped_and_jittered():
    rng = random.Random(0)
    for attempt in range(12):
        delays = [backoff_delay(attempt, 0.5, 4.0, rng) for _ in range(50)]
        assert all(0 <= d <= min(4.0, 0.5 * 2**attempt) for d in delays)
        assert len(set(delays)) == 50
    assert max(backoff_delay(20, 0.5, 4.0, rng) for _ in range(200)) > 3.0


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (422, False),
        (408, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
    ],
)
def test_status_classification(status, retryable):
    assert is_retryable_status(status) is retryable


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),  # delta seconds
        (" 0.5 ", 0.5),  # fractional, padded
        ("-2", 0.0),  # a negative wait is no wait
        (formatdate(1_000_010.0, usegmt=True), 10.0),  # an HTTP date, ten seconds ahead
        (formatdate(999_990.0, usegmt=True), 0.0),  # a date in the past
        ("soon", None),  # unreadable
        ("", None),
        (None, None),
    ],
)
def test_retry_after_parsing(header, seconds):
    assert parse_retry_after(header, now=1_000_000.0) == seconds


def test_base_urls():
    assert parse_base_urls("http://a:1/v1, http://b:2/v1/ ,,") == ("http://a:1/v1", "http://b:2/v1")
    assert parse_base_urls(["http://a/v1,http://b/v1", "https://c/v1"]) == (
        "http://a/v1",
        "http://b/v1",
        "https://c/v1",
    )
    for bad in ("", " , ", "a.example/v1", "http://a:1/v1, http://a:1/v1/"):
        with pytest.raises(ConfigError):
            parse_base_urls(bad)


def test_registry_fingerprint_and_refusals(monkeypatch):
    engine = build_engine("openai:gpt-4o-mini", base_url="http://x/v1,http://y/v1", revision="2024-07-18")
    assert engine.fingerprint() == {"backend": "openai", "model": "gpt-4o-mini", "revision": "2024-07-18"}
    assert engine.accepts_images and not engine.supports_loglik
    loglik = Request((Message.text("user", "?"),), constraint=Choice(("a", "b"), loglik=True))
    [reply] = engine.run([loglik])
    assert "log-likelihood" in reply.error and sum(engine.calls_per_endpoint.values()) == 0
    with pytest.raises(ConfigError, match="json_schema"):
        OpenAIEngine("m", json_schema="maybe")  # type: ignore[arg-type]
    monkeypatch.setattr(openai_engine, "httpx", None)
    with pytest.raises(MissingDependencyError, match=r"capbench\[openai\]"):
        OpenAIEngine("m")
