"""Cassettes: record any engine's responses to JSONL, and replay them deterministically.

A cassette's first line is a header naming the recorded engine (its fingerprint and
capabilities); every further line maps the hash of a canonical request to its response.
Replaying a request the cassette lacks gives a failed response that names the request, so a
golden test whose prompts drifted fails loudly instead of scoring silently.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capbench.engines.base import Engine, EngineWrapper, OnResult, Request, Response
from capbench.errors import ConfigError, InputError
from capbench.hashing import content_hash
from capbench.records import jsonl_line, read_jsonl

CASSETTE_VERSION = 1


def cassette_key(request: Request) -> str:
    """Return the key of ``request`` inside a cassette (its canonical hash)."""
    return content_hash(request.canonical())


def read_cassette(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Return ``(header, {key: response dict})`` of a cassette file."""
    header: dict[str, Any] | None = None
    entries: dict[str, dict[str, Any]] = {}
    for number, obj in read_jsonl(path):
        if header is None:
            if obj.get("cassette") != CASSETTE_VERSION or "engine" not in obj:
                raise InputError(f"{path}:{number}: not a capbench cassette header; record one with --record-judge")
            header = obj
            continue
        if "key" not in obj or "response" not in obj:
            raise InputError(f"{path}:{number}: cassette entry lacks 'key' or 'response'")
        entries[obj["key"]] = obj["response"]
    if header is None:
        raise InputError(f"{path}: empty cassette; record one with --record-judge")
    return header, entries


class ReplayEngine:
    """Answers requests from a recorded cassette."""

    backend = "replay"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"{self.path}: cassette not found; record one with --record-judge")
        self.header, self.entries = read_cassette(self.path)
        self.recorded = dict(self.header["engine"])
        self.accepts_images = bool(self.header.get("accepts_images", False))
        self.supports_loglik = bool(self.header.get("supports_loglik", False))

    def fingerprint(self) -> dict[str, Any]:
        """Name the replayed engine, so cached replays never mix with live calls."""
        return {"backend": "replay", "model": self.recorded.get("model", "?"), "of": self.recorded}

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        """Return each request's recorded response, or a failure naming the missing request."""
        out: list[Response] = []
        for index, request in enumerate(requests):
            key = cassette_key(request)
            data = self.entries.get(key)
            if data is None:
                response = Response(
                    error=f"replay: request {key[:12]} is not in {self.path.name}; re-record the cassette"
                )
            else:
                response = Response.from_dict(data)
            out.append(response)
            if on_result is not None:
                on_result(index, response)
        return out


class CassetteWriter:
    """Appends successful responses of one engine to a cassette, each request once."""

    def __init__(self, engine: Engine, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._known: set[str] = set()
        if self.path.exists() and self.path.stat().st_size > 0:
            header, entries = read_cassette(self.path)
            if header["engine"] != engine.fingerprint():
                raise ConfigError(f"{self.path}: cassette was recorded from another engine; record into a new file")
            self._known = set(entries)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = {
                "cassette": CASSETTE_VERSION,
                "engine": engine.fingerprint(),
                "accepts_images": engine.accepts_images,
                "supports_loglik": engine.supports_loglik,
            }
            self.path.write_text(jsonl_line(header), encoding="utf-8")

    def write(self, request: Request, response: Response) -> None:
        """Record ``response`` to ``request`` unless it failed or the cassette has it already."""
        key = cassette_key(request)
        if not response.ok or key in self._known:
            return
        line = jsonl_line({"key": key, "response": response.to_dict()})
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
        self._known.add(key)


class RecordingEngine(EngineWrapper):
    """Wraps an engine and records each successful response to a cassette as it arrives."""

    def __init__(self, engine: Engine, path: str | os.PathLike[str]) -> None:
        super().__init__(engine)
        self.writer = CassetteWriter(engine, path)

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        """Run the wrapped engine and record what it answers."""

        def record(index: int, response: Response) -> None:
            self.writer.write(requests[index], response)
            if on_result is not None:
                on_result(index, response)

        return self.engine.run(requests, record)
