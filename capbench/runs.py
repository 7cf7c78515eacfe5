"""Run directories: per-sample score logs that survive a kill, and atomically replaced manifests.

A run lives in ``<results>/<benchmark>/<caption set>/``:

- ``captions.jsonl``: the captions that were scored;
- ``<metric>.jsonl``: one :class:`~capbench.records.SampleScore` per line, appended and flushed
  as each batch of samples completes, so a killed run resumes where it stopped;
- ``manifest.json``: what produced the scores (command, versions, judge fingerprints, prompt
  hashes, metric settings), each session's timings and judge usage, and the summaries.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from capbench.errors import InputError
from capbench.records import SampleScore, jsonl_line, read_jsonl

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]+")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
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
        """Append rows with one write, then flush to disk."""
        payload = "".join(jsonl_line(r) for r in rows).encode("utf-8")
        if not payload:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, payload)
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


class RunDir:
    """The folder of one caption set's results on one benchmark."""

    def __init__(self, results_dir: Path, benchmark: str, caption_set: str) -> None:
        self.path = Path(results_dir) / safe_name(benchmark) / safe_name(caption_set)

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
