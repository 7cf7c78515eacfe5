"""The judge-call cache under faults: a home that is a file or read-only, a full disk, a file
locked by another process, a damaged file; and `cache stats` / `cache clear` on bad or empty homes.

The rule under test: a cache that fails mid-run never costs a reply (it is returned, scored and
saved; the cache's failure is counted and warned about once, naming the file and the fix), and a
cache that cannot be opened is a one-line error with the fix, before anything is judged.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import sqlite3
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ScriptedEngine, one_line_error

from capbench.cli import main
from capbench.engines import cache as cache_module
from capbench.engines.base import Message, Request, Response, Sampling
from capbench.engines.cache import (
    BUSY_TIMEOUT,
    CachedEngine,
    CacheFileError,
    CacheWarning,
    ResponseCache,
    read_stats,
)
from capbench.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "capbench" / "data" / "mini" / "captions"
FP = {"backend": "t", "model": "m"}
#: The kinds of fault this file covers (counted in benchmarks/results/robustness.md).
KINDS = (
    "CAPBENCH_HOME is a file, or has a file above it",
    "CAPBENCH_HOME must be made on a read-only file system",
    "CAPBENCH_HOME exists and is read-only",
    "disk full mid-run (simulated and a real 1 MiB tmpfs)",
    "cache write-locked by another process mid-run",
    "cache read that cannot get the lock",
    "cache locked when opened",
    "cache damaged in the middle (eval, stats, clear)",
    "cache file of random bytes",
    "cache clear --engine naming an engine with no entries",
    "cache stats / clear on an empty home",
    "cache stats on a read-only home",
    "a results dir that is a file",
    "a read-only results dir",
    "the results disk filling mid-run (simulated and a real 64 KiB tmpfs)",
)


def _request(text: str) -> Request:
    return Request((Message.text("user", text),), Sampling())


def _cli(*args: str):
    """Run capbench; an exception escaping as a traceback fails the test (catch_exceptions=False)."""
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, list(args), catch_exceptions=False)


def _eval(results: Path, *extra: str) -> list[str]:
    return ["eval", "--captions", str(EXAMPLES / "short.jsonl"), "--judge", "scripted:A", "--results-dir",
            str(results), "--json", *extra]  # fmt: skip


@contextlib.contextmanager
def _mounted(target: Path, *args: str) -> Iterator[Path]:
    """Mount something at ``target`` for the block; skip the test where this machine forbids it."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")
    done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on a read-only bind mount (so even root cannot write there), holding one cache file."""
    source = tmp_path / "source"
    source.mkdir()
    cache = ResponseCache(source / "cache.sqlite")
    cache.put("k", FP, _request("q"), Response(texts=("a",)))
    cache.close()
    with _mounted(tmp_path / "ro", "--bind", "-o", "ro", str(source)) as target:
        # A bind mount is made read-write first on some kernels; make sure this one is not.
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=False)
        if os.access(target, os.W_OK) and _writable(target):
            pytest.skip("this machine does not make bind mounts read-only")
        yield target


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


class _Failing:
    """A SQLite connection whose statements starting with ``verb`` raise ``error``."""

    def __init__(self, db: sqlite3.Connection, verb: str, error: str) -> None:
        self.db, self.verb, self.error = db, verb, error

    def execute(self, sql: str, *args):
        if sql.lstrip().upper().startswith(self.verb):
            raise sqlite3.OperationalError(self.error)
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


# --- item 4: a home that is a file, or read-only -------------------------------------------------


def test_home_that_is_a_file_is_one_line_with_the_fix(
    monkeypatch, capbench_home: Path, tmp_path: Path, scripted_cli_engine
):
    capbench_home.parent.mkdir(parents=True, exist_ok=True)
    capbench_home.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"is a file, not a folder.*CAPBENCH_HOME to a writable folder"):
        ResponseCache()
    one_line_error(_cli(*_eval(tmp_path / "results")), str(capbench_home), "CAPBENCH_HOME", "--no-cache")
    one_line_error(_cli("cache", "stats"), str(capbench_home), "is a file")
    one_line_error(_cli("cache", "clear", "--yes"), str(capbench_home), "is a file")
    # Below a file, too (NotADirectoryError before).
    monkeypatch.setenv("CAPBENCH_HOME", str(capbench_home / "inner"))
    one_line_error(_cli("cache", "stats"), str(capbench_home), "is a file")
    assert json.loads(_cli(*_eval(tmp_path / "results", "--no-cache")).output)["runs"][0]["samples"] == 18


def test_read_only_home_is_one_line_with_the_fix(monkeypatch, read_only_dir: Path, tmp_path: Path, scripted_cli_engine):
    # A home to create on a read-only file system (OSError: [Errno 30] before).
    monkeypatch.setenv("CAPBENCH_HOME", str(read_only_dir / "new-home"))
    with pytest.raises(ConfigError, match=r"cannot create the folder .*Read-only file system.*--no-cache"):
        ResponseCache()
    one_line_error(_cli(*_eval(tmp_path / "results")), "new-home", "CAPBENCH_HOME to a writable folder")
    # An existing read-only home: a new cache cannot be written beside nothing.
    empty = read_only_dir / "empty"
    monkeypatch.setenv("CAPBENCH_HOME", str(read_only_dir))
    with pytest.raises(ConfigError, match=r"cannot write the judge-call cache .*writable folder"):
        ResponseCache(empty.with_suffix(".sqlite"))
    # The existing cache there cannot take writes either: one line, before any judging.
    one_line_error(_cli(*_eval(tmp_path / "results")), "cache.sqlite", "CAPBENCH_HOME to a writable folder")


def test_read_only_home_simulated(monkeypatch, tmp_path: Path):
    """The same messages without a mount (any user): mkdir and SQLite refusing as a read-only disk does."""

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(ConfigError, match=r"cannot create the folder .*\(Read-only file system\).*--no-cache"):
        ResponseCache(tmp_path / "missing" / "cache.sqlite")
    monkeypatch.undo()
    real_connect = sqlite3.connect

    def readonly_connect(*args, **kwargs):
        db = real_connect(*args, **kwargs)
        return _Failing(db, "PRAGMA JOURNAL_MODE", "attempt to write a readonly database")

    monkeypatch.setattr(cache_module.sqlite3, "connect", readonly_connect)
    with pytest.raises(CacheFileError, match=r"cannot write the judge-call cache .*--no-cache") as caught:
        ResponseCache(tmp_path / "cache.sqlite")
    assert caught.value.kind == "unwritable"


# --- item 5: a full disk --------------------------------------------------------------------------


def test_full_disk_keeps_every_reply_and_warns_once(tmp_path: Path):
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    cache.put("old", FP, _request("old"), Response(texts=("kept",)))
    cache._db = _Failing(cache._db, "INSERT", "database or disk is full")  # type: ignore[assignment]
    engine = ScriptedEngine(lambda r: r.messages[0].joined_text().upper())
    cached = CachedEngine(engine, cache)
    with pytest.warns(CacheWarning) as caught:
        out = cached.run([_request(f"q{i}") for i in range(20)])
        again = cached.run([_request(f"r{i}") for i in range(5)])
    assert [r.text for r in out] == [f"Q{i}" for i in range(20)] and all(r.ok for r in again)
    assert cached.stats.cache_write_failures == 25 and cached.stats.to_dict()["cache_write_failures"] == 25
    [warning] = [w for w in caught if issubclass(w.category, CacheWarning)]
    message = str(warning.message)
    assert str(path) in message and "full" in message and "CAPBENCH_HOME" in message and "\n" not in message
    assert cache.get("old").text == "kept"  # reads still work


def test_full_disk_through_the_cli_scores_and_saves_everything(monkeypatch, tmp_path: Path, scripted_cli_engine):
    real_open = ResponseCache._open

    def open_then_fill(self, readonly):
        version = real_open(self, readonly)
        self._db = _Failing(self._db, "INSERT", "database or disk is full")
        return version

    monkeypatch.setattr(ResponseCache, "_open", open_then_fill)
    with pytest.warns(CacheWarning, match="full"):
        result = _cli(*_eval(tmp_path))
    assert result.exit_code == 0, result.output
    [run] = json.loads(result.output)["runs"]
    assert run["judge_calls"] == 252 and run["cache_write_failures"] == 252 and run["samples"] == 18
    assert run["metrics"]["captionqa"]["questions"] == 252
    lines = (tmp_path / "mini" / "short" / "captionqa.jsonl").read_text().splitlines()
    assert len(lines) == 18
    manifest = json.loads((tmp_path / "mini" / "short" / "manifest.json").read_text())
    assert "cache_write_failures" in json.dumps(manifest)
    with pytest.warns(CacheWarning):
        table = _cli(*_eval(tmp_path / "again")[:-1])  # the printed tables say so too
    assert "short: the judge-call cache was skipped 252 time(s)" in table.output


def test_a_real_full_file_system(tmp_path: Path):
    """A 1 MiB tmpfs: the cache fills it, and every reply still comes back."""
    with _mounted(tmp_path / "tiny", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as tiny:
        cache = ResponseCache(tiny / "cache.sqlite")
        cached = CachedEngine(ScriptedEngine(lambda r: r.messages[0].joined_text() * 40), cache)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = cached.run([_request(f"question number {i:05d} " * 4) for i in range(600)])
        assert len(out) == 600 and all(r.ok and len(r.text) > 1000 for r in out)
        assert 0 < cached.stats.cache_write_failures < 600
        ours = [w for w in caught if issubclass(w.category, CacheWarning)]
        assert len(ours) == 1 and "full" in str(ours[0].message) and str(tiny) in str(ours[0].message)
        cache.close()


# --- item 6: a cache locked by another process ---------------------------------------------------


def test_locked_cache_waits_once_keeps_replies_and_recovers(tmp_path: Path):
    assert BUSY_TIMEOUT <= 10  # a held lock costs seconds, not the 60 it did
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path, timeout=0.5)
    cached = CachedEngine(ScriptedEngine(lambda r: "x"), cache)
    cached.run([_request("before")])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    with pytest.warns(CacheWarning) as caught:
        out = cached.run([_request(f"q{i}") for i in range(20)])
        hit = cached.run([_request("before")])
    waited = time.monotonic() - started
    assert all(r.ok for r in out) and hit[0].cached  # WAL readers are not blocked by the writer
    assert cached.stats.cache_write_failures == 20
    assert waited < 0.5 * 4, f"waited {waited:.1f}s: the lock was waited for more than once"
    [warning] = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert str(path) in str(warning.message) and "locked by another process" in str(warning.message)
    other.execute("COMMIT")
    other.close()
    cached.run([_request("after")])  # the lock is free: stored again, waiting as usual
    assert cached.stats.cache_write_failures == 20 and read_stats(path)["entries"] == 2
    assert cache._impatient is False


def test_a_read_that_cannot_get_the_lock_is_a_miss(tmp_path: Path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    cached = CachedEngine(ScriptedEngine(lambda r: "fresh"), cache)
    cached.run([_request("a")])
    cache._db = _Failing(cache._db, "SELECT", "database is locked")  # type: ignore[assignment]
    with pytest.warns(CacheWarning, match="locked"):
        [reply] = cached.run([_request("a")])
    assert reply.text == "fresh" and not reply.cached
    assert cached.stats.cache_read_failures == 1 and cached.stats.calls == 2


def test_locked_at_open_is_one_line(tmp_path: Path):
    path = tmp_path / "c.sqlite"
    ResponseCache(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("INSERT INTO responses VALUES ('z', 'e', '{}', '{}', '{}', 0)")
    started = time.monotonic()
    with pytest.raises(CacheFileError, match="locked by another process") as caught:
        ResponseCache(path, timeout=0.3)
    assert caught.value.kind == "locked" and time.monotonic() - started < 5
    other.close()


# --- item 7: a damaged cache ----------------------------------------------------------------------


def _damage(path: Path) -> None:
    """Write garbage over the file from offset 8192 (the third page: the key index's root)."""
    gc.collect()  # close the connections of runs made in this process, as their exit would
    with contextlib.closing(sqlite3.connect(path)) as db:  # and move the WAL's pages into the file
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as f:
        f.seek(8192)
        f.write(os.urandom(4096))


def _big_cache(path: Path, entries: int = 400) -> None:
    cache = ResponseCache(path)
    for i in range(entries):
        cache.put(f"k{i}", FP, _request(f"q{i}"), Response(texts=("reply " * 30,)))
    cache.close()  # the last connection checkpoints the WAL into the file
    assert path.stat().st_size > 8192 * 4


def test_damaged_cache_mid_run_carries_on_without_it(tmp_path: Path):
    path = tmp_path / "c.sqlite"
    _big_cache(path)
    _damage(path)
    engine = ScriptedEngine(lambda r: "new")
    cached = CachedEngine(engine, ResponseCache(path))
    with pytest.warns(CacheWarning) as caught:
        out = cached.run([_request(f"q{i}") for i in range(50)])
    assert [r.text for r in out] == ["new"] * 50 and len(engine.calls) == 50
    assert cached.stats.cache_read_failures == 50 and cached.stats.cache_write_failures == 50
    [warning] = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert str(path) in str(warning.message) and "cache clear --yes" in str(warning.message)


def test_damaged_cache_through_the_cli(capbench_home: Path, tmp_path: Path, scripted_cli_engine):
    first = json.loads(_cli(*_eval(tmp_path / "a")).output)["runs"][0]
    assert first["judge_calls"] == 252
    # Several hundred entries: a second set of captions.
    two = ["eval", "--captions", str(EXAMPLES / "detailed.jsonl"), "--judge", "scripted:A", "--results-dir",
           str(tmp_path / "a"), "--json"]  # fmt: skip
    assert json.loads(_cli(*two).output)["runs"][0]["judge_calls"] > 0
    path = capbench_home / "cache.sqlite"
    assert read_stats(path)["entries"] >= 400
    _damage(path)
    # eval: carries on, judging again what the cache cannot give, warning once; the same scores.
    with pytest.warns(CacheWarning, match="cache clear --yes") as caught:
        result = _cli(*_eval(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    run = json.loads(result.output)["runs"][0]
    assert run["judge_calls"] == 252 and run["metrics"] == first["metrics"] and run["cache_read_failures"] > 0
    assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1
    # stats: one line naming the file and the fix.
    one_line_error(_cli("cache", "stats"), str(path), "damaged", "cache clear --yes")
    one_line_error(_cli("cache", "stats", "--json"), str(path), "damaged")
    # clear by engine cannot pick entries out of a damaged file; clear --yes removes it.
    one_line_error(_cli("cache", "clear", "--engine", "scripted:A", "--yes"), "damaged")
    cleared = _cli("cache", "clear", "--yes")
    assert cleared.exit_code == 0 and "deleted the damaged cache" in cleared.output, cleared.output
    assert not path.exists() and "no cache yet" in _cli("cache", "stats").output
    assert json.loads(_cli(*_eval(tmp_path / "c")).output)["runs"][0]["judge_calls"] == 252


def test_random_file_is_one_line_and_clear_removes_it(capbench_home: Path, tmp_path: Path, scripted_cli_engine):
    capbench_home.mkdir(parents=True)
    path = capbench_home / "cache.sqlite"
    path.write_bytes(os.urandom(64 * 1024))
    # eval: opening fails before anything is judged, so nothing is at stake: one line, the fix.
    one_line_error(_cli(*_eval(tmp_path)), str(path), "cache clear --yes")
    one_line_error(_cli("cache", "stats"), str(path), "cache clear --yes")
    assert _cli("cache", "clear").exit_code == 1 and path.exists()  # no --yes: asks; no answer, no deletion
    cleared = _cli("cache", "clear", "--yes")
    assert cleared.exit_code == 0, cleared.output
    assert not path.exists()
    assert json.loads(_cli(*_eval(tmp_path)).output)["runs"][0]["judge_calls"] == 252


# --- item 17: cache stats / clear on typos and empty or read-only homes ----------------------------


def test_clear_an_engine_that_has_no_entries_is_an_error(monkeypatch, capbench_home: Path):
    cache = ResponseCache()
    cache.put("k1", {"backend": "llamacpp", "model": "small"}, _request("a"), Response(texts=("x",)))
    cache.put("k2", {"backend": "openai", "model": "gpt"}, _request("b"), Response(texts=("y",)))
    cache.close()
    line = one_line_error(_cli("cache", "clear", "--engine", "nonexistent:x", "--yes"), "'nonexistent:x'")
    assert "llamacpp:small" in line and "openai:gpt" in line
    assert read_stats()["entries"] == 2
    done = _cli("cache", "clear", "--engine", "openai:gpt", "--yes")
    assert done.exit_code == 0 and "deleted 1 cached responses" in done.output
    # An empty home: the typo is still an error, and nothing is created.
    monkeypatch.setenv("CAPBENCH_HOME", str(capbench_home.parent / "empty-home"))
    one_line_error(_cli("cache", "clear", "--engine", "openai:gpt", "--yes"), "empty")
    assert not (capbench_home.parent / "empty-home").exists()


def test_stats_and_clear_on_an_empty_home_create_nothing(capbench_home: Path):
    assert not capbench_home.exists()
    result = _cli("cache", "stats")
    assert result.exit_code == 0 and "no cache yet" in result.output and str(capbench_home) in result.output
    assert json.loads(_cli("cache", "stats", "--json").output)["entries"] == 0
    cleared = _cli("cache", "clear", "--yes")
    assert cleared.exit_code == 0 and "nothing to delete" in cleared.output
    assert not capbench_home.exists()


def test_stats_on_a_read_only_home(monkeypatch, read_only_dir: Path):
    monkeypatch.setenv("CAPBENCH_HOME", str(read_only_dir))
    result = _cli("cache", "stats")
    assert result.exit_code == 0, result.output
    assert "1 cached responses" in result.output and "delete" not in result.output
    monkeypatch.setenv("CAPBENCH_HOME", str(read_only_dir / "no-such-home"))
    result = _cli("cache", "stats")
    assert result.exit_code == 0 and "no cache yet" in result.output and "delete" not in result.output
    one_line_error(_cli("cache", "clear", "--yes", "--engine", "t:m"), "no-such-home")
    monkeypatch.setenv("CAPBENCH_HOME", str(read_only_dir))
    one_line_error(_cli("cache", "clear", "--yes"), "CAPBENCH_HOME to a writable folder")


# ---------------------------------------------------------------- the results folder


def _results_eval(results: Path, *extra: str) -> list[str]:
    return ["eval", "--captions", str(EXAMPLES / "short.jsonl"), "--judge", "scripted:A", "--results-dir",
            str(results), *extra]  # fmt: skip


def test_a_results_dir_that_is_a_file_is_one_line(tmp_path: Path, scripted_cli_engine):
    (tmp_path / "results").write_text("not a folder")
    one_line_error(_cli(*_results_eval(tmp_path / "results")), "a file stands where a folder must be")


def test_a_read_only_results_dir_is_one_line(read_only_dir: Path, scripted_cli_engine):
    one_line_error(_cli(*_results_eval(read_only_dir / "results")), "read-only file system")


def test_a_results_disk_filling_mid_run_is_one_line_and_the_rerun_resumes(
    monkeypatch, tmp_path: Path, scripted_cli_engine
):
    real_write = os.write
    appends = {"n": 0}

    def fill_at_second_append(fd: int, data) -> int:
        if bytes(data[:11]) != b'{"format": ':  # only the score lines
            return real_write(fd, data)
        appends["n"] += 1
        if appends["n"] == 2:  # half of the batch's lines fit, then the disk is full
            return real_write(fd, bytes(data[: len(data) // 2]))
        if appends["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", fill_at_second_append)
    results = tmp_path / "results"
    failed = _cli(*_results_eval(results, "--json"))  # --json: the progress bar leaves no line behind
    one_line_error(failed, "No space left on device", "the disk is full", "rerun the same")
    monkeypatch.setattr(os, "write", real_write)
    done = _cli(*_results_eval(results, "--json"))
    assert done.exit_code == 0, done.output
    lines = (results / "mini" / "short" / "captionqa.jsonl").read_text().splitlines()
    ids = [json.loads(line)["sample_id"] for line in lines]  # the cut line is gone, every line whole
    assert sorted(set(ids)) == sorted(ids) and len(ids) == 18


def test_a_real_full_results_disk(tmp_path: Path, scripted_cli_engine):
    """A 64 KiB tmpfs for the results: one line when it fills; room made, the same command finishes."""
    with _mounted(tmp_path / "tiny", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as tiny:
        one_line_error(_cli(*_results_eval(tiny, "--json")), "the disk is full")
        subprocess.run(["mount", "-o", "remount,size=8m", str(tiny)], check=True)
        done = _cli(*_results_eval(tiny, "--json"))
        assert done.exit_code == 0, done.output
        lines = (tiny / "mini" / "short" / "captionqa.jsonl").read_text().splitlines()
        assert len({json.loads(line)["sample_id"] for line in lines}) == 18 == len(lines)
