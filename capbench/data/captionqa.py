"""CaptionQA: the official benchmark's images and multiple-choice questions, from Hugging Face.

The data is the Hugging Face dataset ``Borise/CaptionQA`` (one split per domain: natural,
document, ecommerce, embodiedai), read with ``datasets.load_dataset`` (``pip install
'capbench[captionqa]'``) from the hub or from a local folder holding the downloaded dataset
(``README.md`` and ``data/<split>-*.parquet``). Each entry is one sample, keyed by the entry's
``id`` as the official ``qa.py`` keys captions (``nat_001``); its domain is the split it came from.

Questions are kept as the official evaluation uses them: the category is the first of its list
(empty when the list is), the answer is the choice equal to it after stripping whitespace, and
a question whose answer matches no choice or that has fewer than two choices is skipped. A
question's id is ``<entry id>/<position in the entry's list>``, so skipping one renumbers no
other. Skipped questions are listed in their sample's ``meta["skipped_questions"]`` and counted
in the benchmark's description; an entry left with no question is still a sample (it can be
captioned, and CaptionQA gives it no score).

Every sample's ``meta["load_order"]`` is one :class:`LoadOrder`, shared by all samples of a
load: the split as loaded and every entry in dataset order. A stream drawn over a whole split,
as the official ``qa.py`` draws its option shuffles, needs it even when only some samples are
scored (``--limit``, a batch, a resumed run).

With ``with_images``, each image is written once, by content, to
``$CAPBENCH_HOME/images/captionqa/<sha256>.<ext>``; without, images are neither read nor decoded.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from capbench.data import Benchmark
from capbench.errors import ConfigError, InputError, MissingDependencyError
from capbench.hashing import sha256_bytes
from capbench.home import capbench_home
from capbench.images import image_type
from capbench.records import ImageRef, Question, Sample

NAME = "captionqa"
DEFAULT_DATASET = "Borise/CaptionQA"
#: What `capbench list` says instead of loading it: the data is a download, not bundled.
DOWNLOAD = "downloads Borise/CaptionQA on first use, or --dataset DIR (a local copy)"
SPLITS = ("natural", "document", "ecommerce", "embodiedai")
DESCRIPTION = "CaptionQA: 657 entries in 4 domains with multiple-choice questions (Hugging Face Borise/CaptionQA)"

NO_MATCH = "answer matches no choice"
TOO_FEW_CHOICES = "fewer than 2 choices"


@dataclass(frozen=True)
class LoadOrder:
    """The entries of one load in dataset order, shared by its samples as ``meta["load_order"]``."""

    split: str
    """The split as ``qa.py --split`` names it: "all" (the four domains in order) or one domain; a
    comma-separated list otherwise."""
    entries: tuple[tuple[str, str, tuple[Question, ...]], ...] = field(repr=False)
    """(entry id, domain, kept questions) of every entry, in the order loaded."""


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TEXT_COLUMNS = ("id", "questions", "domain", "image_paths")


def load(with_images: bool = False, dataset: str = DEFAULT_DATASET, split: str = "all") -> Benchmark:
    """Load CaptionQA from a hub id or a local folder; with ``with_images``, write its images out.

    Args:
        with_images: Write every image under ``$CAPBENCH_HOME`` and reference it; otherwise
            images are not read and every sample's ``image`` is None.
        dataset: A Hugging Face dataset id, or a folder holding that dataset as downloaded.
        split: One domain, a comma-separated list of domains, or "all" (the four, in order).

    Raises:
        ConfigError: an unknown split, ``datasets`` not installed, or a dataset that cannot be reached.
        InputError: the data lacks a split or a column, or an entry id appears twice.
    """
    splits = parse_splits(split)
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError("datasets", "captionqa", "the CaptionQA loader") from None
    source = _resolve(dataset)
    samples: list[Sample] = []
    origin: dict[str, str] = {}
    for name in splits:
        for entry in _entries(datasets, source, name, with_images):
            sample = _sample(entry, name, with_images)
            if sample.id in origin:
                raise InputError(
                    f"{dataset}: entry id {sample.id!r} appears in split {origin[sample.id]!r} and again in "
                    f"{name!r}; captions are keyed by id, so each must be unique"
                )
            origin[sample.id] = name
            samples.append(sample)
    order = LoadOrder(
        "all" if splits == SPLITS else ",".join(splits), tuple((s.id, s.domain, s.questions) for s in samples)
    )
    samples = [replace(s, meta={**s.meta, "load_order": order}) for s in samples]
    skipped = sum(len(s.meta["skipped_questions"]) for s in samples)
    questions = sum(len(s.questions) for s in samples)
    description = (
        f"CaptionQA ({dataset}, {', '.join(splits)}): {len(samples)} entries, {questions} questions, "
        f"{skipped} skipped ({NO_MATCH} or {TOO_FEW_CHOICES})"
    )
    return Benchmark(NAME, tuple(samples), description)


def parse_splits(split: str) -> tuple[str, ...]:
    """Return the domains that ``split`` names: one, a comma-separated list, or "all".

    Raises:
        ConfigError: a name that is not one of CaptionQA's domains.
    """
    if split.strip() == "all":
        return SPLITS
    names = tuple(dict.fromkeys(part.strip() for part in split.split(",") if part.strip()))
    unknown = [n for n in names if n not in SPLITS]
    if unknown or not names:
        raise ConfigError(
            f"unknown CaptionQA split {', '.join(map(repr, unknown)) or repr(split)}; choose 'all', one of "
            f"{', '.join(SPLITS)}, or a comma-separated list of them"
        )
    return names


def skipped_questions(benchmark: Benchmark) -> list[tuple[str, int, str]]:
    """Return ``(entry id, question position, reason)`` for each question the loader skipped."""
    return [
        (s.id, int(q["index"]), str(q["reason"]))
        for s in benchmark.samples
        for q in s.meta.get("skipped_questions", ())
    ]


def _resolve(dataset: str) -> str:
    """Return ``dataset`` as ``load_dataset`` takes it: a local folder's path, or a hub id."""
    path = Path(dataset).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{path}: not a folder; pass the downloaded dataset's folder or a hub id")
        return str(path)
    if _HUB_ID.fullmatch(dataset):
        return dataset
    raise ConfigError(f"{dataset}: no such folder; {_download_hint()}")


def _download_hint(dataset: str = DEFAULT_DATASET) -> str:
    """Say how to get the dataset onto this machine."""
    return (
        f"download the dataset once with `hf download {dataset} --repo-type dataset --local-dir DIR` "
        "and pass that folder with --dataset"
    )


def _entries(datasets: Any, source: str, split: str, with_images: bool) -> Iterator[dict[str, Any]]:
    """Yield one split's entries as plain dicts, images (when wanted) as undecoded ``{bytes, path}``."""
    where = f"CaptionQA dataset {source!r}"
    try:
        table = datasets.load_dataset(source, split=split)
    except ValueError as exc:
        if "Unknown split" in str(exc):
            raise InputError(
                f"{where} has no split {split!r} ({exc}); pass --split with the splits it has, "
                "or a folder holding CaptionQA's README.md and data/"
            ) from exc
        raise InputError(f"{where}: split {split!r} cannot be read ({exc})") from exc
    except (ConnectionError, FileNotFoundError) as exc:
        if Path(source).is_dir():
            raise ConfigError(
                f"{where} cannot be loaded ({exc}); the folder must hold README.md and data/<split>-*.parquet: "
                f"{_download_hint()}"
            ) from exc
        raise ConfigError(f"{where} cannot be loaded ({exc}); {_download_hint(source)}") from exc
    except Exception as exc:  # datasets raises many kinds; each means the data cannot be used
        raise InputError(f"{where}: split {split!r} cannot be read ({type(exc).__name__}: {exc})") from exc
    images = ["images"] if with_images else []
    missing = [c for c in ("id", "questions", *images) if c not in table.column_names]
    if missing:
        raise InputError(
            f"{where}, split {split!r}: no column {', '.join(missing)} (it has {', '.join(table.column_names)}); "
            "is this CaptionQA?"
        )
    # Arrow rows carry image files as raw bytes: nothing is decoded, and dropped columns are never read.
    rows = table.select_columns([c for c in (*_TEXT_COLUMNS, *images) if c in table.column_names])
    for batch in rows.with_format("arrow").iter(batch_size=64):
        yield from batch.to_pylist()


def _sample(entry: Mapping[str, Any], split: str, with_images: bool) -> Sample:
    """Build the sample of one entry (see the module docstring for what is kept and skipped)."""
    entry_id = entry.get("id")
    if not isinstance(entry_id, str) or not entry_id.strip():
        raise InputError(f"CaptionQA split {split!r}: an entry has no id ({entry_id!r}); is this CaptionQA?")
    questions: list[Question] = []
    skipped: list[dict[str, Any]] = []
    for index, raw in enumerate(entry.get("questions") or ()):
        question = _question(entry_id, index, raw)
        if isinstance(question, Question):
            questions.append(question)
        else:
            skipped.append({"index": index, "reason": question})
    images = _images(entry_id, entry.get("images") or ()) if with_images else ()
    return Sample(
        id=entry_id,
        image=images[0] if images else None,
        more_images=tuple(images[1:]),
        questions=tuple(questions),
        domain=split,
        meta={
            "split": split,
            "domain_field": entry.get("domain") or "",
            "image_paths": list(entry.get("image_paths") or ()),
            "skipped_questions": skipped,
        },
    )


def _question(entry_id: str, index: int, raw: Mapping[str, Any]) -> Question | str:
    """Return the question at ``index`` of an entry, or the reason it is skipped."""
    choices = tuple(str(c) for c in raw.get("choices") or ())
    if len(choices) < 2:
        return TOO_FEW_CHOICES
    answer = raw.get("answer")
    wanted = answer.strip() if isinstance(answer, str) else None
    match = next((c for c in choices if c.strip() == wanted), None)
    if match is None:
        return NO_MATCH
    category = raw.get("category")
    if isinstance(category, Sequence) and not isinstance(category, str):
        category = category[0] if category else ""
    return Question(
        id=f"{entry_id}/{index}",
        question=str(raw.get("question") or ""),
        choices=choices,
        answer=match,
        category=str(category or ""),
    )


def _images(entry_id: str, raw: Sequence[Mapping[str, Any] | None]) -> tuple[ImageRef, ...]:
    """Write an entry's embedded image files under ``$CAPBENCH_HOME`` and reference them."""
    refs = []
    for number, image in enumerate(raw):
        data = image.get("bytes") if image else None
        if not data:
            raise InputError(f"CaptionQA entry {entry_id!r}: image {number} has no embedded bytes; is this CaptionQA?")
        refs.append(materialize(data, str(image.get("path") or "") if image else ""))
    return tuple(refs)


def materialize(data: bytes, name: str = "") -> ImageRef:
    """Return the file holding ``data`` under ``$CAPBENCH_HOME``, writing it on first use.

    The file is named by the SHA-256 of its bytes, so each distinct image is written once; the
    extension comes from the bytes' signature, else from ``name``, the image's name in the data.
    """
    digest = sha256_bytes(data)
    folder = capbench_home() / "images" / NAME
    target = folder / f"{digest}.{image_type(data, name)[1]}"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        # A unique temporary name, then an atomic rename: concurrent loaders never see half a file.
        tmp = folder / f".{digest}.{uuid.uuid4().hex}.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return ImageRef(str(target), digest)
