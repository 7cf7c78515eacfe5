"""The openai engine's fingerprint holds what the server says about its model (GET /models).

Servers on 127.0.0.1 that serve the same model alias with different weights must not share cache
entries; the same server asked twice must; a server that cannot be asked is fingerprinted as
unseen, and ``revision=`` pins the fingerprint by hand without asking.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from loopback_judge import LoopbackJudge

from capbench.engines.base import Message, Request, Sampling
from capbench.engines.cache import CachedEngine, ResponseCache
from capbench.engines.openai import OpenAIEngine
from capbench.errors import EngineError

_ticks = itertools.count()
#: The kinds of fault this file covers (counted in benchmarks/results/robustness.md).
KINDS = (
    "one model alias served by two servers with other weights",
    "a server without a usable GET /models (501, 401, unlisted model, odd body, down)",
    "a judge server that cannot be reached at the start of a run",
    "a judge server that does not serve the model asked for",
    "a judge server that refuses the API key",
)


def vllm_entry(root: str, max_model_len: int = 4096) -> dict[str, Any]:
    """A /v1/models entry as vLLM writes it: ``created`` and the permission are new at each request."""
    return {
        "id": "judge",
        "object": "model",
        "created": int(time.time()) + next(_ticks),
        "owned_by": "vllm",
        "root": root,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "created": int(time.time()) + next(_ticks)}],
    }


class ModelServer:
    """An OpenAI-compatible server that lists one model card and answers chats with its own tag."""

    def __init__(self, listing: Any, tag: str, status: int = 200, system_fingerprint: str | None = None) -> None:
        self.gets = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.gets += 1
                if self.path != "/v1/models":
                    return self._send(404, {"error": "not found"})
                body = listing() if callable(listing) else listing
                self._send(status, body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                reply = {
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": tag}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
                }
                if system_fingerprint:
                    reply["system_fingerprint"] = system_fingerprint
                self._send(200, reply)

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[list[ModelServer]]:
    made: list[ModelServer] = []
    yield made
    for server in made:
        server.close()


def _serve(servers: list[ModelServer], *args: Any, **kwargs: Any) -> ModelServer:
    server = ModelServer(*args, **kwargs)
    servers.append(server)
    return server


def _ask(text: str = "which is better?") -> Request:
    return Request((Message.text("user", text),), Sampling(max_tokens=4))


def test_same_alias_different_servers_do_not_share_answers(servers, tmp_path):
    old = _serve(servers, lambda: {"object": "list", "data": [vllm_entry("/models/qwen-7b")]}, "old answer")
    new = _serve(servers, lambda: {"object": "list", "data": [vllm_entry("/models/qwen-7b-awq")]}, "new answer")
    first, second = OpenAIEngine("judge", old.url), OpenAIEngine("judge", new.url)
    assert first.fingerprint()["server"]["root"] == "/models/qwen-7b"
    assert first.fingerprint() != second.fingerprint()
    cache = ResponseCache(tmp_path / "c.sqlite")
    assert CachedEngine(first, cache).run([_ask()])[0].text == "old answer"
    [reply] = CachedEngine(second, cache).run([_ask()])
    assert reply.text == "new answer" and not reply.cached


def test_llamacpp_meta_tells_two_gguf_files_apart(servers):
    def card(params: int) -> dict[str, Any]:
        meta = {"vocab_type": 2, "n_vocab": 49152, "n_ctx_train": 8192, "n_embd": 576, "n_params": params}
        entry = {"id": "/models/x.gguf", "object": "model", "created": int(time.time()), "owned_by": "llamacpp"}
        return {"object": "list", "data": [{**entry, "meta": meta}]}

    small = _serve(servers, lambda: card(134515008), "a")
    large = _serve(servers, lambda: card(361821120), "b")
    # llama.cpp's server answers whatever model name it is asked for: its one model is fingerprinted.
    one, two = OpenAIEngine("judge", small.url), OpenAIEngine("judge", large.url)
    assert one.fingerprint()["server"]["meta"]["n_params"] == 134515008
    assert one.fingerprint() != two.fingerprint()


def test_the_same_server_twice_gives_the_same_fingerprint_and_hits(servers, tmp_path):
    server = _serve(servers, lambda: {"object": "list", "data": [vllm_entry("/models/q")]}, "answer")
    cache = ResponseCache(tmp_path / "c.sqlite")
    first = CachedEngine(OpenAIEngine("judge", server.url), cache)
    first.run([_ask()])
    again = OpenAIEngine("judge", server.url)
    assert again.fingerprint() == first.fingerprint()  # though `created` and the permission ids changed
    [reply] = CachedEngine(again, cache).run([_ask()])
    assert reply.cached and reply.text == "answer"


def test_one_get_per_engine_and_none_before_the_first_run(servers):
    server = _serve(servers, {"object": "list", "data": [vllm_entry("/m")]}, "x")
    cached = CachedEngine(OpenAIEngine("judge", server.url), None)
    assert server.gets == 0  # building the judge asks nothing
    for _ in range(3):
        cached.run([_ask()])
        cached.fingerprint()
    assert server.gets == 1


def test_a_server_without_models_is_unseen_and_still_answers(tmp_path):
    with LoopbackJudge(lambda messages: "B") as judge:  # answers POST only
        engine = OpenAIEngine("judge", judge.base_url)
        assert engine.fingerprint() == {"backend": "openai", "model": "judge", "revision": None, "server": "unseen"}
        assert "501" in engine.server_note
        assert CachedEngine(engine, ResponseCache(tmp_path / "c.sqlite")).run([_ask()])[0].text == "B"


@pytest.mark.parametrize(
    ("listing", "status"),
    [
        ({"error": "unauthorized"}, 401),  # a key the listing needs
        (
            {"object": "list", "data": [{**vllm_entry("/a"), "id": "a"}, {**vllm_entry("/b"), "id": "b"}]},
            200,
        ),  # not listed
        (["not", "an", "object"], 200),  # a proxy's odd body
    ],
)
def test_a_listing_that_cannot_be_used_is_unseen(servers, listing, status):
    server = _serve(servers, listing, "x", status=status)
    engine = OpenAIEngine("judge", server.url)
    assert engine.fingerprint()["server"] == "unseen" and engine.server_note


def test_a_down_server_is_unseen():
    engine = OpenAIEngine("judge", "http://127.0.0.1:9/v1", timeout=2)
    assert engine.fingerprint()["server"] == "unseen" and "ConnectError" in engine.server_note


def test_revision_pins_the_fingerprint_without_asking(servers):
    server = _serve(servers, {"object": "list", "data": [vllm_entry("/m")]}, "x")
    engine = OpenAIEngine("judge", server.url, revision="my-judge-2026-12")
    assert engine.fingerprint() == {"backend": "openai", "model": "judge", "revision": "my-judge-2026-12"}
    engine.run([_ask()])
    assert server.gets == 0


def test_endpoints_serving_different_models_are_all_in_the_fingerprint(servers):
    one = _serve(servers, {"object": "list", "data": [vllm_entry("/a")]}, "x")
    two = _serve(servers, {"object": "list", "data": [vllm_entry("/b")]}, "y")
    both = OpenAIEngine("judge", f"{one.url},{two.url}").fingerprint()["server"]
    assert sorted(entry["root"] for entry in both) == ["/a", "/b"]
    same = _serve(servers, {"object": "list", "data": [vllm_entry("/a")]}, "z")
    assert OpenAIEngine("judge", f"{one.url},{same.url}").fingerprint()["server"]["root"] == "/a"


def test_system_fingerprints_are_counted(servers):
    server = _serve(servers, {"object": "list", "data": [vllm_entry("/m")]}, "x", system_fingerprint="b4567-abc")
    engine = OpenAIEngine("judge", server.url)
    engine.run([_ask("a"), _ask("b")])
    assert engine.system_fingerprints == {"b4567-abc": 2}


def test_the_key_is_never_kept(servers, monkeypatch):
    server = _serve(servers, {"error": "bad key sk-secret-123"}, "x", status=401)
    monkeypatch.setenv("CAPBENCH_TEST_KEY", "sk-secret-123")
    engine = OpenAIEngine("judge", server.url, api_key_env="CAPBENCH_TEST_KEY")
    fingerprint = engine.fingerprint()
    assert fingerprint["server"] == "unseen" and "401" in engine.server_note
    for shown in (json.dumps(fingerprint), json.dumps(vars(engine), default=str)):
        assert "sk-secret-123" not in shown


# ---------------------------------------------------------------- the preflight check


def _eval_with(url: str, tmp_path, *more: str):
    from click.testing import CliRunner

    from capbench.cli import main

    argv = ["eval", "--example-captions", "--limit", "1", "--results-dir", str(tmp_path / "res"),
            "--judge", "openai:judge", "--judge-base-url", url, "--answer-mode", "letter", *more]  # fmt: skip
    return CliRunner().invoke(main, argv)


def test_an_unreachable_judge_is_named_before_any_work(tmp_path):
    result = _eval_with("http://127.0.0.1:9/v1", tmp_path, "--judge-opt", "max_retries=0")
    assert result.exit_code == 1, result.output
    [line] = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert "openai:judge at http://127.0.0.1:9/v1 cannot judge: ConnectError" in line
    assert "start the server, or fix --judge-base-url" in line
    assert not (tmp_path / "res").exists()  # nothing was judged or written


def test_a_model_the_server_does_not_serve_is_named(servers, tmp_path):
    listing = {"object": "list", "data": [vllm_entry("/a") | {"id": "qwen"}, vllm_entry("/b") | {"id": "llama"}]}
    server = _serve(servers, listing, "x")
    result = _eval_with(server.url, tmp_path)
    assert result.exit_code == 1
    assert "does not list 'judge' (it serves: llama, qwen)" in result.output and "fix the model name" in result.output
    assert not (tmp_path / "res").exists()


def test_a_refused_key_is_named_and_a_server_without_models_passes(servers, tmp_path):
    refused = _serve(servers, {"error": "bad key"}, "x", status=401)
    with pytest.raises(
        EngineError,
        match=r"cannot judge: HTTP 401 Unauthorized from http:.*/models; set the API key in \$OPENAI_API_KEY",
    ):
        OpenAIEngine("judge", refused.url).check()
    silent = _serve(servers, {"error": "no"}, "x", status=501)
    OpenAIEngine("judge", silent.url).check()  # its first replies will tell
    pinned = _serve(servers, {"object": "list", "data": [vllm_entry("/m")]}, "x")
    OpenAIEngine("judge", pinned.url, revision="mine").check()
    assert pinned.gets == 1  # with revision= the fingerprint does not ask, the check does
