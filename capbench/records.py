"""The nouns of capbench: samples, questions, captions and scores, with JSONL input and output.

Every record is a frozen dataclass with ``to_dict`` / ``from_dict``. Readers validate as they
go and raise :class:`~capbench.errors.InputError` naming the file, the line and the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from capbench.errors import InputError


@dataclass(frozen=True)
class ImageRef:
    """An image on disk and the hash of its content (what cache keys use)."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Question:
    """A multiple-choice question about an image; ``answer`` is the text of one choice."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: str
    category: str = ""

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise InputError(f"question {self.id!r} has {len(self.choices)} choice(s); give at least 2")
        if self.answer not in self.choices:
            raise InputError(
                f"question {self.id!r}: answer {self.answer!r} is not one of its choices {list(self.choices)}"
            )

    @property
    def answer_index(self) -> int:
        """Index of the correct choice."""
        return self.choices.index(self.answer)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Question:
        """Build from a JSON object."""
        return cls(
            id=str(data["id"]),
            question=str(data["question"]),
            choices=tuple(str(c) for c in data["choices"]),
            answer=str(data["answer"]),
            category=str(data.get("category", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {**asdict(self), "choices": list(self.choices)}


@dataclass(frozen=True)
class Sample:
    """One benchmark item: an image with its human references and questions."""

    id: str
    image: ImageRef | None
    reference_caption: str = ""
    reference_facts: tuple[str, ...] = ()
    questions: tuple[Question, ...] = ()
    domain: str = "default"
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: Captions of fixed baseline models for this image, by model name (pairwise judging).
    baselines: Mapping[str, str] = field(default_factory=dict)
    #: Further views of the same item (CaptionQA has multi-view entries); ``image`` is the first.
    more_images: tuple[ImageRef, ...] = ()

    @property
    def images(self) -> tuple[ImageRef, ...]:
        """Every image of the item, in order (none when images were not loaded)."""
        return () if self.image is None else (self.image, *self.more_images)


@dataclass(frozen=True)
class Caption:
    """A caption of one sample, as produced by a model or read from a file."""

    sample_id: str
    text: str


@dataclass(frozen=True)
class CaptionSet:
    """The captions of one model (or one file) for a benchmark, by sample id."""

    name: str
    captions: Mapping[str, str]
    source: str = ""

    def get(self, sample_id: str) -> Caption | None:
        """Return the caption of ``sample_id``, or None if the set has none."""
        text = self.captions.get(sample_id)
        return None if text is None else Caption(sample_id, text)


#: The version of capbench's results files (score lines and manifests). Files without one are
#: format 0, from before it was written, and are read the same way; a newer one is refused.
#: Format 2 adds each metric's description (:class:`MetricInfo`) to the manifest and each
#: sample's headline units to its score line, so results rank without the metric's code;
#: formats 0 and 1 are read with the installed metric's code instead.
RESULTS_FORMAT = 2


def check_format(found: Any, where: str) -> None:
    """Refuse results written in a format newer than this capbench reads.

    Raises:
        InputError: ``found`` is not a format number, or is newer than :data:`RESULTS_FORMAT`.
    """
    if not isinstance(found, int) or isinstance(found, bool) or found < 0:
        raise InputError(f"{where}: 'format' is {found!r}, not a results format number; rerun with --overwrite")
    if found > RESULTS_FORMAT:
        raise InputError(
            f"{where}: written in results format {found} by a newer capbench; this one reads up to "
            f"{RESULTS_FORMAT}: upgrade capbench (pip install -U capbench)"
        )


@dataclass(frozen=True)
class SampleScore:
    """What one metric found for one captioned sample.

    ``values`` holds the sample's numbers (None where nothing could be scored);
    ``details`` holds the per-judgment records, raw judge replies included;
    ``unscored`` counts judgments that failed (engine error or unparseable reply);
    ``failed`` counts those whose judge call failed (transport or engine error, no reply): such a
    score is not final, and the next run of the same command asks again for exactly those calls.
    """

    sample_id: str
    metric: str
    values: Mapping[str, float | None]
    details: Mapping[str, Any] = field(default_factory=dict)
    unscored: int = 0
    caption_sha256: str = ""
    failed: int = 0
    #: The sample's headline units as (stratum, value, weight) triples (see
    #: :func:`capbench.metrics.base.headline`); None when not recorded (results before format 2).
    units: tuple[tuple[str, float, float], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        out = {
            "format": RESULTS_FORMAT,
            "sample_id": self.sample_id,
            "metric": self.metric,
            "values": dict(self.values),
            "unscored": self.unscored,
            "failed": self.failed,
            "caption_sha256": self.caption_sha256,
            "details": self.details,
        }
        if self.units is not None:
            out["units"] = [list(u) for u in self.units]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleScore:
        """Build from a JSON object written by :meth:`to_dict`."""
        return cls(
            sample_id=str(data["sample_id"]),
            metric=str(data["metric"]),
            values=dict(data["values"]),
            details=dict(data.get("details", {})),
            unscored=int(data.get("unscored", 0)),
            caption_sha256=str(data.get("caption_sha256", "")),
            failed=int(data.get("failed", 0)),
            units=_units(data.get("units")),
        )


def _units(raw: Any) -> tuple[tuple[str, float, float], ...] | None:
    """Read a score line's units, or None when it has none (or they are not [stratum, value, weight] rows)."""
    if not isinstance(raw, list):
        return None
    out = []
    for row in raw:
        if not (isinstance(row, list) and len(row) == 3 and all(isinstance(x, (int, float)) for x in row[1:])):
            return None
        out.append((str(row[0]), float(row[1]), float(row[2])))
    return tuple(out)


#: Names a metric may not take: the leaderboard's own columns and the words that mean "no metric".
RESERVED_METRIC_NAMES = frozenset({"benchmark", "model", "words", "judges", "images", "failed", "none", "all"})


@dataclass(frozen=True)
class MetricInfo:
    """What a metric declares about its results, written with them into each run's manifest.

    With it, the printed tables, the leaderboard and the RL reward table need no code per metric,
    and results rank even where the metric is not installed.
    """

    name: str
    title: str
    description: str = ""
    #: Columns of the printed table as (label, summary key); the first is the headline. A key
    #: "a+b" shows the sum of two summary values; a list value is shown joined by "+".
    columns: tuple[tuple[str, str], ...] = (("score", "score"),)
    #: What the numbers are, e.g. "points (0-100)".
    unit: str = ""
    value_range: tuple[float, float] = (0.0, 100.0)
    higher_is_better: bool = True
    needs: tuple[str, ...] = ()
    judge_roles: tuple[str, ...] = ("text",)
    #: Further tables as (title, summary key of a mapping, value key): one column per mapping key.
    breakdowns: tuple[tuple[str, str, str], ...] = ()
    #: The line under the printed table; ``{judge}`` and run settings (``{answer_mode}``, …) are filled in.
    note: str = ""
    #: RL rewards: (reward name, per-sample value key, divisor into [0, 1]).
    rewards: tuple[tuple[str, str, float], ...] = ()

    @property
    def headline(self) -> str:
        """The summary key of the headline number."""
        return self.columns[0][1]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        out = asdict(self)
        for key in ("columns", "value_range", "needs", "judge_roles", "breakdowns", "rewards"):
            out[key] = [list(x) if isinstance(x, tuple) else x for x in out[key]]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricInfo:
        """Build from a manifest's ``info`` entry.

        Raises:
            InputError: a field is missing or of the wrong shape.
        """
        try:
            low, high = (float(x) for x in data["value_range"])
            return cls(
                name=str(data["name"]),
                title=str(data.get("title") or data["name"]),
                description=str(data.get("description", "")),
                columns=tuple((str(a), str(b)) for a, b in data.get("columns") or [("score", "score")]),
                unit=str(data.get("unit", "")),
                value_range=(low, high),
                higher_is_better=bool(data["higher_is_better"]),
                needs=tuple(str(x) for x in data.get("needs", ())),
                judge_roles=tuple(str(x) for x in data.get("judge_roles", ())),
                breakdowns=tuple((str(a), str(b), str(c)) for a, b, c in data.get("breakdowns", ())),
                note=str(data.get("note", "")),
                rewards=tuple((str(a), str(b), float(c)) for a, b, c in data.get("rewards", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"a metric description is incomplete or malformed ({exc!r})") from None


def read_jsonl(path: str | os.PathLike[str], finished_only: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line of a JSONL file.

    With ``finished_only``, an unterminated last line (a write in progress or cut by a kill) is skipped.

    Raises:
        InputError: the file is missing, a line is not UTF-8, not JSON, or not an object.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; check the path") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    lines = raw.removeprefix(_BOM).split(b"\n")
    if finished_only and raw and not raw.endswith(b"\n"):
        lines = lines[:-1]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        yield number, _decode_json_line(path, number, line)


#: The UTF-8 byte-order mark that Excel and Windows tools write at the start of a file.
_BOM = b"\xef\xbb\xbf"


def _decode_json_line(path: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}:{number}: not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno}); fix that line") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
    return value


def jsonl_line(record: Mapping[str, Any]) -> str:
    """Serialise one record as a JSONL line (with the newline)."""
    return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"


def read_json_file(path: str | os.PathLike[str], what: str) -> Any:
    """Read a whole JSON file; ``what`` names the expected file in the error a missing or broken one gets."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; pass {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a leading byte-order mark is no error
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc}); is this {what}?") from None


def read_caption_file(path: str | os.PathLike[str], name: str | None = None) -> CaptionSet:
    """Read a caption set from JSONL records or a JSON ``{"id": "caption"}`` mapping.

    Accepted formats: JSONL lines ``{"id": ..., "caption": ...}``; a JSON object mapping ids to
    captions (CaptionQA's format); a JSON list of ``{"id", "caption"}`` objects.

    Raises:
        InputError: unreadable file, bad record, duplicate id or key, or an empty caption or one
            holding a NUL or an unpaired surrogate; the message names the file, the line or id, and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: caption file not found; pass a JSONL or JSON file of captions")
    if not path.is_file():
        raise InputError(f"{path}: not a file; pass a JSONL or JSON file of captions")
    pairs = list(_caption_pairs(path))
    captions: dict[str, str] = {}
    where: dict[str, str] = {}
    empty: list[str] = []
    for location, sample_id, text in pairs:
        if sample_id in captions:
            raise InputError(
                f"{path}: id {sample_id!r} appears twice ({where[sample_id]} and {location}); keep one caption per id"
            )
        if not text.strip():
            empty.append(sample_id)
        _check_text(path, f"{location}: caption of id {sample_id!r}", text)
        captions[sample_id] = text
        where[sample_id] = location
    if empty:
        shown = ", ".join(repr(i) for i in empty[:5]) + (" …" if len(empty) > 5 else "")
        raise InputError(
            f"{path}: {len(empty)} empty caption(s) ({shown}); give every id a non-empty caption or drop it"
        )
    if not captions:
        raise InputError(f"{path}: no captions found; expected JSONL {{'id', 'caption'}} lines or a JSON mapping")
    return CaptionSet(name=name or path.stem, captions=captions, source=str(path))


def _check_text(path: Path, what: str, text: str) -> None:
    """Refuse text that engines would silently cut (a NUL) or cannot encode (an unpaired surrogate)."""
    if "\x00" in text:
        raise InputError(f"{path}: {what} holds a NUL character (\\u0000); remove it from the caption")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{path}: {what} holds an unpaired surrogate ({text[exc.start]!r}), which is not text; "
            "write the caption as UTF-8 or escape the whole surrogate pair"
        ) from None


def _caption_pairs(path: Path) -> Iterator[tuple[str, str, str]]:
    """Yield ``(location, id, caption)`` from any accepted caption format."""
    whole = _whole_json(path)
    if isinstance(whole, dict) and not any(k in whole for k in _ID_KEYS):
        for key, text in whole.items():
            if not isinstance(text, str):
                raise InputError(f"{path}: caption of id {key!r} is {type(text).__name__}, expected a string")
            yield f"key {key!r}", str(key), text
    elif isinstance(whole, list):
        for index, obj in enumerate(whole):
            if not isinstance(obj, dict):
                raise InputError(
                    f"{path}: item {index} is {type(obj).__name__}, expected an object with 'id' and 'caption'"
                )
            yield f"item {index}", *_caption_record(path, f"item {index}", obj)
    else:
        # JSONL (a one-line file holding a single record parses as a whole too).
        for number, obj in read_jsonl(path):
            yield f"line {number}", *_caption_record(path, f"line {number}", obj)


def _whole_json(path: Path) -> Any:
    """Return the file parsed as one JSON value, or None if it is JSONL (or not UTF-8)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # -sig: a leading byte-order mark is no error
    except UnicodeDecodeError:
        return None  # the JSONL reader names the line
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    if not text.strip():
        return None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKeyError as exc:
        raise InputError(f"{path}: key {exc.key!r} appears twice in one object; keep one caption per id") from None
    except json.JSONDecodeError as exc:
        first = text.lstrip().split("\n", 1)[0]
        try:
            json.loads(first)
        except json.JSONDecodeError:
            raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); fix the file") from None
        return None


class _DuplicateKeyError(ValueError):
    """A JSON object names a key twice (``json`` would silently keep the last value)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build a JSON object, refusing a key that appears twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


_ID_KEYS = ("id", "image_id", "image_path", "image_name")


def _caption_record(path: Path, location: str, obj: Mapping[str, Any]) -> tuple[str, str]:
    """Read one record; its id may be under 'id' or, as DeCapBench writes it, 'image_path'."""
    key = next((k for k in _ID_KEYS if k in obj), None)
    if key is None or "caption" not in obj:
        raise InputError(f"{path}: {location} lacks 'id' or 'caption' (keys: {sorted(obj)}); each record needs both")
    if not isinstance(obj["caption"], str):
        raise InputError(f"{path}: {location}: 'caption' is {type(obj['caption']).__name__}, expected a string")
    return str(obj[key]), obj["caption"]
