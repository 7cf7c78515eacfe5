"""The content-addressed judge-call cache (SQLite, WAL) and the engine wrapper that uses it.

Each successful response is stored once under ``request_key(fingerprint, request)``, with the
canonical request beside it, so the cache doubles as a log of every judge call. Several
processes may share one cache file: SQLite's WAL mode lets readers and one writer proceed
together, and each insert is its own transaction, so a process killed mid-write leaves no
partial row.

The cache is only an optimisation, so once a run is under way it never costs the run a reply:
a write that fails (a full disk, a file locked by another process for longer than a few
seconds, a damaged file) is skipped and counted, a read that fails is a miss, and each kind of
trouble is warned about once, naming the file and the fix. Problems found while opening the
cache, before anything is judged, are :class:`~capbench.errors.ConfigError` s with the fix.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from capbench.engines.base import Engine, OnResult, Request, Response, describe, preflight, request_key
from capbench.errors import ConfigError
from capbench.hashing import canonical_json
from capbench.home import capbench_home  # also importable from here, where it used to live

SCHEMA_VERSION = 1
#: Seconds a statement waits for another process's lock before the cache gives up on it.
BUSY_TIMEOUT = 5.0

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

Trouble = Literal["full", "locked", "damaged", "unwritable", "failed"]


class CacheWarning(UserWarning):
    """The judge-call cache could not be read or written; the run carries on without it."""


class CacheFileError(ConfigError):
    """The cache file cannot be used; ``kind`` says why ('damaged' ones are cleared by deleting them)."""

    def __init__(self, message: str, kind: Trouble) -> None:
        super().__init__(message)
        self.kind = kind


def default_cache_path() -> Path:
    """Return the default cache file, inside :func:`capbench_home`."""
    return capbench_home() / "cache.sqlite"


def classify(exc: sqlite3.Error) -> Trouble:
    """Name the kind of a SQLite failure, from its error code or else its message."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "full"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return "locked"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
        return "damaged"
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")) or "readonly" in text or "unable to open" in text:
        return "unwritable"
    return "failed"


def trouble_message(path: Path, kind: Trouble, exc: BaseException) -> str:
    """Say what is wrong with the cache file ``path`` and how to fix it, in one line."""
    why = " ".join(str(exc).split())[:200]  # one line, however SQLite put it
    fixes = {
        "full": f"the disk holding {path} is full ({why}): free space there, or set CAPBENCH_HOME "
        "to a folder on another disk",
        "locked": f"{path} is locked by another process ({why}): wait for it to finish, or set "
        "CAPBENCH_HOME to another folder",
        "damaged": f"{path} is damaged, not a usable capbench cache ({why}): it is only a cache, so run "
        "`capbench cache clear --yes` to recreate it",
        "unwritable": f"cannot write the judge-call cache {path} ({why}): set CAPBENCH_HOME to a writable "
        "folder, or run with --no-cache",
        "failed": f"the judge-call cache {path} failed ({why}): run `capbench cache clear --yes` to recreate "
        "it, or set CAPBENCH_HOME to another folder",
    }
    return fixes[kind]


def cache_files(path: Path) -> list[Path]:
    """Return the cache file and SQLite's files beside it (WAL, shared memory, journal) that exist."""
    return [p for p in (path, *(Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal"))) if p.is_file()]


def remove_cache(path: Path) -> None:
    """Delete the cache file and SQLite's files beside it; the next run creates a new, empty one.

    Raises:
        ConfigError: a file cannot be deleted (a read-only folder).
    """
    for file in cache_files(path):
        try:
            file.unlink()
        except OSError as exc:
            raise ConfigError(
                f"cannot delete {file} ({exc.strerror}): delete it by hand, or set CAPBENCH_HOME elsewhere"
            ) from None


def _check_home(path: Path) -> None:
    """Raise a ConfigError naming the fix when the cache's folder is not a folder."""
    for folder in (path.parent, *path.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(
                    f"{folder} is a file, not a folder, so the judge-call cache {path} cannot live there: "
                    "set CAPBENCH_HOME to a writable folder, or run with --no-cache"
                )
            return


class ResponseCache:
    """A SQLite store of successful responses keyed by engine fingerprint and request.

    Args:
        path: The SQLite file (default ``$CAPBENCH_HOME/cache.sqlite``), or ``":memory:"``.
        timeout: Seconds a statement waits for another process's lock. After one gives up, the
            next ones do not wait until a write goes through again, so a cache held by another
            process for a long time costs the run one wait, not one per reply.
        readonly: Open an existing file as it is, writing nothing next to it (``cache stats`` in a
            read-only folder).

    Raises:
        ConfigError: the folder cannot hold the cache (a file, read-only) or the file is not a
            usable cache (:class:`CacheFileError`, whose ``kind`` says why).
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, timeout: float = BUSY_TIMEOUT, readonly: bool = False
    ) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.timeout = timeout
        self._lock = threading.Lock()
        self._warned: set[Trouble] = set()
        self._damaged = False
        self._impatient = False
        if str(self.path) != ":memory:" and not readonly:
            _check_home(self.path)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the folder {self.path.parent} for the judge-call cache ({exc.strerror}): "
                    "set CAPBENCH_HOME to a writable folder, or run with --no-cache"
                ) from None
        try:
            version = self._open(readonly)
        except sqlite3.Error as exc:
            raise self._failure(exc) from None
        if version > SCHEMA_VERSION:
            raise CacheFileError(
                f"{self.path}: cache schema v{version} is newer than this capbench (v{SCHEMA_VERSION}); "
                "upgrade capbench or use another CAPBENCH_HOME",
                "failed",
            )

    def _open(self, readonly: bool) -> int:
        """Connect, set WAL mode and create the schema; return the file's schema version."""
        if readonly:
            # immutable: read the file as it is, without the WAL's shared memory a read-only folder cannot hold.
            uri = self.path.resolve().as_uri() + "?immutable=1"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            return self._db.execute("PRAGMA user_version").fetchone()[0]
        self._db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                with self._lock:
                    self._db.executescript(_SCHEMA)
                    self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error:
            self._db.close()
            raise
        return version

    def lookup(self, key: str) -> tuple[Response | None, bool]:
        """Return the cached response under ``key`` (or None) and whether the cache could be read."""
        if self._damaged:
            return None, False
        try:
            with self._lock:
                row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
            return (None if row is None else Response.from_dict(json.loads(row[0]), cached=True)), True
        except sqlite3.Error as exc:
            self._trouble(exc)
        except (ValueError, KeyError, TypeError) as exc:  # a row that reads but does not parse
            self._trouble(sqlite3.DatabaseError(f"database disk image is malformed: unreadable entry: {exc}"))
        return None, False

    def get(self, key: str) -> Response | None:
        """Return the cached response under ``key``, or None (also when the cache cannot be read)."""
        return self.lookup(key)[0]

    def put(self, key: str, fingerprint: Mapping[str, Any], request: Request, response: Response) -> bool:
        """Store a successful response; return whether it was stored.

        A failed response is not stored. Nor is one the file cannot take (full, locked, damaged):
        that is warned about once per kind of trouble, and never raised.
        """
        if not response.ok or self._damaged:
            return False
        row = (
            key,
            describe(fingerprint),
            canonical_json(dict(fingerprint)),
            canonical_json(request.canonical()),
            canonical_json(response.to_dict()),
            time.time(),
        )
        try:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)", row)
                if self._impatient:  # the lock is free again: wait for it as usual
                    self._db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
                    self._impatient = False
        except sqlite3.Error as exc:
            self._trouble(exc)
            return False
        return True

    def _trouble(self, exc: sqlite3.Error) -> None:
        """Note a failed read or write: stop waiting on a held lock, stop using a damaged file, warn once."""
        kind = classify(exc)
        with self._lock:
            if kind == "damaged":
                self._damaged = True
            elif kind == "locked" and not self._impatient:
                self._db.execute("PRAGMA busy_timeout=0")
                self._impatient = True
            first = kind not in self._warned
            self._warned.add(kind)
        if first:
            warnings.warn(
                f"{trouble_message(self.path, kind, exc)}. The run carries on: replies the cache cannot "
                "take are still scored and saved (counted as cache_write_failures in the judge usage)",
                CacheWarning,
                stacklevel=4,
            )

    def _failure(self, exc: sqlite3.Error) -> CacheFileError:
        kind = classify(exc)
        return CacheFileError(trouble_message(self.path, kind, exc), kind)

    def stats(self) -> dict[str, Any]:
        """Return entry counts per engine, the total, and the file size.

        Raises:
            CacheFileError: the file is damaged (its kind 'damaged') or cannot be read.
        """
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT engine, COUNT(*), MIN(created_at), MAX(created_at) FROM responses "
                    "GROUP BY engine ORDER BY engine"
                ).fetchall()
                check = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
        except sqlite3.Error as exc:
            raise self._failure(exc) from None
        if check != "ok":
            detail = " ".join(check.replace("*", " ").split())[:200]  # SQLite's report spans lines
            raise self._failure(sqlite3.DatabaseError(f"database disk image is malformed: {detail}"))
        size = sum(p.stat().st_size for p in cache_files(self.path))
        return {
            "path": str(self.path),
            "exists": True,
            "schema_version": SCHEMA_VERSION,
            "entries": sum(r[1] for r in rows),
            "bytes": size,
            "engines": [{"engine": r[0], "entries": r[1], "oldest": r[2], "newest": r[3]} for r in rows],
        }

    def clear(self, engine: str | None = None) -> int:
        """Delete all entries (or one engine's, by its 'backend:model' label); return how many.

        Raises:
            CacheFileError: the file is damaged (delete it with :func:`remove_cache`) or locked.
        """
        try:
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
        except sqlite3.Error as exc:
            raise self._failure(exc) from None
        return deleted

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def read_stats(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Return :meth:`ResponseCache.stats` of the cache at ``path`` without creating anything.

    A cache that does not exist yet has no entries (``exists`` is False); one in a read-only
    folder is read as it is.

    Raises:
        ConfigError: the folder is a file, or the cache is damaged (:class:`CacheFileError`).
    """
    path = Path(path) if path is not None else default_cache_path()
    _check_home(path)
    if not path.is_file():
        return {"path": str(path), "exists": False, "schema_version": SCHEMA_VERSION, "entries": 0, "bytes": 0,
                "engines": []}  # fmt: skip
    try:
        cache = ResponseCache(path)
    except CacheFileError as exc:
        if exc.kind != "unwritable":
            raise
        cache = ResponseCache(path, readonly=True)
    try:
        return cache.stats()
    finally:
        cache.close()


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
    #: Cache reads that failed (answered as misses) and replies the cache could not take.
    cache_read_failures: int = 0
    cache_write_failures: int = 0

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
            "cache_read_failures": self.cache_read_failures,
            "cache_write_failures": self.cache_write_failures,
        }


class Tally:
    """What one caller's runs of shared engines cost: judge calls, cache hits and failed calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.cache_hits = 0
        self.failures = 0
        self._lock = threading.Lock()  # a run may be counted from the engine's thread, and several at once

    def add(self, calls: int = 0, cache_hits: int = 0, failures: int = 0) -> None:
        """Count what one request cost."""
        with self._lock:
            self.calls += calls
            self.cache_hits += cache_hits
            self.failures += failures

    def to_dict(self) -> dict[str, int]:
        """Return ``judge_calls``, ``cache_hits`` and ``failures``, as :meth:`CallStats.to_dict` names them."""
        with self._lock:
            return {"judge_calls": self.calls, "cache_hits": self.cache_hits, "failures": self.failures}


class CachedEngine:
    """An engine wrapper that answers from the cache, de-duplicates a batch, and counts.

    Requests already in the cache are answered without calling the engine; identical requests
    within one batch are sent once, and so are identical requests of batches run at the same
    time from other threads (the second waits for the first's answer: several rewards of one
    step, or several callers of the reward service, share their judge calls while they run
    concurrently). An engine that is not safe to call from two threads at once (one without
    ``concurrent = True``, e.g. an in-process model) gets one batch at a time. ``stats`` counts
    every run; :meth:`tallied` gives one caller a view whose runs also count into its own
    :class:`Tally`, exact while other callers run the same engine.

    Each successful response is stored as soon as the engine reports it, so a killed run loses
    at most the calls in flight. A cache that cannot be read
    or written costs misses and unstored replies (counted in ``stats``), never a reply. A
    ``recorder`` (a cassette) receives every response, cached or not.

    The engine's fingerprint is read when first needed (the first run, or ``fingerprint()``), not
    at construction, so an engine that asks its server about itself asks it once, when it is up.
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
        self._fingerprint: dict[str, Any] | None = None
        self.backend = engine.backend
        self.accepts_images = engine.accepts_images
        self.supports_loglik = engine.supports_loglik
        #: Requests being answered now, by key: who waits for them gets the same response.
        self._inflight: dict[str, _InFlight] = {}
        self._inflight_lock = threading.Lock()
        self._engine_lock = None if getattr(engine, "concurrent", False) else threading.Lock()

    def fingerprint(self) -> dict[str, Any]:
        """Return the wrapped engine's fingerprint (read from it once)."""
        if self._fingerprint is None:
            self._fingerprint = dict(self.engine.fingerprint())
        return dict(self._fingerprint)

    def check(self) -> None:
        """Run the wrapped engine's preflight check."""
        preflight(self.engine)

    def close(self) -> None:
        """Close the wrapped engine where it holds something (the ``openai`` engine's loop and connections)."""
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()

    def tallied(self, counted: Tally) -> TalliedEngine:
        """This engine as one caller sees it: its runs, from whichever thread, also count into ``counted``."""
        return TalliedEngine(self, counted)

    def run(
        self, requests: Sequence[Request], on_result: OnResult | None = None, counted: Tally | None = None
    ) -> list[Response]:
        """Answer ``requests`` from the cache where possible and from the engine otherwise.

        Args:
            requests: The judge requests.
            on_result: Called with (index, response) as each is answered.
            counted: Also counts this run's judge calls, cache hits and failures (besides ``stats``).
        """
        results: list[Response | None] = [None] * len(requests)
        pending: dict[str, list[int]] = {}
        waiting: dict[str, list[int]] = {}
        others: dict[str, _InFlight] = {}
        fingerprint = self.fingerprint()
        for index, request in enumerate(requests):
            key = request_key(fingerprint, request)
            if key in pending or key in waiting:
                (pending if key in pending else waiting)[key].append(index)
                continue
            hit = None
            with self._inflight_lock:  # a key is either in flight or, once answered, in the cache
                flight = self._inflight.get(key)
                if flight is None and self.cache is not None:
                    hit, readable = self.cache.lookup(key)
                    self.stats.cache_read_failures += not readable
                if flight is None and hit is None:
                    self._inflight[key] = _InFlight()
            if flight is not None:
                others[key] = flight
                waiting[key] = [index]
            elif hit is not None:
                self._answer(index, request, hit, results, on_result, counted)
            else:
                pending[key] = [index]
        keys = list(pending)
        try:
            if keys:
                self._run_pending(requests, keys, pending, results, on_result, counted)
        finally:
            self._land(keys, pending, results)
        for key, indices in waiting.items():  # answered by another caller's call, as from the cache
            response = others[key].wait()
            for index in indices:
                self._answer(index, requests[index], response, results, on_result, counted)
        return [r if r is not None else Response(error="engine returned no response") for r in results]

    def _answer(
        self,
        index: int,
        request: Request,
        response: Response,
        results: list[Response | None],
        on_result: OnResult | None,
        counted: Tally | None,
    ) -> None:
        """Answer one request without the engine (from the cache, or another caller's call in flight)."""
        response = response if response.cached or not response.ok else _as_cached(response)
        results[index] = response
        self.stats.cache_hits += int(response.ok)  # a failure shared with the caller in flight is no hit
        if counted is not None:
            counted.add(cache_hits=int(response.ok))
        if self.recorder is not None:
            self.recorder.write(request, response)
        if on_result is not None:
            on_result(index, response)

    def _land(self, keys: Sequence[str], pending: Mapping[str, list[int]], results: list[Response | None]) -> None:
        """Hand this call's answers to whoever waits for them, and take the keys out of flight."""
        with self._inflight_lock:
            for key in keys:
                flight = self._inflight.pop(key, None)
                if flight is not None:
                    answer = results[pending[key][0]]
                    flight.land(answer if answer is not None else Response(error="engine returned no response"))

    def _run_pending(
        self,
        requests: Sequence[Request],
        keys: list[str],
        pending: dict[str, list[int]],
        results: list[Response | None],
        on_result: OnResult | None,
        counted: Tally | None,
    ) -> None:
        batch = [requests[pending[k][0]] for k in keys]
        fingerprint = self.fingerprint()

        def record(position: int, response: Response) -> None:
            key = keys[position]
            self.stats.calls += 1
            if counted is not None:
                counted.add(calls=1, failures=int(not response.ok))
            self.stats.prompt_tokens += response.prompt_tokens
            self.stats.completion_tokens += response.completion_tokens
            if self.recorder is not None:
                self.recorder.write(batch[position], response)
            if response.ok:
                if self.cache is not None and not self.cache.put(key, fingerprint, batch[position], response):
                    self.stats.cache_write_failures += 1
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

        if self._engine_lock is None:
            answers = self.engine.run(batch, on_engine_result)
        else:
            with self._engine_lock:
                answers = self.engine.run(batch, on_engine_result)
        # Engines that do not report per item are accounted for here, once.
        for position, response in enumerate(answers):
            if position not in seen:
                record(position, response)
        self.stats.seconds += time.perf_counter() - started


class TalliedEngine:
    """A :class:`CachedEngine` seen by one caller: each run also counts into the caller's :class:`Tally`.

    Everything else (fingerprint, capability flags, ``stats``, the wrapped ``engine``) is the shared
    engine's, so a metric cannot tell the two apart.
    """

    def __init__(self, cached: CachedEngine, counted: Tally) -> None:
        self.cached = cached
        self.counted = counted

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        """Run the shared engine, counting what it cost into this caller's tally."""
        return self.cached.run(requests, on_result, self.counted)

    def __getattr__(self, name: str) -> Any:
        if name == "cached":  # not set yet (a copy being made): no wrapped engine to ask
            raise AttributeError(name)
        return getattr(self.cached, name)


class _InFlight:
    """A request being answered by one caller, that others wait for."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._response: Response | None = None

    def land(self, response: Response) -> None:
        """Give the answer to every waiter."""
        self._response = response
        self._done.set()

    def wait(self) -> Response:
        """Return the answer once the caller in flight has it."""
        self._done.wait()
        assert self._response is not None
        return self._response


def _as_cached(response: Response) -> Response:
    """The response as a cache lookup returns it (``cached`` set)."""
    from dataclasses import replace

    return replace(response, cached=True)
