"""The reward service (`capbench serve`): the real app under uvicorn on 127.0.0.1, talked to over HTTP with httpx.

Judges are test doubles registered by name (the oracle of capbench-mini, scripted replies, a gate
that holds a batch, a judge that fails on cue) or a loopback OpenAI-compatible server.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from click.testing import CliRunner
from conftest import ScriptedEngine, one_line_error
from oracle_engine import OracleEngine

import capbench
from capbench import ConfigError, engines
from capbench.engines.base import Response
from capbench.records import read_caption_file
from capbench.serve import Running, ServeConfig, Service, prepare
from capbench.serve.openrlhf import _label, generated

TOKEN = "t0ken-for-serve-tests-7d41"
MINI = capbench.load_benchmark("mini")
CAPTIONS = {name: read_caption_file(path).captions for name, path in MINI.example_captions.items()}
QUESTION = {"question": "What is on the mat?", "choices": ["a cat", "a dog", "a bird"], "answer": "a cat"}


def _png(size: tuple[int, int] = (8, 6)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(out, format="PNG")
    return out.getvalue()


PNG = _png()


# --- judges ----------------------------------------------------------------------------------------


class ParityJudge(ScriptedEngine):
    """``parity:any``: a letter chosen by the request's length, so different captions get different answers."""

    supports_loglik = False

    def __init__(self, model: str = "any") -> None:
        super().__init__(lambda request: "ABC"[len(request.messages[-1].joined_text()) % 3], name=model)


class CountingJudge(ParityJudge):
    """``counting:any``: the parity judge, noting the size of every engine batch that reaches it."""

    runs: ClassVar[list[int]] = []

    def run(self, requests, on_result=None):
        CountingJudge.runs.append(len(requests))
        return super().run(requests, on_result)


class GatedJudge(ParityJudge):
    """``gated:any``: holds every batch until the test opens the gate."""

    gate: ClassVar[threading.Event] = threading.Event()
    entered: ClassVar[threading.Event] = threading.Event()

    def run(self, requests, on_result=None):
        GatedJudge.entered.set()
        assert GatedJudge.gate.wait(60), "the test never opened the gate"
        return super().run(requests, on_result)


class FlakyJudge(ParityJudge):
    """``flaky:any``: a failed call for captions saying FAIL, a crash for captions saying CRASH."""

    def __init__(self, model: str = "any") -> None:
        super().__init__(model)
        parity = self.reply
        self.reply = lambda r: Response(error="HTTP 500: judge down") if "FAIL" in _text(r) else parity(r)

    def run(self, requests, on_result=None):
        if any("CRASH" in _text(r) for r in requests):
            raise RuntimeError("judge crashed")
        return super().run(requests, on_result)


def _text(request) -> str:
    return request.messages[-1].joined_text()


class SeeingOracle(OracleEngine):
    """``seeing:truth``: the oracle as a vision judge, keeping every request it is sent."""

    requests: ClassVar[list] = []

    def run(self, requests, on_result=None):
        SeeingOracle.requests.extend(requests)
        return super().run(requests, on_result)


@pytest.fixture(autouse=True)
def registered_judges(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, cls in (("parity", "ParityJudge"), ("counting", "CountingJudge"), ("gated", "GatedJudge"),
                      ("flaky", "FlakyJudge")):  # fmt: skip
        monkeypatch.setitem(engines.ENGINES, name, ("test_serve", cls, "test engine"))
    monkeypatch.setitem(engines.ENGINES, "oracle", ("oracle_engine", "OracleEngine", "test engine"))
    monkeypatch.setitem(engines.ENGINES, "seeing", ("test_serve", "SeeingOracle", "test engine"))
    monkeypatch.setattr(SeeingOracle, "requests", [])
    monkeypatch.setitem(engines.ENGINES, "scripted", ("conftest", "FixedReplyEngine", "test engine"))
    monkeypatch.setattr(CountingJudge, "runs", [])
    monkeypatch.setattr(GatedJudge, "gate", threading.Event())
    monkeypatch.setattr(GatedJudge, "entered", threading.Event())


@contextmanager
def serving(**settings: Any) -> Iterator[tuple[Running, list[str]]]:
    """The real service on 127.0.0.1 and a free port; yields it and its log lines."""
    lines: list[str] = []
    with Running(ServeConfig(port=0, **settings), log=lines.append) as running:
        yield running, lines


def _qa_item(caption: str, **more: Any) -> dict[str, Any]:
    return {"caption": caption, "reference_caption": "A cat sits on a red mat.", "questions": [QUESTION], **more}


def _post(url: str, body: Any, path: str = "/v1/score", **kwargs: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60, **kwargs)


# --- the numbers: capbench eval's, per item ------------------------------------------------------


def test_fact_rewards_equal_capbench_evaluate_per_sample(tmp_path: Path):
    ids = [s.id for s in MINI.samples[:4]]
    sets = {name: {i: CAPTIONS[name][i] for i in ids} for name in ("detailed", "planted_errors")}
    expected = capbench.evaluate(
        benchmark="mini", captions=sets, metrics=["balcap", "dcscore"], judge="oracle:truth", results_dir=tmp_path
    )
    by_sample = {sample.id: sample for sample in MINI.samples}
    items = [{"id": f"{n}/{i}", "sample_id": i, "caption": c} for n, s in sets.items() for i, c in s.items()]
    # the same items again, bringing their own references instead of a sample id
    items += [
        {"id": f"own/{i}", "caption": sets["detailed"][i], "reference_caption": by_sample[i].reference_caption,
         "reference_facts": list(by_sample[i].reference_facts)}
        for i in ids
    ]  # fmt: skip
    rewards = ["balcap_precision", "balcap_recall", "balcap_linguistic", "dcscore"]
    with serving(judge="oracle:truth", benchmark="mini") as (running, _):
        answer = _post(running.url, {"rewards": rewards, "metrics": ["balcap", "dcscore"], "items": items})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["id"] for r in results] == [item["id"] for item in items]  # one result per item, in order
    for result in results:
        name, sample_id = result["id"].split("/")
        record = next(s for s in expected["detailed" if name == "own" else name].samples if s.sample_id == sample_id)
        balcap, dcscore = record.scores["balcap"].values, record.scores["dcscore"].values
        assert result["errors"] == {}
        assert result["rewards"] == pytest.approx(
            {"balcap_precision": balcap["precision"], "balcap_recall": balcap["recall"],
             "balcap_linguistic": balcap["linguistic"], "dcscore": dcscore["dcscore"] / 100}
        )  # fmt: skip
        assert result["metrics"] == {"balcap": pytest.approx(dict(balcap)), "dcscore": pytest.approx(dict(dcscore))}


def test_qa_rewards_and_metrics_equal_capbench_evaluate(tmp_path: Path):
    ids = [s.id for s in MINI.samples[:5]]
    captions = {i: CAPTIONS["detailed"][i] for i in ids}
    expected = capbench.evaluate(
        benchmark="mini", captions={"x": captions}, metrics=["captionqa", "caprl"], judge="parity:any",
        caprl_samples=5, results_dir=tmp_path,
    )["x"]  # fmt: skip
    with serving(judge="parity:any", benchmark="mini", caprl_samples=5) as (running, _):
        body = {"rewards": ["caprl_qa_utility", "captionqa"], "metrics": ["captionqa"],
                "items": [{"id": i, "sample_id": i, "caption": c} for i, c in captions.items()]}  # fmt: skip
        results = _post(running.url, body).json()["results"]
        # the same captions bringing their own references: the item's id names the sample, as capbench-rl's
        # in-process rewards name a rollout's, so the draws and option orders are the same
        by_sample = {sample.id: sample for sample in MINI.samples}
        own = [{"id": i, "caption": c, "reference_caption": by_sample[i].reference_caption,
                "domain": by_sample[i].domain, "questions": [q.to_dict() for q in by_sample[i].questions]}
               for i, c in captions.items()]  # fmt: skip
        assert _post(running.url, {**body, "items": own}).json()["results"] == results
    utilities = []
    for result, record in zip(results, expected.samples, strict=True):
        assert result["id"] == record.sample_id
        caprl, captionqa = record.scores["caprl"].values, record.scores["captionqa"].values
        assert result["rewards"] == pytest.approx(
            {"caprl_qa_utility": caprl["utility"] / 100, "captionqa": captionqa["score"] / 100}
        )
        assert result["metrics"]["captionqa"] == pytest.approx(dict(captionqa))
        utilities.append(result["rewards"]["caprl_qa_utility"])
    assert len(set(utilities)) > 1  # the captions score differently, so the comparison has something to compare


# --- batching, backpressure, time limits, the cache ----------------------------------------------


def test_concurrent_requests_within_the_window_are_judged_in_one_engine_batch():
    captions = [CAPTIONS[name]["astronaut"] for name in ("detailed", "short", "planted_errors")]
    answers: dict[int, httpx.Response] = {}
    with serving(judge="counting:any", caprl_samples=4, batch_window_ms=1500) as (running, _):
        start = threading.Barrier(3)

        def send(k: int) -> None:
            start.wait()
            answers[k] = _post(running.url, {"rewards": ["caprl_qa_utility"], "items": [_qa_item(captions[k])]})

        threads = [threading.Thread(target=send, args=(k,)) for k in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        metrics = httpx.get(running.url + "/metrics").text
    assert CountingJudge.runs == [3 * 4]  # one engine batch: the three requests' 4 draws each
    assert "capbench_serve_batches_total 1" in metrics
    shared = [answers[k].json() for k in range(3)]
    assert all(a["results"][0]["rewards"]["caprl_qa_utility"] is not None for a in shared)
    assert sum(a["usage"]["judge_calls"] for a in shared) == 12  # the batch's usage, shared out by items
    # the same three, one at a time without a window: three engine batches, the same numbers
    CountingJudge.runs.clear()
    with serving(judge="counting:any", caprl_samples=4, batch_window_ms=0, cache=False) as (running, _):
        alone = [_post(running.url, {"rewards": ["caprl_qa_utility"], "items": [_qa_item(c)]}).json() for c in captions]
    assert CountingJudge.runs == [4, 4, 4]
    assert [a["results"] for a in alone] == [a["results"] for a in shared]


def test_a_full_queue_answers_429_with_retry_after_and_the_queued_work_finishes():
    answers: dict[str, httpx.Response] = {}
    with serving(judge="gated:any", max_queue=3, max_items=2, batch_window_ms=0, max_batches=1) as (running, _):

        def send(name: str, n: int) -> None:
            body = {"rewards": ["caprl_qa_utility"], "items": [_qa_item(f"Caption {name}{k}.") for k in range(n)]}
            answers[name] = _post(running.url, body)

        first = threading.Thread(target=send, args=("a", 1))
        first.start()
        assert GatedJudge.entered.wait(30)  # the first request is being judged, its item out of the queue
        second = threading.Thread(target=send, args=("b", 2))
        second.start()
        _wait_for(lambda: "capbench_serve_queue_depth 2" in httpx.get(running.url + "/metrics").text)
        full = _post(running.url, {"rewards": ["caprl_qa_utility"], "items": [_qa_item("One more.")]})
        GatedJudge.gate.set()
        first.join(30)
        second.join(30)
    assert full.status_code == 429
    assert int(full.headers["Retry-After"]) >= 1
    detail = full.json()["detail"]
    assert "the queue is full (2 items waiting and 1 being judged, at most 3 in all: --max-queue)" in detail
    assert answers["a"].status_code == answers["b"].status_code == 200
    assert len(answers["b"].json()["results"]) == 2


def test_a_request_past_its_timeout_gets_504_and_its_judgments_are_cached():
    body = {"rewards": ["caprl_qa_utility"], "items": [_qa_item("A cat on a mat.")]}
    with serving(judge="gated:any", timeout=0.5, caprl_samples=3) as (running, _):
        late = _post(running.url, body)
        GatedJudge.gate.set()
        _wait_for(lambda: "capbench_serve_batches_total 1" in httpx.get(running.url + "/metrics").text)
        again = _post(running.url, body)
    assert late.status_code == 504
    assert "--timeout 0.5 s" in late.json()["detail"] and "cached" in late.json()["detail"]
    assert again.status_code == 200
    assert again.json()["usage"]["judge_calls"] == 0 and again.json()["usage"]["cache_hits"] == 3


def test_the_same_items_again_are_answered_from_the_judge_cache():
    body = {"rewards": ["caprl_qa_utility", "captionqa"], "items": [_qa_item("A cat on a mat."), _qa_item("A dog.")]}
    with serving(judge="parity:any", caprl_samples=3) as (running, _):
        first = _post(running.url, body).json()
        second = _post(running.url, body).json()
    assert first["usage"]["judge_calls"] > 0 and first["usage"]["cache_hits"] == 0
    assert second["usage"]["judge_calls"] == 0
    assert second["usage"]["cache_hits"] == first["usage"]["judge_calls"]
    assert second["results"] == first["results"]
    assert second["usage"]["seconds"] >= 0 and second["usage"]["failures"] == 0


# --- failures: null with a reason, never 0; the service keeps serving ----------------------------


def test_a_judge_failure_is_null_with_its_reason_never_zero_and_the_service_keeps_serving():
    with serving(judge="flaky:any", caprl_samples=2) as (running, lines):
        two = [_qa_item("A cat. FAIL"), _qa_item("A cat on a mat.")]
        failed = _post(running.url, {"rewards": ["caprl_qa_utility"], "items": two}).json()
        crashed = _post(
            running.url, {"rewards": ["caprl_qa_utility"], "items": [_qa_item("CRASH"), _qa_item("A bird.")]}
        )
        after = _post(running.url, {"rewards": ["caprl_qa_utility"], "items": [_qa_item("A dog on a mat.")]})
        metrics = httpx.get(running.url + "/metrics").text
    bad, good = failed["results"]
    assert bad["rewards"] == {"caprl_qa_utility": None}
    assert "HTTP 500: judge down" in bad["errors"]["caprl_qa_utility"]
    assert isinstance(good["rewards"]["caprl_qa_utility"], float) and good["errors"] == {}
    assert failed["usage"]["failures"] == 2  # the failing caption's two draws
    assert crashed.status_code == 200
    assert crashed.json()["results"][0]["rewards"] == {"caprl_qa_utility": None}
    assert "RuntimeError: judge crashed" in crashed.json()["results"][0]["errors"]["caprl_qa_utility"]
    assert crashed.json()["results"][1]["rewards"]["caprl_qa_utility"] is not None  # the crash failed only its item
    assert after.status_code == 200 and after.json()["results"][0]["rewards"]["caprl_qa_utility"] is not None
    assert "capbench_serve_unscored_total 2" in metrics
    assert not any('"status": 500' in line for line in lines)


#: Captions a policy may write that the judges are not sent: each a named failure of its item, the rest scored.
UNSCORABLE = [
    ("caption empty", "  \n", "the caption is empty: not scored"),
    ("caption with a NUL", "A cat\u0000.", "the caption holds a NUL character"),
]


@pytest.mark.parametrize(("kind", "caption", "reason"), UNSCORABLE, ids=[u[0] for u in UNSCORABLE])
def test_a_caption_no_judge_can_score_fails_its_item_alone(kind: str, caption: str, reason: str):
    with serving(judge="parity:any", caprl_samples=2) as (running, _):
        items = [_qa_item("A cat on a mat."), _qa_item(caption, id="odd"), _qa_item("A dog on a mat.")]
        reply = _post(running.url, {"rewards": ["caprl_qa_utility"], "metrics": ["caprl"], "items": items})
    assert reply.status_code == 200
    first, odd, last = reply.json()["results"]
    assert odd["id"] == "odd" and odd["rewards"] == {"caprl_qa_utility": None} and odd["metrics"] == {"caprl": None}
    assert reason in odd["errors"]["caprl_qa_utility"] and reason in odd["errors"]["caprl"]
    assert first["rewards"]["caprl_qa_utility"] is not None and last["rewards"]["caprl_qa_utility"] is not None


# --- access, logs, metrics, stopping ---------------------------------------------------------------


def test_a_token_is_required_when_set_and_never_logged(monkeypatch: pytest.MonkeyPatch, capfd):
    monkeypatch.setenv("CAPBENCH_SERVE_TOKEN", TOKEN)
    body = {"rewards": ["caprl_qa_utility"], "items": [_qa_item("A cat on a mat.")]}
    with serving(judge="parity:any") as (running, lines):
        health = httpx.get(running.url + "/health")
        missing = _post(running.url, body)
        wrong = _post(running.url, body, headers={"Authorization": "Bearer not-the-token"})
        right = _post(running.url, body, headers={"Authorization": f"Bearer {TOKEN}"})
        metrics_closed = httpx.get(running.url + "/metrics")
        metrics_open = httpx.get(running.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        openrlhf = _post(running.url, {"query": ["p: A cat."], "prompts": ["p:"], "labels": [json.dumps(
            {"reference_caption": "A cat sits on a mat.", "questions": [QUESTION]})]},
            path=f"/openrlhf/caprl_qa_utility?token={TOKEN}")  # fmt: skip
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert missing.status_code == wrong.status_code == metrics_closed.status_code == 401
    assert "needs a bearer token" in missing.json()["detail"] and missing.headers["WWW-Authenticate"] == "Bearer"
    assert wrong.json()["detail"] == "bearer token not accepted"
    assert right.status_code == metrics_open.status_code == openrlhf.status_code == 200
    out, err = capfd.readouterr()
    assert lines and all(TOKEN not in line for line in lines)
    assert TOKEN not in out + err
    logged = [json.loads(line) for line in lines if '"path"' in line]
    assert {"method", "path", "status", "items", "seconds", "client"} <= set(logged[0])
    assert [entry["status"] for entry in logged] == [200, 401, 401, 200, 401, 200, 200]
    assert all("A cat on a mat." not in line for line in lines)


def test_metrics_are_prometheus_text(capfd):
    with serving(judge="parity:any") as (running, _):
        _post(running.url, {"rewards": ["caprl_qa_utility"], "items": [_qa_item("A cat.")]})
        _post(running.url, {"rewards": ["bleu"], "items": [_qa_item("A cat.")]})
        response = httpx.get(running.url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    label = r'[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"'
    sample = re.compile(
        rf"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{{{label}(,{label})*\}})? (-?[0-9.]+(e[-+]?[0-9]+)?|NaN|[-+]Inf)$"
    )
    values = {}
    for line in response.text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) capbench_serve_\w+ ", line), line
            continue
        assert sample.match(line), line
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    assert values['capbench_serve_requests_total{route="/v1/score",status="200"}'] == 1
    assert values['capbench_serve_requests_total{route="/v1/score",status="400"}'] == 1
    assert values["capbench_serve_items_total"] == 1 and values["capbench_serve_judge_calls_total"] == 8
    assert values["capbench_serve_queue_depth"] == 0 and values["capbench_serve_cache_hits_total"] == 0
    for q in ("0.5", "0.9", "0.99"):
        assert values[f'capbench_serve_request_seconds{{quantile="{q}"}}'] > 0
    assert values["capbench_serve_request_seconds_count"] == 2


def test_sigterm_stops_gracefully_after_finishing_the_request_in_flight(tmp_path: Path):
    from loopback_judge import LoopbackJudge

    with LoopbackJudge(delay=2.0) as judge:
        command = [sys.executable, "-m", "capbench", "serve", "--judge", "openai:loopback", "--judge-base-url",
                   judge.base_url, "--port", "0", "--caprl-samples", "1", "--answer-mode", "letter"]  # fmt: skip
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
        try:
            ready = _ready_line(proc)
            answer: dict[str, httpx.Response] = {}
            body = {"rewards": ["caprl_qa_utility"], "items": [_qa_item("A cat on a mat.")]}
            sender = threading.Thread(target=lambda: answer.update(r=_post(ready["url"], body)))
            sender.start()
            _wait_for(lambda: sum(judge.received.values()) > 0)  # the request is with the judge
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.ConnectError):  # no longer accepting
                httpx.get(ready["url"] + "/health", timeout=5)
            sender.join(30)
            code = proc.wait(30)
        finally:
            proc.kill()
        rest = proc.stderr.read()
    assert answer["r"].status_code == 200, answer["r"].text
    assert answer["r"].json()["results"][0]["rewards"]["caprl_qa_utility"] is not None
    assert code == 0, rest
    events = [json.loads(line) for line in rest.splitlines() if line.startswith("{")]
    assert events[0]["path"] == "/v1/score" and events[0]["status"] == 200
    assert events[-1]["event"] == "stopped"


def _ready_line(proc: subprocess.Popen) -> dict[str, Any]:
    """The service's start-up line (anything it printed before is skipped)."""
    for _ in range(100):
        line = proc.stderr.readline()
        assert line, f"the service exited before it was ready (status {proc.poll()})"
        if line.startswith("{") and '"event": "ready"' in line:
            return json.loads(line)
    raise AssertionError("no ready line in the service's first 100 lines")


# --- images ---------------------------------------------------------------------------------------


@contextmanager
def _image_host(data: bytes) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/cat.png"
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(data) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_images_by_path_url_and_base64_reach_the_vision_judge_by_content(tmp_path: Path, capbench_home: Path):
    import hashlib

    root = tmp_path / "images"
    root.mkdir()
    (root / "cat.png").write_bytes(PNG)
    digest = hashlib.sha256(PNG).hexdigest()
    sample = MINI.samples[0]
    base = {"caption": CAPTIONS["detailed"][sample.id], "reference_facts": list(sample.reference_facts)}
    with _image_host(PNG) as host, serving(judge="oracle:truth", vision_judge="seeing:truth",
                                           images_root=[root]) as (running, _):  # fmt: skip
        images = [{"path": str(root / "cat.png")}, {"path": "cat.png"}, {"url": f"{host}/cat.png"},
                  {"base64": base64.b64encode(PNG).decode(), "format": "png"}]  # fmt: skip
        answer = _post(running.url, {"rewards": ["balcap_precision"], "items": [{**base, "image": i} for i in images]})
        missing = _post(running.url, {"rewards": ["balcap_precision"],
                                      "items": [{**base, "image": {"url": f"{host}/dog.png"}}]})  # fmt: skip
    assert answer.status_code == 200, answer.text
    values = [r["rewards"]["balcap_precision"] for r in answer.json()["results"]]
    assert len(set(values)) == 1 and values[0] is not None
    assert (capbench_home / "serve-images" / f"{digest}.png").read_bytes() == PNG
    seen = {p.image.sha256 for r in SeeingOracle.requests for m in r.messages for p in m.parts if hasattr(p, "image")}
    assert seen == {digest}  # every kind of image reached the vision judge, keyed by its content
    assert missing.status_code == 400 and "answered HTTP 404" in missing.json()["detail"]


# --- OpenRLHF --------------------------------------------------------------------------------------

#: A request of exactly the shape OpenRLHF posts to --remote_rm_url (openrlhf/utils/agent.py,
#: SingleTurnAgentExecutor._fetch_rewards_via_http, OpenRLHF/OpenRLHF at 3c3be62):
#: {"query": [...], "prompts": [...], "labels": [...]}, each query being
#: hf_tokenizer.decode(prompt + response tokens, skip_special_tokens=False). The second is a VLM's:
#: its processor expanded the prompt's one image token into many, so the query does not start with the prompt.
_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
_PROMPT_TEXT = _SYSTEM + "<|im_start|>user\nDescribe this image in detail.<|im_end|>\n<|im_start|>assistant\n"
_VISION = "<|im_start|>user\n<|vision_start|>{pads}<|vision_end|>Describe this image in detail.<|im_end|>\n"
_PROMPT_VLM = _SYSTEM + _VISION.format(pads="<|image_pad|>") + "<|im_start|>assistant\n"
_QUERY_VLM = _SYSTEM + _VISION.format(pads="<|image_pad|>" * 64) + "<|im_start|>assistant\n"


def _openrlhf_request() -> dict[str, Any]:
    astronaut, camera = MINI.samples[0], MINI.samples[1]
    return {
        "query": [
            _PROMPT_TEXT + CAPTIONS["detailed"][astronaut.id] + "<|im_end|>",
            _QUERY_VLM + CAPTIONS["planted_errors"][camera.id] + "<|im_end|><|endoftext|>",
        ],
        "prompts": [_PROMPT_TEXT, _PROMPT_VLM],
        "labels": [
            json.dumps({"sample_id": astronaut.id}),
            json.dumps(
                {"reference_caption": camera.reference_caption, "reference_facts": list(camera.reference_facts)}
            ),
        ],
    }


def test_openrlhf_remote_reward_answers_its_recorded_request_with_the_services_scores():
    request = _openrlhf_request()
    with serving(judge="oracle:truth", benchmark="mini") as (running, _):
        answer = _post(running.url, request, path="/openrlhf/balcap_precision")
        one, two = MINI.samples[0].id, MINI.samples[1].id
        items = [{"sample_id": one, "caption": CAPTIONS["detailed"][one]},
                 {"sample_id": two, "caption": CAPTIONS["planted_errors"][two]}]  # fmt: skip
        direct = _post(running.url, {"rewards": ["balcap_precision"], "items": items}).json()["results"]
    assert answer.status_code == 200, answer.text
    values = [r["rewards"]["balcap_precision"] for r in direct]
    assert answer.json() == {"rewards": values, "scores": values, "extra_logs": {"balcap_precision": values}}
    assert all(isinstance(v, float) for v in values)


def test_openrlhf_reads_the_generated_part_and_plain_labels():
    assert generated(_QUERY_VLM + " A red car. <|im_end|>\n<|endoftext|>", _PROMPT_VLM, 0) == "A red car."
    assert generated("Q: what? A: a car</s>", "Q: what? A:", 0) == "a car"
    assert _label("A red car parked by a wall.", "labels[0]") == {"reference_caption": "A red car parked by a wall."}
    assert _label({"sample_id": "astronaut"}, "labels[0]") == {"sample_id": "astronaut"}
    assert _label(None, "labels[0]") == {}


def test_openrlhf_gets_502_naming_the_failure_never_a_zero(monkeypatch: pytest.MonkeyPatch):
    request = {"query": ["Describe: A cat. FAIL"], "prompts": ["Describe:"],
               "labels": [json.dumps({"reference_caption": "A cat on a mat.", "questions": [QUESTION]})]}  # fmt: skip
    with serving(judge="flaky:any", caprl_samples=2) as (running, _):
        answer = _post(running.url, request, path="/openrlhf/caprl_qa_utility")
    assert answer.status_code == 502
    assert answer.json()["rewards"] == [None] and "HTTP 500: judge down" in answer.json()["errors"][0]
    assert "never sent as 0" in answer.json()["detail"]


# --- settings checked before the server starts ---------------------------------------------------

_REFUSED_BEFORE_START = [
    ("images root that is not a folder", {"images_root": ["/no/such/folder"]}, "--images-root /no/such/folder"),
    ("max items over max queue", {"max_items": 10, "max_queue": 5}, "--max-items 10 is more than --max-queue 5"),
    ("unknown benchmark", {"benchmark": "nosuch"}, "unknown benchmark 'nosuch'"),
    ("unknown judge engine", {"judge": "nosuch:model"}, "nosuch"),
    ("unknown engine option", {"judge": "parity:any", "judge_options": {"temprature": 0}}, "takes no option"),
    ("settings of an unknown metric", {"metric_settings": {"bleu": {}}}, "unknown metric 'bleu'"),
    ("unknown metric setting", {"metric_settings": {"caprl": {"sampels": 3}}}, "has no setting 'sampels'"),
    ("an answer mode that is not one", {"answer_mode": "letters"}, "answer_mode is 'letters'"),
    ("a negative batch window", {"batch_window_ms": -1}, "batch window -1 ms is negative"),
    ("a port out of range", {"port": 70000}, "port 70000 is not a TCP port"),
]


@pytest.mark.parametrize(("settings", "message"), [c[1:] for c in _REFUSED_BEFORE_START],
                         ids=[c[0] for c in _REFUSED_BEFORE_START])  # fmt: skip
def test_a_bad_setting_is_refused_before_anything_loads(settings: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=re.escape(message)):
        prepare(ServeConfig(**{"judge": "parity:any", **settings}))


def test_an_empty_token_variable_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CAPBENCH_SERVE_TOKEN", " ")
    with pytest.raises(ConfigError, match="CAPBENCH_SERVE_TOKEN is set but empty"):
        prepare(ServeConfig(judge="parity:any"))


def test_without_fastapi_the_service_names_its_extra(monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    from capbench.errors import MissingDependencyError
    from capbench.serve import serve

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"'fastapi'.*pip install 'capbench\[serve\]'"):
        serve(ServeConfig(judge="parity:any"))


def test_the_command_names_a_bad_setting_or_a_port_in_use_in_one_line(tmp_path: Path):
    from capbench.cli import main

    result = CliRunner().invoke(main, ["serve", "--judge", "parity:any", "--images-root", str(tmp_path / "none")])
    one_line_error(result, "--images-root", "no such folder")
    with serving(judge="parity:any") as (running, _):
        port = running.url.rsplit(":", 1)[1]
        result = CliRunner().invoke(main, ["serve", "--judge", "parity:any", "--port", port])
    one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "choose another --port")
    assert "serve" in CliRunner().invoke(main, ["--help"]).output


# --- malformed requests: each a 4xx naming the problem, none a 500 --------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One server with a token, a benchmark, an image folder and small limits, for every malformed request."""
    home, root = tmp_path_factory.mktemp("serve-home"), tmp_path_factory.mktemp("serve-images")
    (root / "cat.png").write_bytes(PNG)
    (root / "notes.png").write_text("these are notes, not an image")
    settings = {"judge": "parity:any", "benchmark": "mini", "images_root": [root], "max_items": 4, "max_queue": 8,
                "max_body_mb": 0.05, "caprl_samples": 2, "port": 0}  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:  # only while the service is built: it keeps what it read
        patch.setenv("CAPBENCH_HOME", str(home))
        patch.setenv("CAPBENCH_SERVE_TOKEN", TOKEN)
        patch.setitem(engines.ENGINES, "parity", ("test_serve", "ParityJudge", "test engine"))
        service = Service(prepare(ServeConfig(**settings)))
    with Running(service, log=lambda line: None) as running:
        yield running.url, root


_GOOD = _qa_item("A cat on a mat.")
_BODY = {"rewards": ["caprl_qa_utility"]}
_PROMPT = "Describe the image:"
_LABEL = json.dumps({"reference_caption": "A cat on a mat.", "questions": [QUESTION]})


def _items(*items: Any) -> dict[str, Any]:
    return {**_BODY, "items": list(items)}


def _item(**changes: Any) -> dict[str, Any]:
    return {k: v for k, v in {**_GOOD, **changes}.items() if v is not None}


#: (kind, request, status, words the message holds). A request is a JSON body for POST /v1/score, or a
#: dict with "path", "method", "content", "headers" or "json" keys.
MALFORMED = [
    ("body not JSON", {"content": b'{"rewards": ['}, 400, "body: not JSON"),
    ("body not UTF-8", {"content": b'\xff\xfe{"a": 1}'}, 400, "not UTF-8"),
    ("wrong content type", {"content": b"{}", "headers": {"Content-Type": "text/plain"}}, 415,
     "Content-Type must be application/json, not 'text/plain'"),
    ("no content type", {"content": b"{}", "headers": {"Content-Type": ""}}, 415, "Content-Type"),
    ("body not an object", [_GOOD], 400, "body: expected a JSON object"),
    ("unknown body field", {"reward": ["caprl_qa_utility"], "items": [_GOOD]}, 400, "unknown field 'reward'"),
    ("neither rewards nor metrics", {"items": [_GOOD]}, 400, "give 'rewards' (or 'metrics')"),
    ("rewards not a list", {"rewards": "caprl_qa_utility", "items": [_GOOD]}, 400, "body.rewards must be a list"),
    ("unknown reward", {"rewards": ["bleu"], "items": [_GOOD]}, 400, "unknown reward 'bleu'; the rewards: "),
    ("unknown metric", {"metrics": ["bleu"], "items": [_GOOD]}, 400, "body.metrics: unknown metric 'bleu'"),
    ("reward named twice", {"rewards": ["captionqa", "captionqa"], "items": [_GOOD]}, 400,
     "names reward 'captionqa' twice"),
    ("items missing", _BODY, 400, "'items' is missing"),
    ("items not a list", {**_BODY, "items": _GOOD}, 400, "'items' must be a list of item objects, not an object"),
    ("items empty", _items(), 400, "'items' is empty"),
    ("too many items", _items(*[_GOOD] * 5), 413, "5 items, more than this server takes per request (--max-items 4)"),
    ("body too large", _items(_item(caption="A cat. " * 9000)), 413, "over this server's limit of 0.05 MB"),
    ("item not an object", _items("A cat on a mat."), 400, "items[0]: expected an object with a 'caption'"),
    ("unknown item field", _items(_GOOD, _item(captoin="x")), 400, "items[1]: unknown field 'captoin'"),
    ("caption missing", _items(_item(caption=None)), 400, "items[0].caption is missing"),
    ("caption not a string", _items(_item(caption=42)), 400, "items[0].caption must be a string, not int"),
    ("caption with an unpaired surrogate", {"content": b'{"rewards": ["caprl_qa_utility"], "items": [{"caption": '
     b'"A cat \\ud800", "reference_caption": "r", "questions": []}]}'}, 400,
     "items[0].caption holds an unpaired surrogate"),
    ("id not a string", _items(_item(id=[1])), 400, "items[0].id must be a string"),
    ("image path missing on the server", _items(_item(image={"path": "dog.png"})), 400,
     "items[0].image.path 'dog.png': no such image file on the server"),
    ("image path outside the allowed folders", _items(_item(image={"path": "/etc/hostname"})), 403,
     "items[0].image.path '/etc/hostname' is outside the server's image folders (--images-root"),
    ("image path escaping its folder", _items(_item(image={"path": "../../cat.png"})), 403,
     "outside the server's image folders"),
    ("image file not an image", _items(_item(image={"path": "notes.png"})), 400,
     "items[0].image.path 'notes.png': not an image"),
    ("image with two sources", _items(_item(image={"path": "cat.png", "url": "http://x/cat.png"})), 400,
     "items[0].image must hold exactly one of 'path', 'url' or 'base64'"),
    ("image not an object", _items(_item(image="cat.png")), 400, "items[0].image must be an object"),
    ("bad base64", _items(_item(image={"base64": "not base64!", "format": "png"})), 400,
     "items[0].image.base64 is not valid base64"),
    ("base64 of a truncated image", _items(_item(image={"base64": base64.b64encode(PNG[:40]).decode()})), 400,
     "items[0].image.base64: unreadable or truncated image"),
    ("unknown image format", _items(_item(image={"base64": base64.b64encode(PNG).decode(), "format": "svg"})), 400,
     "items[0].image.format 'svg' is not one of"),
    ("url not http(s)", _items(_item(image={"url": "file:///etc/passwd"})), 400,
     "items[0].image.url 'file:///etc/passwd' is not an http(s) URL"),
    ("url that cannot be reached", _items(_item(image={"url": "http://127.0.0.1:9/cat.png"})), 400,
     "items[0].image.url 'http://127.0.0.1:9/cat.png' could not be downloaded"),
    ("unknown sample_id", _items(_item(sample_id="mars")), 400,
     "items[0].sample_id 'mars' is not a sample of benchmark 'mini'"),
    ("questions not a list", _items(_item(questions="What?")), 400, "items[0].questions must be a list"),
    ("question missing its answer", _items(_item(questions=[{"question": "Q?", "choices": ["a", "b"]}])), 400,
     "items[0].questions[0]: 'answer' is missing"),
    ("answer not among the choices", _items(_item(questions=[{**QUESTION, "answer": "a fish"}])), 400,
     "items[0].questions[0]: question 'q0': answer 'a fish' is not one of its choices"),
    ("question with one choice", _items(_item(questions=[{**QUESTION, "choices": ["a cat"]}])), 400,
     "items[0].questions[0].choices must be a list of at least 2 strings"),
    ("reference_facts not a list", _items(_item(reference_facts="A cat.")), 400,
     "items[0].reference_facts must be a list"),
    ("questions missing for a QA reward", _items(_item(questions=None)), 400,
     "items[0]: reward 'caprl_qa_utility' needs 'questions'"),
    ("reference missing for a fact reward", {"rewards": ["balcap_precision"], "items": [{"caption": "A cat."}]}, 400,
     "items[0]: reward 'balcap_precision' needs a 'reference_caption' or 'reference_facts'"),
    ("item rewards not a subset", _items(_item(rewards=["dcscore"])), 400,
     "items[0].rewards: 'dcscore' is not among the request's rewards (caprl_qa_utility)"),
    ("missing token", {"json": _items(_GOOD), "headers": {"Authorization": None}}, 401,
     "this server needs a bearer token"),
    ("wrong token", {"json": _items(_GOOD), "headers": {"Authorization": "Bearer guess"}}, 401,
     "bearer token not accepted"),
    ("not a bearer token", {"json": _items(_GOOD), "headers": {"Authorization": f"Basic {TOKEN}"}}, 401,
     "the Authorization header must be 'Bearer <token>'"),
    ("GET on the scoring route", {"method": "GET"}, 405, "Method Not Allowed"),
    ("unknown route", {"path": "/v1/scores", "json": _items(_GOOD)}, 404, "Not Found"),
    ("openrlhf: unknown reward", {"path": "/openrlhf/bleu", "json": {}}, 404,
     "unknown reward 'bleu'; POST to /openrlhf/<reward>"),
    ("openrlhf: query missing", {"path": "/openrlhf/caprl_qa_utility", "json": {"prompts": [_PROMPT]}}, 400,
     "'query' is missing"),
    ("openrlhf: prompts missing", {"path": "/openrlhf/caprl_qa_utility", "json": {"query": [_PROMPT + " A cat."]}}, 400,
     "'prompts' is missing"),
    ("openrlhf: lengths differ", {"path": "/openrlhf/caprl_qa_utility",
     "json": {"query": [_PROMPT + " A cat."] * 2, "prompts": [_PROMPT], "labels": [_LABEL]}}, 400,
     "2 queries, 1 prompts and 1 labels"),
    ("openrlhf: query without its prompt", {"path": "/openrlhf/caprl_qa_utility",
     "json": {"query": ["A cat on a mat."], "prompts": [_PROMPT], "labels": [_LABEL]}}, 400,
     "query[0] does not hold its prompt (prompts[0])"),
    ("openrlhf: empty response", {"path": "/openrlhf/caprl_qa_utility",
     "json": {"query": [_PROMPT + "<|im_end|>"], "prompts": [_PROMPT], "labels": [_LABEL]}}, 400,
     "query[0]: the generated part (after its prompt) is empty"),
    ("openrlhf: label not JSON", {"path": "/openrlhf/caprl_qa_utility",
     "json": {"query": [_PROMPT + " A cat."], "prompts": [_PROMPT], "labels": ['{"reference_caption": ']}}, 400,
     "labels[0] starts like a JSON object but is not JSON"),
    ("openrlhf: label with an unknown field", {"path": "/openrlhf/caprl_qa_utility",
     "json": {"query": [_PROMPT + " A cat."], "prompts": [_PROMPT], "labels": ['{"answer": "a cat"}']}}, 400,
     "labels[0]: unknown field 'answer'"),
    ("openrlhf: reference missing", {"path": "/openrlhf/caprl_qa_utility",
     "json": {"query": [_PROMPT + " A cat."], "prompts": [_PROMPT], "labels": ["A cat on a mat."]}}, 400,
     "labels[0]: reward 'caprl_qa_utility' needs 'questions'"),
]  # fmt: skip


#: JSON that parses by the grammar but not in Python (each answered 500 before benchmarks/serve_faults.py found it).
_DEEP = "[" * 5000 + "]" * 5000
UNREADABLE = [
    ("body nested deeper than Python recurses", {"content": _DEEP.encode()}, 400,
     "body: JSON that cannot be read (nested too deeply)"),
    ("body with an integer of 5000 digits", {"content": b'{"rewards": ' + b"1" * 5000 + b"}"}, 400,
     "body: JSON that cannot be read (Exceeds the limit (4300 digits) for integer string conversion"),
    ("openrlhf: label nested deeper than Python recurses", {"path": "/openrlhf/caprl_qa_utility",
     "json": {"query": [_PROMPT + " A cat."], "prompts": [_PROMPT], "labels": ['{"a": ' + _DEEP + "}"]}},
     400, "labels[0] starts like a JSON object but is not JSON (nested too deeply)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "status", "words"), [c[1:] for c in MALFORMED + UNREADABLE], ids=[c[0] for c in MALFORMED + UNREADABLE]
)
def test_a_malformed_request_gets_a_4xx_naming_the_problem(strict: tuple[str, Path], request_, status: int, words: str):
    url, _ = strict
    spec = request_ if isinstance(request_, dict) and {"content", "path", "method", "json"} & set(request_) else None
    spec = spec or {"json": request_}
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **spec.get("headers", {})}
    headers = {k: v for k, v in headers.items() if v is not None}
    body = spec["content"] if "content" in spec else json.dumps(spec.get("json", {})).encode()
    response = httpx.request(
        spec.get("method", "POST"), url + spec.get("path", "/v1/score"), content=body, headers=headers, timeout=60
    )
    assert response.status_code == status, response.text
    assert words in response.json()["detail"], response.json()["detail"]


def test_the_strict_server_scores_a_good_request_and_is_still_up_after_every_malformed_one(strict):
    url, _ = strict
    body = _items(_GOOD, _item(image={"path": "cat.png"}), _item(sample_id="astronaut", caption="An astronaut."))
    response = _post(url, body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert all(r["rewards"]["caprl_qa_utility"] is not None for r in response.json()["results"])
    metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert 'status="500"' not in metrics


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


#: The kinds of bad input this file covers (counted in benchmarks/results/robustness.md).
KINDS = (
    *(f"request: {kind}" for kind, *_ in MALFORMED + UNREADABLE),
    *(f"item: {kind}, a named failure of that item alone" for kind, *_ in UNSCORABLE),
    *(f"refused before start: {kind}" for kind, *_ in _REFUSED_BEFORE_START),
    "refused before start: an empty token variable",
    "refused before start: a port in use",
    "refused before start: fastapi not installed",
)
