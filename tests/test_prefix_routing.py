"""Requests that share a prompt prefix reach the same server; images carry vLLM's uuid where it is understood.

The metrics give the requests that share a long prefix one key (``Request.affinity``): the questions
of one caption (CaptionQA, CapRL), the verifications and matches of one sample's captions, the arena
battles over one sample. The ``openai`` engine's pool sends a key to its first-choice server while
that server has a free slot, spills to the key's next choice beyond it, and prefers a call whose
first choice a freed slot is. The key is not part of a request's cache key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from capbench.engines.base import ImagePart, Message, Request, Sampling, TextPart, affinity
from capbench.engines.http_loop import Pool
from capbench.engines.openai import OpenAIEngine
from capbench.hashing import content_hash
from capbench.metrics.arena import PairJudge
from capbench.metrics.captionqa import CaptionQA, CaptionQAConfig
from capbench.metrics.fact_replies import Fact
from capbench.metrics.facts import FactPipeline
from capbench.records import ImageRef, Question, Sample

URLS = ("http://a/v1", "http://b/v1", "http://c/v1")
# A 1x1 PNG: small and real, so the engine can send it as a data URL.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")


# ------------------------------------------------------------------ the keys the metrics give


def _sample(sample_id: str, image: ImageRef | None = None) -> Sample:
    questions = tuple(Question(f"{sample_id}-q{i}", f"Question {i}?", ("yes", "no", "maybe"), "yes") for i in range(4))
    return Sample(sample_id, image, f"Reference of {sample_id}.", (), questions)


def test_captionqa_questions_of_one_caption_share_a_key_and_captions_differ():
    metric = CaptionQA(CaptionQAConfig())
    sample = _sample("s")
    keys = {metric.build_request("A red cup.", q, list(q.choices)).affinity for q in sample.questions}
    assert len(keys) == 1 and None not in keys
    assert metric.build_request("A blue cup.", sample.questions[0], ["yes", "no"]).affinity not in keys
    loglik = CaptionQA(CaptionQAConfig(answer_mode="loglik"))
    loglik_keys = {loglik.build_request("A red cup.", q, list(q.choices)).affinity for q in sample.questions}
    assert len(loglik_keys) == 1 and loglik_keys != keys  # another system prompt: another prefix


def test_verify_match_and_arena_keys_follow_the_sample_not_the_caption():
    image = ImageRef("/x/a.png", "a" * 64)
    sample, other = _sample("a", image), _sample("b", ImageRef("/x/b.png", "b" * 64))
    pipeline = FactPipeline()
    verify = [pipeline.verify_request(sample, [Fact(t)], with_image=True).affinity for t in ("A cup.", "A mug.")]
    assert verify[0] == verify[1]
    assert pipeline.verify_request(other, [Fact("A cup.")], with_image=True).affinity != verify[0]
    assert pipeline.verify_request(sample, [Fact("A cup.")], with_image=False).affinity != verify[0]  # no image
    match = [pipeline.match_request([Fact(t)], ["There is a cup."]).affinity for t in ("A cup.", "A mug.")]
    assert match[0] == match[1] != pipeline.match_request([Fact("A cup.")], ["There is a mug."]).affinity
    judge = PairJudge()
    battles = {judge.request(sample, a, b, with_image=True).affinity for a, b in [("x", "y"), ("y", "x"), ("x", "z")]}
    assert len(battles) == 1 and judge.request(other, "x", "y", with_image=True).affinity not in battles


def test_the_key_is_not_part_of_the_cache_key_and_images_give_a_default():
    messages = (Message.text("system", "s"), Message.text("user", "u"))
    one, two = Request(messages, Sampling(), affinity="k1"), Request(messages, Sampling(), affinity="k2")
    assert one == two and hash(one) == hash(two)
    assert content_hash(one.canonical()) == content_hash(two.canonical()) == content_hash(Request(messages).canonical())
    assert Request(messages).affinity_key() is None
    pictured = Request((Message("user", (ImagePart(ImageRef("/x.png", "c" * 64)), TextPart("u"))),))
    assert pictured.affinity_key() == affinity("c" * 64)
    assert one.affinity_key() == "k1"


# ------------------------------------------------------------------ the pool's routing


def _slot(pool: Pool, key: str | None, avoid: str | None = None) -> int | None:
    return pool._pick(avoid, key)


def test_a_key_goes_to_one_server_while_it_has_slots_then_to_its_next_choice():
    pool = Pool(URLS, concurrency=2)
    keys = [f"caption-{i}" for i in range(40)]
    firsts = {key: pool._ranked(key)[0] for key in keys}
    assert len(set(firsts.values())) == 3  # keys spread over every server
    assert Pool(URLS, concurrency=2)._ranked("caption-7") == pool._ranked("caption-7")  # same in every process
    key = keys[0]
    first, second = pool._ranked(key)[:2]
    pool._take(_slot(pool, key))
    pool._take(_slot(pool, key))
    assert pool.busy[first] == 2  # both on its first choice, though the others were idle
    assert _slot(pool, key) == second  # full: the next choice, the same one for every call of the key
    assert _slot(pool, None) != first  # a call without a key: the least busy


def test_a_freed_slot_goes_to_the_call_whose_first_choice_it_is():
    async def scenario() -> list[str]:
        pool = Pool(URLS, concurrency=1)
        key_for = {
            url: next(f"k{i}" for i in range(100) if pool._ranked(f"k{i}")[0] == j) for j, url in enumerate(URLS)
        }
        order: list[str] = []
        release: dict[str, asyncio.Event] = {url: asyncio.Event() for url in URLS}

        async def call(name: str, key: str) -> None:
            async with pool.slot(key=key) as url:
                order.append(f"{name}@{url}")
                if name.startswith("hold"):
                    await release[url].wait()

        holders = [asyncio.create_task(call(f"hold-{u}", key_for[u])) for u in URLS]
        await asyncio.sleep(0.01)  # every server full
        waiters = [
            asyncio.create_task(call("to-a", key_for[URLS[0]])),
            asyncio.create_task(call("to-c", key_for[URLS[2]])),
        ]
        await asyncio.sleep(0.01)
        release[URLS[2]].set()  # c frees: the later call that prefers c takes it, not the first in line
        await asyncio.sleep(0.01)
        release[URLS[0]].set()
        release[URLS[1]].set()
        await asyncio.gather(*holders, *waiters)
        return order

    order = [entry.split("@") for entry in asyncio.run(scenario())]
    names = [name for name, _ in order]
    # c freed first: the call that prefers c took it, though it queued after the call that prefers a
    assert names.index("to-c") < names.index("to-a") and dict(order)["to-c"] == URLS[2]


def test_a_key_spills_to_an_idle_server_rather_than_wait_for_its_own():
    async def scenario() -> tuple[str, bool]:
        pool = Pool(URLS[:2], concurrency=1)
        key_a = next(f"k{i}" for i in range(100) if pool._ranked(f"k{i}")[0] == 0)
        gate = asyncio.Event()

        async def hold() -> None:
            async with pool.slot(key=key_a):
                await gate.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.01)  # a is full, b idle

        async def second() -> str:
            async with pool.slot(key=key_a) as url:
                return url

        # it must be served while a is still held: on b, the key's next choice
        url = await asyncio.wait_for(second(), timeout=5)
        held = not gate.is_set()
        gate.set()
        await holder
        return url, held

    url, held = asyncio.run(scenario())
    assert held and url == URLS[1]


def test_a_key_whose_server_is_down_goes_to_its_next_choice_and_comes_back():
    pool = Pool(URLS, concurrency=4)
    key = "caption-1"
    first, second = pool._ranked(key)[:2]
    pool.answered(URLS[first], "ConnectError", down=True)
    assert _slot(pool, key) == second
    pool.back_at[first] = 0.0  # its cooldown over: probed, and back in rotation once it answers
    assert _slot(pool, key) == first
    pool.answered(URLS[first])
    assert _slot(pool, key) == first


def test_routing_off_spreads_keys_like_calls_without_one():
    pool = Pool(URLS, concurrency=4, affinity=False)

    async def scenario() -> list[str]:
        urls = []
        for _ in range(6):
            async with pool.slot(key="same") as url:
                urls.append(url)
        return urls

    assert len(set(asyncio.run(scenario()))) == 3  # round robin over idle servers


# ------------------------------------------------------------------ the engine against servers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a batch's connections arrive at once


class Recorder:
    """An OpenAI-compatible server that records every body it gets; lists its model as ``owner``'s."""

    def __init__(self, owner: str = "vllm") -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, obj: Any) -> None:
                payload = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": owner}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with recorder.lock:
                    recorder.bodies.append(body)
                message = {"role": "assistant", "content": "A"}
                self._send({"choices": [{"index": 0, "message": message}], "usage": {"prompt_tokens": 3}})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorders():
    made: list[Recorder] = []

    def make(count: int, owner: str = "vllm") -> list[Recorder]:
        made.extend(Recorder(owner) for _ in range(count))
        return made[-count:]

    yield make
    for recorder in made:
        recorder.close()


def _captionqa_requests(captions: int = 6, questions: int = 5) -> list[Request]:
    metric = CaptionQA(CaptionQAConfig())
    sample = _sample("s")
    qs = [Question(f"q{i}", f"Question {i}?", ("yes", "no"), "yes") for i in range(questions)]
    del sample
    return [metric.build_request(f"Caption number {c}.", q, ["yes", "no"]) for c in range(captions) for q in qs]


@pytest.mark.parametrize("routing", [True, False])
def test_the_engine_sends_one_captions_questions_to_one_server(recorders, routing):
    servers = recorders(3)
    engine = OpenAIEngine("m", [s.url for s in servers], concurrency=64, prefix_routing=routing, backoff=0.01)
    try:
        requests = _captionqa_requests()
        assert all(r.ok for r in engine.run(requests))
        where: dict[str, set[int]] = defaultdict(set)
        for index, server in enumerate(servers):
            for body in server.bodies:
                where[body["messages"][-1]["content"].split("</description>")[0]].add(index)
        assert len(where) == 6
        if routing:
            assert all(len(servers_of) == 1 for servers_of in where.values())
            stats = engine.server_stats()
            assert sum(s["affine"] for s in stats.values()) == len(requests)
            assert sum(s["spilled"] for s in stats.values()) == 0
        else:
            assert any(len(servers_of) > 1 for servers_of in where.values())
    finally:
        engine.close()


def _pictured(tmp_path: Path) -> Request:
    path = tmp_path / "dot.png"
    path.write_bytes(PNG)
    ref = ImageRef(str(path), "d" * 64)
    return Request((Message("user", (ImagePart(ref), TextPart("What is it?"))),))


@pytest.mark.parametrize(("owner", "setting", "expected"), [
    ("vllm", "auto", True), ("openai", "auto", False), ("llamacpp", "on", True), ("vllm", "off", False),
])  # fmt: skip
def test_images_carry_their_hash_as_uuid_where_the_server_is_vllm(recorders, tmp_path, owner, setting, expected):
    [server] = recorders(1, owner)
    engine = OpenAIEngine("m", server.url, image_uuids=setting, backoff=0.01)
    try:
        engine.fingerprint()  # what a run does first: the cache key asks the server
        assert engine.sends_image_uuids() is expected
        assert engine.run([_pictured(tmp_path)])[0].ok
        [part] = [p for p in server.bodies[0]["messages"][0]["content"] if p["type"] == "image_url"]
        assert part["image_url"]["url"].startswith("data:image/png;base64,")
        assert part.get("uuid") == ("d" * 64 if expected else None)
    finally:
        engine.close()
