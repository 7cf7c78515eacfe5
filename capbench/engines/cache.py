"""The content-addressed judge-call cache (SQLite, WAL) and the engine wrapper that uses it.

Each successful response is stored once under ``request_key(fingerprint, request)``, with the
canonical request beside it, so the cache doubles as a log of every judge call. Several
processes may share one cache file: SQLite's WAL mode lets readers and one writer proceed
together, and each insert is its own transaction, so a process killed mid-write leaves no
partial row.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from capbench.engines.base import Engine, OnResult, Request, Response, describe, request_key
from capbench.errors import ConfigError
from capbench.hashing import canonical_json

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    engine TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_engine ON responses(engine);
"""


def capbench_home() -> Path:
    """Return capbench's state directory: ``$CAPBENCH_HOME`` or ``~/.cache/capbench``."""
    home = os.environ.get("CAPBENCH_HOME")
    return Path(home) if home else Path.home() / ".cache" / "capbench"


def default_cache_path() -> Path:
    """Return the default cache file, inside :func:`capbench_home`."""
    return capbench_home() / "cache.sqlite"


class ResponseCache:
    """A SQLite store of successful responses keyed by engine fingerprint and request."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"{self.path}: not a usable capbench cache ({exc}); delete it or set CAPBENCH_HOME elsewhere"
            ) from None
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{self.path}: cache schema v{version} is newer than this capbench (v{SCHEMA_VERSION}); "
                "upgrade capbench or use another CAPBENCH_HOME"
            )
        if version < SCHEMA_VERSION:
            with self._lock:
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def get(self, key: str) -> Response | None:
        """Return the cached response under ``key``, or None."""
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else Response.from_dict(json.loads(row[0]), cached=True)

    def put(self, key: str, fingerprint: Mapping[str, Any], request: Request, response: Response) -> bool:
        """Store a successful response; return False (storing nothing) for a failed one."""
        if not response.ok:
            return False
        row = (
            key,
            describe(fingerprint),
            canonical_json(dict(fingerprint)),
            canonical_json(request.canonical()),
            canonical_json(response.to_dict()),
            time.time(),
        )
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)", row)
        return True

    def stats(self) -> dict[str, Any]:
        """Return entry counts per engine, the total, and the file size."""
        with self._lock:
            rows = self._db.execute(
                "SELECT engine, COUNT(*), MIN(created_at), MAX(created_at) FROM responses "
                "GROUP BY engine ORDER BY engine"
            ).fetchall()
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return {
            "path": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "entries": sum(r[1] for r in rows),
            "bytes": size,
            "engines": [{"engine": r[0], "entries": r[1], "oldest": r[2], "newest": r[3]} for r in rows],
        }

    def clear(self, engine: str | None = None) -> int:
        """Delete all entries (or one engine's, by its 'backend:model' label); return how many."""
        with self._lock:
            if engine is None:
                cursor = self._db.execute("DELETE FROM responses")
            else:
                cursor = self._db.execute("DELETE FROM responses WHERE engine = ?", (engine,))
            deleted = cursor.rowcount
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if engine is None:
            with self._lock:
                self._db.execute("VACUUM")
        return deleted

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


class Recorder(Protocol):
    """Receives every response a wrapped engine gives (a cassette writer)."""

    def write(self, request: Request, response: Response) -> None:
        """Record one response."""
        ...


@dataclass
class CallStats:
    """What a wrapped engine did: calls sent, cache hits, failures, tokens and time."""

    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "judge_calls": self.calls,
            "cache_hits": self.cache_hits,
            "failures": self.failures,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "engine_seconds": round(self.seconds, 3),
            "errors": dict(self.errors),
        }


class CachedEngine:
    """An engine wrapper that answers from the cache, de-duplicates a batch, and counts.

    Requests already in the cache are answered without calling the engine; identical requests
    within one batch are sent once. Each successful response is stored as soon as the engine
    reports it, so a killed run loses at most the calls in flight. A ``recorder`` (a cassette)
    receives every response, cached or not.
    """

    def __init__(
        self,
        engine: Engine,
        cache: ResponseCache | None,
        recorder: Recorder | None = None,
        spec: Mapping[str, Any] | None = None,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.recorder = recorder
        #: How the user named the engine (engine, model, options), for manifests; holds no secrets.
        self.spec = dict(spec) if spec is not None else None
        self.stats = CallStats()
        self._fingerprint = engine.fingerprint()
        self.backend = engine.backend
        self.accepts_images = engine.accepts_images
        self.supports_loglik = engine.supports_loglik

    def fingerprint(self) -> dict[str, Any]:
        """Return the wrapped engine's fingerprint."""
        return dict(self._fingerprint)

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        """Answer ``requests`` from the cache where possible and from the engine otherwise."""
        results: list[Response | None] = [None] * len(requests)
        pending: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            key = request_key(self._fingerprint, request)
            hit = self.cache.get(key) if self.cache is not None and key not in pending else None
            if hit is not None:
                results[index] = hit
                self.stats.cache_hits += 1
                if self.recorder is not None:
                    self.recorder.write(request, hit)
                if on_result is not None:
                    on_result(index, hit)
            else:
                pending.setdefault(key, []).append(index)
        keys = list(pending)
        if keys:
            self._run_pending(requests, keys, pending, results, on_result)
        return [r if r is not None else Response(error="engine returned no response") for r in results]

    def _run_pending(
        self,
        requests: Sequence[Request],
        keys: list[str],
        pending: dict[str, list[int]],
        results: list[Response | None],
        on_result: OnResult | None,
    ) -> None:
        batch = [requests[pending[k][0]] for k in keys]

        def record(position: int, response: Response) -> None:
            key = keys[position]
            self.stats.calls += 1
            self.stats.prompt_tokens += response.prompt_tokens
            self.stats.completion_tokens += response.completion_tokens
            if self.recorder is not None:
                self.recorder.write(batch[position], response)
            if response.ok:
                if self.cache is not None:
                    self.cache.put(key, self._fingerprint, batch[position], response)
            else:
                self.stats.failures += 1
                kind = (response.error or "empty response").split(":", 1)[0][:60]
                self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1
            for index in pending[key]:
                results[index] = response
                if on_result is not None:
                    on_result(index, response)

        started = time.perf_counter()
        seen: set[int] = set()

        def on_engine_result(position: int, response: Response) -> None:
            seen.add(position)
            record(position, response)

        answers = self.engine.run(batch, on_engine_result)
        # Engines that do not report per item are accounted for here, once.
        for position, response in enumerate(answers):
            if position not in seen:
                record(position, response)
        self.stats.seconds += time.perf_counter() - started
