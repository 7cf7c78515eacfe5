"""``capbench eval`` against an OpenAI-compatible judge on 127.0.0.1 that fails 30% of its requests.

The judge is a stdlib HTTP server in a thread. Its replies depend on the request's messages
only, and its faults follow a seeded schedule keyed by (request content, attempt number), so
which requests fail, and how, does not depend on the order concurrent requests arrive in.
The six kinds of fault: HTTP 500 (whose message echoes the Authorization header), HTTP 429
with ``Retry-After`` 0 or 1, a reply slower than the client's timeout, a connection cut before
or in the middle of the reply, malformed JSON (cut short, or JSON that is not an object) and an
empty body (both with status 200). A request's first ``FAULTY_ATTEMPTS`` attempts may fail; later ones never
do, so a client with enough retries gets every answer.

Checked: the run finishes; each failure is retried (the server sees faults, then exactly one
answer, for each request) or, when retries run out, counted as a failed question with its
error and never scored; every scored question matches a clean run's exactly; the server's
request count equals the engine's HTTP calls and its answers plus its injected faults, and its
answers equal the judge calls the run reports as successful; ``Retry-After: 1`` is waited out;
the API key reaches the server but no file or output (echoed errors are masked).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from capbench import build
from capbench.cli import main
from capbench.engines import EngineSpec, build_engine
from capbench.metrics.captionqa import aggregate

pytestmark = [pytest.mark.engine, pytest.mark.cli]

CAPTIONS = Path(__file__).resolve().parents[1] / "capbench" / "data" / "mini" / "captions" / "short.jsonl"
KINDS = ("http_500", "http_429", "timeout", "cut", "malformed_json", "empty_body")
FAULT_RATE = 0.3
#: Attempts of one request that may fail; with max_retries >= this, every request gets its answer.
FAULTY_ATTEMPTS = 3
SEED = 20240517
#: The client's timeout; the server's slow replies take longer, its answers far less.
CLIENT_TIMEOUT = 2.0
SLOW_REPLY = CLIENT_TIMEOUT + 0.5
KEY_ENV = "CAPBENCH_FAULT_TEST_KEY"
FAKE_KEY = "sk-fault-test-5d8e0c"  # a made-up key, never a real one
#: What the engine's error message says after each kind of fault.
ERROR_WORDS = {
    "http_500": "HTTP 500",
    "http_429": "HTTP 429",
    "timeout": "ReadTimeout",
    "cut": "RemoteProtocolError",
    "malformed_json": "is not a JSON object",
    "empty_body": "is not a JSON object",
}


def request_key(messages: list[dict[str, Any]]) -> str:
    """Name a request by its messages: retries of one request share the key, other requests do not."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


def planned_fault(key: str, attempt: int) -> str | None:
    """Return the fault the server injects into ``attempt`` (0-based) of request ``key``, or None."""
    if attempt >= FAULTY_ATTEMPTS:
        return None
    rng = random.Random(f"{SEED}:{key}:{attempt}")
    return rng.choice(KINDS) if rng.random() < FAULT_RATE else None


def answer(key: str, prompt: str) -> str:
    """Pick one of the letters the prompt offers by the request's hash: stable, and a mix of right and wrong."""
    letters = re.findall(r"^([A-Z])\. ", prompt, re.M)
    assert letters, f"no options in the prompt: {prompt[-300:]!r}"
    return letters[int(key[:8], 16) % len(letters)]


class _Server(ThreadingHTTPServer):
    # http.server listens with a backlog of 5: a burst of 16 connections overflows it and the kernel
    # resets some, failures the schedule did not plan.
    request_queue_size = 64
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: a handler writing to a client that gave up after its timeout fails, as expected."""


class FaultyJudge:
    """An OpenAI-compatible chat server that injects the planned faults (or none) and logs every attempt."""

    def __init__(self, faulty: bool) -> None:
        self.faulty = faulty
        #: Per request key, each attempt's outcome ("ok" or a fault kind) and arrival time, in order.
        self.attempts: dict[str, list[tuple[str, float]]] = {}
        self.authorizations: set[str] = set()
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def outcomes(self) -> Counter[str]:
        """Count the attempts by outcome over all requests."""
        return Counter(kind for log in self.attempts.values() for kind, _ in log)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/chat/completions", self.path
                key = request_key(body["messages"])
                with judge.lock:
                    log = judge.attempts.setdefault(key, [])
                    kind = planned_fault(key, len(log)) if judge.faulty else None
                    log.append((kind or "ok", time.monotonic()))
                    judge.authorizations.add(self.headers.get("Authorization", ""))
                if kind == "timeout":
                    time.sleep(SLOW_REPLY)  # the client has given up by now: say nothing
                elif kind == "cut":
                    # Half the cuts come before the reply, half in the middle of its body.
                    if int(key[8:10], 16) % 2:
                        self.send_response(200)
                        self.send_header("Content-Length", "1000")
                        self.end_headers()
                        self.wfile.write(b'{"choices": [')
                    self.close_connection = True  # http.server closes the socket once the handler returns
                elif kind == "http_500":
                    # The error echoes the key, as careless proxies do: the engine must mask it.
                    detail = f"internal error (Authorization: {self.headers.get('Authorization')})"
                    self._send(500, json.dumps({"error": {"message": detail}}).encode())
                elif kind == "http_429":
                    # Mostly "now", sometimes a second: the second case shows Retry-After is honoured.
                    wait = "1" if len(log) > 1 else "0"
                    self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": wait})
                elif kind == "malformed_json":
                    # Half are cut short, half are JSON but not an object (a proxy's null or list).
                    cut_short = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "A'
                    self._send(200, b'["upstream", null]' if int(key[10:12], 16) % 2 else cut_short)
                elif kind == "empty_body":
                    self._send(200, b"")
                else:
                    content = answer(key, body["messages"][-1]["content"])
                    self._send(200, json.dumps(completion(body["model"], content)).encode())

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    @contextmanager
    def serving(self) -> Iterator[FaultyJudge]:
        """Serve from a daemon thread until the block ends."""
        thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join()


def completion(model: str, content: str) -> dict[str, Any]:
    """Return a chat completion body with one choice."""
    return {
        "id": "faulty-judge",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101},
    }


def run_eval(judge: FaultyJudge, folder: Path, max_retries: int) -> tuple[dict[str, Any], str, int]:
    """Run ``capbench eval`` with CaptionQA (letter answers) on capbench-mini.

    Returns:
        The ``--json`` report, everything the command printed, and the HTTP calls the engine sent.
    """
    args = [
        "eval", "-b", "mini", "-c", str(CAPTIONS), "--metrics", "captionqa", "--answer-mode", "letter",
        "--judge", "openai:faulty-judge", "--judge-base-url", judge.url,
        "--judge-opt", f"timeout={CLIENT_TIMEOUT}", "--judge-opt", f"max_retries={max_retries}",
        "--judge-opt", "backoff=0.01", "--judge-opt", "backoff_cap=0.05", "--judge-opt", f"api_key_env={KEY_ENV}",
        "--judge-opt", "concurrency=16", "--batch-size", "18", "--no-cache", "--results-dir", str(folder / "results"),
        "--json",
    ]  # fmt: skip
    env = {"CAPBENCH_HOME": str(folder / "home"), KEY_ENV: FAKE_KEY, "COLUMNS": "200"}
    built: list[Any] = []

    def keep(spec: EngineSpec) -> Any:  # the engine counts the HTTP calls it sent
        built.append(build_engine(spec))
        return built[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "build_engine", keep)
        result = CliRunner(env=env).invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert judge.authorizations == {f"Bearer {FAKE_KEY}"}
    [engine] = built
    return json.loads(result.stdout), result.output, engine.calls_per_endpoint.total()


def question_records(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Read the per-question records a run wrote, by (sample id, question id)."""
    out = {}
    for line in (folder / "results" / "mini" / "short" / "captionqa.jsonl").read_text().splitlines():
        score = json.loads(line)
        for record in score["details"]["questions"]:
            out[score["sample_id"], record["question_id"]] = record
    return out


def assert_no_key(folder: Path, output: str) -> None:
    """Check that the fake API key is in no file under ``folder`` and not in the command's output."""
    assert FAKE_KEY not in output
    for path in folder.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[tuple[str, str], dict[str, Any]]]:
    """The report and per-question records of a run against the same judge without faults."""
    folder = tmp_path_factory.mktemp("clean")
    judge = FaultyJudge(faulty=False)
    with judge.serving():
        report, _, sent = run_eval(judge, folder, max_retries=0)
    assert judge.outcomes() == Counter(ok=len(judge.attempts)) and sent == len(judge.attempts)
    records = question_records(folder)
    assert len(records) == len(judge.attempts) == report["runs"][0]["judge_calls"]
    assert {r["status"] for r in records.values()} >= {"correct", "wrong"}
    return report, records


def test_a_faulty_judge_gives_the_clean_scores(tmp_path: Path, clean) -> None:
    clean_report, clean_records = clean
    judge = FaultyJudge(faulty=True)
    with judge.serving():
        report, output, sent = run_eval(judge, tmp_path, max_retries=FAULTY_ATTEMPTS)
    outcomes = judge.outcomes()
    faults = sum(n for kind, n in outcomes.items() if kind != "ok")
    print("injected faults:", dict(outcomes))
    assert set(KINDS) <= set(outcomes), outcomes
    assert 0.2 < faults / outcomes.total() < 0.4, outcomes
    # Every request was retried until answered, then not again: faults, then one "ok".
    for log in judge.attempts.values():
        kinds = [kind for kind, _ in log]
        assert kinds[-1] == "ok" and "ok" not in kinds[:-1], kinds
    # A 429 after the first attempt says "Retry-After: 1": the next attempt came no sooner.
    waits = [
        log[n + 1][1] - at
        for log in judge.attempts.values()
        for n, (kind, at) in enumerate(log[:-1])
        if kind == "http_429" and n > 0
    ]
    assert waits and min(waits) >= 1.0, waits
    [run] = report["runs"]
    assert run["judge_calls"] == len(judge.attempts) == outcomes["ok"] == len(clean_records)
    # Nothing dropped: the engine's HTTP calls are the server's requests, its answers plus its faults.
    assert run["failures"] == 0 and sent == outcomes.total() == outcomes["ok"] + faults
    assert question_records(tmp_path) == clean_records
    assert run["metrics"] == clean_report["runs"][0]["metrics"]
    assert_no_key(tmp_path, output)


def test_requests_out_of_retries_are_counted_not_scored(tmp_path: Path, clean) -> None:
    _, clean_records = clean
    judge = FaultyJudge(faulty=True)
    with judge.serving():
        report, output, sent = run_eval(judge, tmp_path, max_retries=1)
    # Two attempts per request: both failed (a failed question) or an answer came within two.
    given_up = {}
    for key, log in judge.attempts.items():
        kinds = [kind for kind, _ in log]
        assert len(kinds) <= 2 and "ok" not in kinds[:-1], kinds
        assert kinds[-1] == "ok" or len(kinds) == 2, kinds
        if kinds[-1] != "ok":
            given_up[key] = kinds[-1]
    print("given up after:", Counter(given_up.values()))
    assert given_up, "the schedule should exhaust two attempts of some request"
    [run] = report["runs"]
    outcomes = judge.outcomes()
    assert run["judge_calls"] == len(judge.attempts) == len(clean_records)
    assert run["failures"] == len(given_up) and outcomes["ok"] == run["judge_calls"] - run["failures"]
    assert sent == outcomes.total()
    records = question_records(tmp_path)
    failed = {k: r for k, r in records.items() if r["status"] == "failed"}
    assert len(failed) == len(given_up)
    for key, record in records.items():
        if key in failed:
            assert record["score"] is None and record["reply"] is None and record["error"].startswith("openai: ")
        else:
            assert record == clean_records[key]
    # Each failed question's error names the fault its last attempt met.
    assert Counter(ERROR_WORDS[k] for k in given_up.values()) == Counter(
        next(w for w in set(ERROR_WORDS.values()) if w in r["error"]) for r in failed.values()
    )
    # A server error that echoes the key reaches the records masked.
    echoed = [r["error"] for r in failed.values() if "HTTP 500" in r["error"]]
    assert echoed and all("Bearer ***" in e for e in echoed), echoed
    # Failed questions are counted, and left out of the scores rather than counted as wrong.
    summary = run["metrics"]["captionqa"]
    assert run["unscored"] == {"captionqa": len(failed)}
    assert (summary["questions"], summary["failed"]) == (len(records), len(failed))
    assert summary == aggregate([*(r for k, r in clean_records.items() if k not in failed), *failed.values()])
    as_wrong = [{**r, "status": "wrong", "score": 0.0} for r in failed.values()]
    assert summary["score"] > aggregate([*(r for k, r in clean_records.items() if k not in failed), *as_wrong])["score"]
    assert_no_key(tmp_path, output)
