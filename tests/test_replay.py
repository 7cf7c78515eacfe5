"""Cassettes: what is recorded replays exactly; what is missing fails loudly, by request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ScriptedEngine

from capbench.engines import build_engine
from capbench.engines.base import Choice, Message, Request, Response, Sampling
from capbench.engines.replay import RecordingEngine, ReplayEngine
from capbench.errors import ConfigError, InputError


def _request(text: str, loglik: bool = False) -> Request:
    constraint = Choice(("A. x", "B. y"), loglik=True) if loglik else None
    return Request((Message.text("user", text),), Sampling(max_tokens=4), constraint)


def test_record_then_replay(tmp_path: Path):
    path = tmp_path / "judge.jsonl"

    def reply(request):
        if request.constraint is not None:
            return Response(texts=("B. y",), option_logprobs=(-3.0, -1.5), option_tokens=(2, 2))
        return request.messages[0].joined_text()[::-1]

    recorder = RecordingEngine(ScriptedEngine(reply), path)
    live = recorder.run([_request("abc"), _request("q", loglik=True)])
    replay = build_engine(f"replay:{path}")
    assert replay.run([_request("abc"), _request("q", loglik=True)]) == live
    assert replay.fingerprint()["of"] == {"backend": "scripted", "model": "scripted"}
    assert replay.supports_loglik is True


def test_missing_request_is_a_named_failure(tmp_path: Path):
    path = tmp_path / "judge.jsonl"
    RecordingEngine(ScriptedEngine(), path).run([_request("abc")])
    [response] = ReplayEngine(path).run([_request("something else")])
    assert not response.ok
    assert "is not in judge.jsonl; re-record the cassette" in response.error


def test_failures_are_not_recorded_and_appends_skip_known(tmp_path: Path):
    path = tmp_path / "judge.jsonl"
    replies = iter([Response(error="boom"), "ok", "ok again"])
    recorder = RecordingEngine(ScriptedEngine(lambda r: next(replies)), path)
    recorder.run([_request("a"), _request("b")])
    RecordingEngine(ScriptedEngine(lambda r: "other"), path).run([_request("b")])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 2  # the header and "b"; the failure and the repeat are not stored
    assert lines[1]["response"]["texts"] == ["ok"]


def test_recording_into_another_engines_cassette_is_refused(tmp_path: Path):
    path = tmp_path / "judge.jsonl"
    RecordingEngine(ScriptedEngine(name="m1"), path).run([_request("a")])
    with pytest.raises(ConfigError, match="recorded from another engine"):
        RecordingEngine(ScriptedEngine(name="m2"), path)


def test_bad_cassettes(tmp_path: Path):
    with pytest.raises(ConfigError, match="cassette not found"):
        ReplayEngine(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hello": 1}\n')
    with pytest.raises(InputError, match="not a capbench cassette header"):
        ReplayEngine(bad)
