"""The per-sample inspector: one self-contained HTML page showing why each caption scored what it did.

:func:`collect` reads run folders (``capbench eval``) and arena folders (``capbench arena``) of one
benchmark, with the benchmark's samples (images, references, questions); :func:`render` turns them
into a page; :func:`write_report` does both and writes the file atomically. The page holds every
judgment the score lines record, embeds its thumbnails as ``data:`` URIs and loads nothing, so it
opens from disk; its inline script only adds sorting and filtering (``capbench.inspector_page``
holds the styles and the script). Anchors come from :func:`capbench.anchors.anchor`, so the
leaderboard page links its cells here. docs/inspect.md describes the page.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capbench.errors import CapbenchError, InputError
from capbench.hashing import sha256_text
from capbench.records import MetricInfo, Sample, SampleScore, read_caption_file, read_json_file
from capbench.results import SampleRecord, SetResult, read_run
from capbench.runs import JsonlLog, atomic_write_text

#: The anchors' metric name of ``capbench arena``'s battles (no metric can take it: it is the folder's name).
ARENA = "_arena"


@dataclass
class Inspection:
    """What a report shows: one benchmark's caption sets, their scores, battles and samples."""

    benchmark: str
    sets: dict[str, SetResult]
    #: Caption set -> sample id -> caption (from run folders, and for battles from caption files by hash).
    captions: dict[str, dict[str, str]]
    metrics: list[str]
    #: The sample ids shown, in benchmark order.
    ids: list[str]
    samples: dict[str, Sample]
    battles: list[dict[str, Any]] = field(default_factory=list)
    rankings: dict[str, Any] | None = None
    #: Sample id -> why its image is not shown (no image found, or the benchmark was loaded without).
    missing_images: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @functools.cached_property
    def records(self) -> dict[str, dict[str, SampleRecord]]:
        """Caption set -> sample id -> its record (caption and scores)."""
        return {n: {r.sample_id: r for r in result.samples} for n, result in self.sets.items()}

    @functools.cached_property
    def infos(self) -> dict[str, MetricInfo]:
        """What each metric shown declares (from the first run that describes it; else its name alone)."""
        infos: dict[str, MetricInfo] = {}
        for result in self.sets.values():
            for metric, info in result.info.items():
                infos.setdefault(metric, info)
        return {m: infos.get(m) or MetricInfo(name=m, title=m) for m in self.metrics}

    @property
    def names(self) -> list[str]:
        """Every caption set shown: the scored ones, then any that only took part in battles."""
        fought = [n for b in self.battles for n in (b["model_a"], b["model_b"])]
        return list(dict.fromkeys([*self.sets, *sorted(set(fought))]))


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote."""

    path: Path
    bytes: int
    sets: list[str]
    metrics: list[str]
    samples: int
    battles: int
    warnings: list[str]


def write_report(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], **options: Any) -> Report:
    """Read the runs under ``paths`` (see :func:`collect` for ``options``) and write their HTML report to ``out``.

    ``thumbnail`` (pixels, default 320) sets the longer side of the embedded images.
    """
    from capbench.inspector_page import render

    thumbnail = int(options.pop("thumbnail", 320))
    inspection = collect(paths, **options)
    page = render(inspection, thumbnail)
    target = Path(out)
    if target.is_dir():
        raise InputError(f"{target}: is a folder; pass the report's file name, e.g. {target / 'inspect.html'}")
    atomic_write_text(target, page)
    return Report(
        path=target,
        bytes=len(page.encode("utf-8")),
        sets=inspection.names,
        metrics=inspection.metrics,
        samples=len(inspection.ids),
        battles=len(inspection.battles),
        warnings=inspection.warnings,
    )


def collect(
    paths: Sequence[str | os.PathLike[str]],
    benchmark: str | None = None,
    metrics: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    limit: int | None = None,
    caption_files: Sequence[str | os.PathLike[str]] = (),
    images: bool = True,
    benchmark_options: Mapping[str, Any] | None = None,
) -> Inspection:
    """Gather what a report shows from results folders, benchmark folders, run folders or arena folders.

    Args:
        paths: what ``capbench eval`` / ``capbench arena`` wrote: a results folder, one benchmark's
            folder in it, one run folder (``<results>/<benchmark>/<set>``) or an arena folder (``_arena``).
        benchmark: the benchmark to show, when the folders hold several.
        metrics: only these metrics (default: every one found).
        names: only these caption sets (default: every one found).
        limit: only the first N images, in benchmark order.
        caption_files: caption files whose texts show in arena battles (matched by content).
        images: embed the images (False: placeholders, and the benchmark is loaded without images).
        benchmark_options: options of the benchmark's loader (``images_dir``, ``data_file``, …).

    Raises:
        InputError: a path holds no results, the folders mix benchmarks, a name is unknown, or two
            runs share a caption set's name.
    """
    if not paths:
        raise InputError("no results given; pass a results folder (e.g. results/) or run folders")
    runs, arenas = _find_all(paths)
    by_benchmark: dict[str, list[SetResult]] = {}
    for folder in runs:
        result = read_run(folder)
        by_benchmark.setdefault(result.benchmark, []).append(result)
    arena_of = {folder: _arena_benchmark(folder) for folder in arenas}
    found = sorted({*by_benchmark, *arena_of.values()})
    chosen = _choose_benchmark(found, benchmark, paths)
    sets = _unique_sets(by_benchmark.get(chosen, []), names)
    inspection = Inspection(chosen, sets, {}, [], [], {}, sources=[str(p) for p in paths])
    for folder in (f for f, b in arena_of.items() if b == chosen):
        _read_arena(folder, inspection, names)
    if not inspection.sets and not inspection.battles:
        wanted = f"of caption set(s) {', '.join(names)} " if names else ""
        raise InputError(f"{', '.join(map(str, paths))}: no runs or battles {wanted}of benchmark {chosen!r}")
    inspection.metrics = _metrics(sets, metrics)
    bench = _load_benchmark(chosen, images, dict(benchmark_options or {}), inspection.warnings)
    inspection.samples = {s.id: s for s in bench.samples} if bench else {}
    inspection.ids = _ids(inspection, [s.id for s in bench.samples] if bench else [], limit)
    inspection.captions = {n: {s.sample_id: s.caption for s in r.samples if s.caption} for n, r in sets.items()}
    if inspection.battles:
        examples = bench.example_captions.values() if bench else ()
        _battle_captions(inspection, [*caption_files, *examples])
    inspection.missing_images = _missing_images(inspection, images, bench is not None)
    return inspection


# ---------------------------------------------------------------- finding and reading results


def _find_all(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[Path]]:
    runs: list[Path] = []
    arenas: list[Path] = []
    for raw in paths:
        found_runs, found_arenas = _find(Path(raw))
        runs += [r for r in found_runs if r not in runs]
        arenas += [a for a in found_arenas if a not in arenas]
    return runs, arenas


def _find(path: Path) -> tuple[list[Path], list[Path]]:
    """Return the run folders and arena folders at or under ``path`` (shards and other ``_`` folders left out)."""
    if (path / "manifest.json").is_file():
        return [path], []
    if (path / "battles.jsonl").is_file():
        return [], [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such folder; pass a results folder (e.g. results/) or a run folder in it")

    def hidden(found: Path) -> bool:
        return any(part.startswith(("_", ".")) for part in found.relative_to(path).parts[:-1])

    manifests = [*sorted(path.glob("*/manifest.json")), *sorted(path.glob("*/*/manifest.json"))]
    runs = [m.parent for m in manifests if not hidden(m)]
    battles = [*sorted(path.glob("_arena/battles.jsonl")), *sorted(path.glob("*/_arena/battles.jsonl"))]
    arenas = [b.parent for b in battles]
    if not runs and not arenas:
        raise InputError(
            f"{path}: no results in it (no <benchmark>/<set>/manifest.json, no _arena/battles.jsonl); pass the "
            "folder `capbench eval` or `capbench arena` wrote to (--results-dir), or wait until a run has finished"
        )
    return runs, arenas


def _arena_benchmark(folder: Path) -> str:
    config = folder / "config.json"
    if config.is_file():
        stored = read_json_file(config, "an arena config.json")
        if isinstance(stored, dict) and isinstance(stored.get("benchmark"), str):
            return stored["benchmark"]
    return folder.parent.name


def _choose_benchmark(found: list[str], wanted: str | None, paths: Sequence[Any]) -> str:
    where = ", ".join(map(str, paths))
    if wanted is not None:
        if wanted not in found:
            raise InputError(f"{where}: no results of benchmark {wanted!r}; they have: {', '.join(found)}")
        return wanted
    if len(found) > 1:
        raise InputError(f"{where}: results of several benchmarks ({', '.join(found)}); pass --benchmark NAME")
    return found[0]


def _unique_sets(results: list[SetResult], names: Sequence[str] | None) -> dict[str, SetResult]:
    sets: dict[str, SetResult] = {}
    for result in results:
        if names and result.name not in names:
            continue
        if result.name in sets:
            raise InputError(
                f"two runs of caption set {result.name!r} ({sets[result.name].path} and {result.path}); "
                "pass one of them, or choose the sets with --name"
            )
        sets[result.name] = result
    unknown = [n for n in names or () if n not in sets]
    if unknown and results:
        raise InputError(
            f"no caption set {unknown[0]!r} in the results; they have: {', '.join(r.name for r in results)}"
        )
    return sets


def _read_arena(folder: Path, inspection: Inspection, names: Sequence[str] | None) -> None:
    rows = [row for _, row in JsonlLog(folder / "battles.jsonl").rows(repair=False)]
    battles = [r for r in rows if isinstance(r.get("sample_id"), str) and "model_a" in r and "model_b" in r]
    if len(battles) < len(rows):
        inspection.warnings.append(f"{folder / 'battles.jsonl'}: {len(rows) - len(battles)} line(s) are not battles")
    if names:
        battles = [b for b in battles if b["model_a"] in names and b["model_b"] in names]
    inspection.battles += battles
    rankings = folder / "rankings.json"
    if rankings.is_file():
        stored = read_json_file(rankings, "an arena rankings.json")
        inspection.rankings = stored if isinstance(stored, dict) else None


def _metrics(sets: Mapping[str, SetResult], wanted: Sequence[str] | None) -> list[str]:
    from capbench.leaderboard import metric_order

    found = metric_order(m for r in sets.values() for m in r.summary)
    if not wanted:
        return found
    unknown = [m for m in wanted if m not in found]
    if unknown:
        have = ", ".join(found) or "none"
        raise InputError(f"no metric {unknown[0]!r} in these results; they have: {have} (--metric)")
    return [m for m in found if m in wanted]


def _load_benchmark(name: str, images: bool, options: dict[str, Any], warnings: list[str]) -> Any:
    """Load the benchmark for references, questions and images; without it the page shows what the results hold."""
    from capbench.data import load_benchmark

    try:
        return load_benchmark(name, with_images=images, **options)
    except CapbenchError as exc:
        if not images:
            warnings.append(f"benchmark {name!r} could not be loaded ({exc}); references and questions not shown")
            return None
        warnings.append(f"images of benchmark {name!r} not shown: {exc}")
    try:
        return load_benchmark(name, with_images=False, **options)
    except CapbenchError as exc:
        warnings.append(f"benchmark {name!r} could not be loaded ({exc}); references and questions not shown")
        return None


def _ids(inspection: Inspection, order: list[str], limit: int | None) -> list[str]:
    """The samples any set scored or any battle judged, in benchmark order (unknown ids last), the first ``limit``."""
    present = {s.sample_id for r in inspection.sets.values() for s in r.samples}
    present |= {b["sample_id"] for b in inspection.battles}
    ids = [i for i in order if i in present] + sorted(present - set(order))
    return ids if limit is None else ids[:limit]


def _battle_captions(inspection: Inspection, files: Iterable[str | os.PathLike[str]]) -> None:
    """Find the captions battles were fought with, by content hash: in the runs, the given files, the examples."""
    by_hash: dict[str, str] = {}
    for captions in inspection.captions.values():
        by_hash.update((sha256_text(t), t) for t in captions.values())
    for path in files:
        by_hash.update((sha256_text(t), t) for t in read_caption_file(path).captions.values())
    for battle in inspection.battles:
        for side in ("a", "b"):
            text = by_hash.get(str(battle.get(f"caption_{side}_sha256")))
            if text is not None:
                inspection.captions.setdefault(battle[f"model_{side}"], {}).setdefault(battle["sample_id"], text)


def _missing_images(inspection: Inspection, images: bool, loaded: bool) -> dict[str, str]:
    missing = {}
    for sample_id in inspection.ids:
        sample = inspection.samples.get(sample_id)
        if not images:
            missing[sample_id] = "images left out (--no-images)"
        elif sample is None:
            missing[sample_id] = "not in the benchmark as loaded" if loaded else "the benchmark could not be loaded"
        elif not sample.images:
            source = sample.meta.get("image_source") or sample.meta.get("image") or ""
            missing[sample_id] = (
                f"no image found ({source})" if isinstance(source, str) and source else "no image found"
            )
    return missing


# ---------------------------------------------------------------- per-sample numbers


def sample_value(score: SampleScore, key: str | None = None) -> float | None:
    """The sample's headline number: the weighted mean of its units, else its ``key`` value (or ``score``)."""
    if score.units:
        weight = sum(w for _, _, w in score.units)
        if weight:
            return sum(v * w for _, v, w in score.units) / weight
    for name in (key, "score"):
        value = score.values.get(name) if name else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def thumbnail_uri(path: str | os.PathLike[str], size: int) -> str:
    """A small JPEG of the image at ``path`` as a ``data:`` URI.

    Raises:
        OSError: the file is missing or cannot be decoded (the caller shows a placeholder).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.thumbnail((size, size))
            small = image.convert("RGB")
    except (UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise OSError(str(exc)) from None
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=80, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def short_hash(text: str) -> str:
    """A short stable id for a string (the page's element ids)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def as_json(value: Any) -> str:
    """Pretty JSON of a record's leftover fields (any value; non-JSON ones as their repr)."""
    return json.dumps(value, indent=1, ensure_ascii=False, sort_keys=True, default=repr)
