"""Run directories: per-sample score logs that survive a kill, and atomically replaced manifests.

A run lives in ``<results>/<benchmark>/<caption set>/``:

- ``captions.jsonl``: the captions that were scored;
- ``<metric>.jsonl``: one :class:`~capbench.records.SampleScore` per line, appended and flushed
  as each batch of samples completes, so a killed run resumes where it stopped;
- ``manifest.json``: what produced the scores (command, versions, judge fingerprints, prompt
  hashes, metric settings), each session's timings and judge usage, and the summaries;
- ``.lock``, while a run writes: one writer per folder (:class:`RunLock`).

A shard of a run (``capbench eval --shard I/N``) has the same files in
``<results>/<benchmark>/_shards/<caption set>/<I>-of-<N>/``: below the depth where readers look
for runs (``*/*/manifest.json``), so a shard is never read as a whole run. ``capbench merge``
(:mod:`capbench.shards`) writes the merged run to the caption set's ordinary folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from capbench.errors import InputError
from capbench.records import SampleScore, check_format, jsonl_line, read_jsonl

if TYPE_CHECKING:
    from capbench.config import Shard

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]+")
#: The folder of a benchmark's shards: a name no caption set's folder can take (safe names never start with "_").
SHARDS = "_shards"
#: A shard's folder name, ``<I>-of-<N>``.
SHARD_FOLDER = re.compile(r"([0-9]+)-of-([0-9]+)")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


#: What to do when a write fails, by errno.
_WRITE_FIXES = {
    errno.ENOSPC: "the disk is full: free space there, then rerun the same command (finished work is kept)",
    errno.EDQUOT: "the disk quota is used up: free space, then rerun the same command (finished work is kept)",
    errno.EROFS: "a read-only file system: choose a folder you can write to",
    errno.EACCES: "no permission to write there: choose a folder you can write to",
    errno.EPERM: "no permission to write there: choose a folder you can write to",
    errno.ENOTDIR: "a file stands where a folder must be: move it away, or choose another folder",
    errno.EEXIST: "a file stands where a folder must be: move it away, or choose another folder",
}


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write under ``path`` (full disk, read-only, a file in the way) into one InputError line."""
    try:
        yield
    except OSError as exc:
        fix = _WRITE_FIXES.get(exc.errno or 0, "choose a folder you can write to")
        raise InputError(f"cannot write {exc.filename or path} ({exc.strerror or exc}); {fix}") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half.

    Raises:
        InputError: the file cannot be written (the message says why and what to do).
    """
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes files private; results are meant to be shared
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def publish_folder(target: Path, files: Mapping[str, str], staging: Path) -> None:
    """Make ``target`` a folder holding exactly ``files`` (name -> text), whole or not at all.

    The files are written to a new folder in ``staging`` (on the same file system as ``target``),
    which is then renamed to ``target``. A ``target`` already there is moved aside first and then
    removed, so a reader sees the old folder, none, or the new one, never half of one.

    Raises:
        InputError: a file or folder cannot be written (the message says why and what to do).
    """
    with writing(staging):
        staging.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=staging))
        os.chmod(folder, 0o777 & ~_UMASK)  # mkdtemp makes folders private; results are meant to be shared
    try:
        for name, text in files.items():
            atomic_write_text(folder / name, text)
        with writing(target):
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=staging))
                os.replace(target, old)
                os.replace(folder, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(folder, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # gone when renamed; else the files of a failed write


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Write records as JSONL, atomically."""
    atomic_write_text(path, "".join(jsonl_line(r) for r in records))


def safe_name(name: str) -> str:
    """Turn a caption-set or model name into a folder name."""
    cleaned = _SAFE_NAME.sub("_", name).strip("._")
    return cleaned or "unnamed"


class JsonlLog:
    """An append-only JSONL file that survives a kill: one write and an fsync per append."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def torn(self) -> bool:
        """Whether the last line is unterminated: a kill during a write, or a writer still at work."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return False
        with self.path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"

    def rows(self, repair: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield ``(line number, object)`` per finished line; with ``repair``, first cut a torn last line.

        Without ``repair`` the file is left as it is (for readers while a run may be writing).
        """
        if not self.path.exists():
            return
        if repair:
            self._repair_tail()
        yield from read_jsonl(self.path, finished_only=True)

    def _repair_tail(self) -> None:
        """Cut an unterminated last line, so the next append starts a line of its own."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def append_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows with one write, then flush to disk.

        A write cut short (a full disk) leaves an unfinished last line, which the next run cuts.

        Raises:
            InputError: the log cannot be written (the message says why and what to do).
        """
        payload = "".join(jsonl_line(r) for r in rows).encode("utf-8")
        if not payload:
            return
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(payload)
                while view:  # os.write may write less than asked when the disk fills
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)

    def reset(self) -> None:
        """Delete the log (for --overwrite)."""
        self.path.unlink(missing_ok=True)


class ScoreLog(JsonlLog):
    """The log of one metric's per-sample scores."""

    def load(self, repair: bool = True) -> dict[str, SampleScore]:
        """Return the scores written so far, by sample id (the last record of a sample wins).

        Raises:
            InputError: a finished line is not a score record.
        """
        scores: dict[str, SampleScore] = {}
        for number, obj in self.rows(repair):
            check_format(obj.get("format", 0), f"{self.path}:{number}")
            try:
                score = SampleScore.from_dict(obj)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise InputError(
                    f"{self.path}:{number}: not a capbench score record ({exc}); "
                    "move the file away or rerun with --overwrite"
                ) from None
            scores[score.sample_id] = score
        return scores

    def append(self, scores: Iterable[SampleScore]) -> None:
        """Append scores with one write, then flush to disk."""
        self.append_rows(s.to_dict() for s in scores)


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``<folder>/.lock``, which names its holder.

    A second run into the same folder is refused with a message naming the process that writes
    there. The kernel drops the lock when its process dies, however it dies, so a killed run
    leaves no stale lock: the next run takes it over. The file is removed on release (and a
    folder made only to hold it), so a refused or finished run leaves nothing behind.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / ".lock"
        self._fd: int | None = None
        self._made_folder = False

    def __enter__(self) -> RunLock:
        self._made_folder = not self.folder.exists()
        with writing(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            with writing(self.path):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(self.path)
                os.close(fd)
                self._release_folder()
                raise InputError(
                    f"{self.folder}: another capbench run ({holder}) is writing here; wait for it to finish, "
                    "or choose another --results-dir"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed the file between our open and our lock: try again
                break
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": sys.argv[:6]}
        self._fd = fd
        try:
            with writing(self.path):
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(holder).encode("utf-8"))
        except InputError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: a waiter then sees the file gone and retries
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        self._release_folder()

    def _release_folder(self) -> None:
        if self._made_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only if the run wrote nothing else there


def writer_state(folder: Path) -> tuple[Literal["free", "running", "killed"], str]:
    """Tell whether a run writes to ``folder`` now, was killed there, or neither; without changing anything.

    A run removes its ``.lock`` when it ends, also when it is interrupted; a ``.lock`` that nobody
    holds was left by a run that was killed (or one that is just starting).
    Returns the state and, for 'running', who holds the lock.
    """
    path = folder / ".lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "free", ""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return "running", _read_holder(path)
    finally:
        os.close(fd)  # closing drops the shared lock, if it was taken
    return "killed", ""


def _read_holder(path: Path) -> str:
    """Describe the process named in a lock file, as well as it can be read."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["since"])))
        return f"pid {holder['pid']} on {holder['host']}, since {since}: {' '.join(map(str, holder['command']))}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet said who it is"


class RunDir:
    """The folder of one caption set's results on one benchmark (or of one shard of them)."""

    def __init__(self, results_dir: Path, benchmark: str, caption_set: str, shard: Shard | None = None) -> None:
        folder = Path(results_dir) / safe_name(benchmark)
        if shard is None:
            self.path = folder / safe_name(caption_set)
        else:
            self.path = folder / SHARDS / safe_name(caption_set) / f"{shard.index}-of-{shard.count}"

    def lock(self) -> RunLock:
        """Return the folder's writer lock (a context manager)."""
        return RunLock(self.path)

    @property
    def manifest_path(self) -> Path:
        """Where the manifest lives."""
        return self.path / "manifest.json"

    def scores(self, metric: str) -> ScoreLog:
        """Return the score log of ``metric``."""
        return ScoreLog(self.path / f"{safe_name(metric)}.jsonl")

    def read_manifest(self, broken_ok: bool = False) -> dict[str, Any]:
        """Return the manifest, or {} if the run is new (or, with ``broken_ok``, if it is unreadable).

        Raises:
            InputError: the manifest is not a JSON object (unless ``broken_ok``).
        """
        if not self.manifest_path.exists():
            return {}
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problem = f"unreadable manifest ({exc})"
        else:
            if isinstance(manifest, dict):
                try:
                    check_format(manifest.get("format", 0), str(self.manifest_path))
                except InputError:
                    if broken_ok:
                        return {}
                    raise
                return manifest
            problem = f"not a capbench manifest (a JSON {type(manifest).__name__}, not an object)"
        if broken_ok:
            return {}
        raise InputError(f"{self.manifest_path}: {problem}; rerun with --overwrite")

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        """Replace the manifest atomically."""
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n")

    def write_captions(self, captions: Mapping[str, str]) -> None:
        """Store the captions that were scored."""
        write_jsonl(self.path / "captions.jsonl", ({"id": k, "caption": v} for k, v in captions.items()))
