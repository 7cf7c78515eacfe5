"""One evaluation split over several processes or nodes, and the merge of its shards into one run.

``capbench eval --shard I/N`` (:attr:`capbench.config.EvalConfig.shard`) scores shard ``I`` of
``N`` (counted from 0) of the selected samples into ``<results>/<benchmark>/_shards/<caption
set>/<I>-of-<N>/``: a run folder like any other (it resumes after a kill the same way), whose
manifest also says which part it is, the ids it covers, hashes of the whole selection and of the
settings, and the settings that built its metrics. :func:`merge_shards` checks that N shards
belong together and are finished, then writes ``<results>/<benchmark>/<caption set>/`` as an
unsharded run writes it: the same score records in benchmark order, and each metric's summary
computed by the metric from all of them. See docs/sharding.md.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capbench import __version__
from capbench.build import build_metrics
from capbench.config import EvalConfig, Shard
from capbench.coverage import merge_coverage
from capbench.errors import ConfigError, InputError
from capbench.evaluation import config_changes, git_commit, redact_command, versions
from capbench.hashing import content_hash, sha256_text
from capbench.metrics import Metric
from capbench.records import RESULTS_FORMAT, SampleScore, check_format, jsonl_line
from capbench.results import SetResult, read_run
from capbench.runs import (
    SHARD_FOLDER,
    SHARDS,
    JsonlLog,
    RunDir,
    ScoreLog,
    publish_folder,
    safe_name,
    writer_state,
)

#: The :class:`EvalConfig` fields that build an evaluation's metrics (:func:`capbench.build.build_metrics`).
SCORING_FIELDS = (
    "metrics", "judge", "answer_mode", "fact_protocol", "arena_order", "caprl_samples", "prompt_dir", "seed",
)  # fmt: skip


def scoring_settings(config: EvalConfig) -> dict[str, Any]:
    """Return the fields of ``config`` that build its metrics, as JSON: a shard records them for the merge."""
    plain = config.to_dict()
    return {name: plain[name] for name in SCORING_FIELDS}


@dataclass
class ShardFolder:
    """One shard's folder, as a merge finds it."""

    path: Path
    shard: Shard
    #: Its manifest.json (None: nothing was scored there yet, or it only generated captions).
    manifest: dict[str, Any] | None
    #: Its generation.json (None: its captions came from a file).
    generation: dict[str, Any] | None

    def __str__(self) -> str:
        return f"shard {self.shard} ({self.path})"

    @property
    def block(self) -> dict[str, Any]:
        """What it says about the evaluation it is a part of (its manifest's, else its generation's)."""
        source = self.manifest if self.manifest is not None else self.generation
        return dict((source or {}).get("shard") or {})


@dataclass
class MergeResult:
    """One merged caption set: where it went, and its results."""

    benchmark: str
    name: str
    path: Path
    shards: int
    samples: int
    #: The merged run (None when the shards only generated captions: ``--metrics none``).
    result: SetResult | None
    #: True when the folder already held this very merge, and was left as it was.
    unchanged: bool = False
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (one entry of ``capbench merge --json``)."""
        return {
            "benchmark": self.benchmark,
            "caption_set": self.name,
            "path": str(self.path),
            "shards": self.shards,
            "samples": self.samples,
            "unchanged": self.unchanged,
            "files": self.files,
            "metrics": self.result.summary if self.result is not None else {},
        }


def merge_shards(
    *sources: str | os.PathLike[str],
    into: str | os.PathLike[str] | None = None,
    benchmark: str | None = None,
    names: Sequence[str] = (),
    overwrite: bool = False,
) -> list[MergeResult]:
    """Merge the shards of ``capbench eval --shard I/N`` into ordinary run folders, identical to unsharded runs.

    ``sources`` are results folders (default ``results``) or shard folders; every shard below
    them is found, and the shards of each caption set are merged into
    ``<into>/<benchmark>/<caption set>/`` (``into`` defaults to the results folder holding the
    shards). Every caption set is checked before anything is written, and each merged run
    appears whole (built in a temporary folder, then renamed). Merging again is a no-op.

    Raises:
        InputError: no shards; missing, duplicate, unfinished shards, shards of different
            settings, splits or captions; a target folder holding another run (unless ``overwrite``).
        ConfigError: the metrics the shards recorded cannot be built here.
    """
    groups = find_shards(sources or ("results",))
    wanted = {safe_name(n) for n in names}
    groups = {
        key: found
        for key, found in groups.items()
        if (benchmark is None or key[0] == safe_name(benchmark)) and (not wanted or key[1] in wanted)
    }
    if not groups:
        where = ", ".join(str(s) for s in sources or ("results",))
        raise InputError(
            f"no shards found in {where}" + (" for the benchmark and names given" if benchmark or names else "")
            + "; run `capbench eval ... --shard I/N` first (it writes <results>/<benchmark>/_shards/)"
        )  # fmt: skip
    root = Path(into) if into is not None else _results_root(groups)
    plans = []
    for _, found in sorted(groups.items()):  # every check before any write
        try:
            plans.append(_check(found))
        except InputError as exc:
            if len(groups) == 1:
                raise
            raise InputError(f"{exc} (nothing was merged; --name merges the other caption sets alone)") from None
    return [_write(plan, root, overwrite) for plan in plans]


def find_shards(sources: Iterable[str | os.PathLike[str]]) -> dict[tuple[str, str], list[ShardFolder]]:
    """Find every shard folder in ``sources``, by (benchmark folder, caption set folder).

    Raises:
        InputError: a source that is not a folder, or a shard whose files cannot be read.
    """
    found: dict[tuple[str, str], list[ShardFolder]] = {}
    seen: set[Path] = set()
    for source in sources:
        root = Path(source)
        if not root.is_dir():
            raise InputError(f"{root}: no such folder; pass the results folder `capbench eval --shard` wrote to")
        folders = [root] if _is_shard(root) else sorted(p for p in root.rglob("*-of-*") if _is_shard(p))
        for folder in folders:
            if folder.resolve() not in seen:
                seen.add(folder.resolve())
                found.setdefault((folder.parents[2].name, folder.parent.name), []).append(_read_folder(folder))
    return found


def _is_shard(path: Path) -> bool:
    return path.is_dir() and SHARD_FOLDER.fullmatch(path.name) is not None and path.parent.parent.name == SHARDS


def _read_folder(folder: Path) -> ShardFolder:
    index, count = (int(n) for n in SHARD_FOLDER.fullmatch(folder.name).groups())  # type: ignore[union-attr]
    shard = Shard.parse(f"{index}/{count}", f"shard folder {folder}")
    manifest, generation = _read_json(folder / "manifest.json"), _read_json(folder / "generation.json")
    for document, path in ((manifest, folder / "manifest.json"), (generation, folder / "generation.json")):
        block = (document or {}).get("shard")
        if document is not None and not isinstance(block, dict):
            raise InputError(f"{path}: not a shard's file (no 'shard' entry); move it out of {folder.parent}")
        if document is manifest and manifest is not None and not isinstance(manifest.get("metrics"), dict):
            raise InputError(
                f"{path}: not a capbench manifest (no 'metrics' mapping); rerun the shard with --overwrite"
            )
        if block is not None and (block.get("index"), block.get("count")) != (index, count):
            raise InputError(
                f"{path}: written by shard {block.get('index')}/{block.get('count')}, but its folder says {shard}; "
                "put each shard folder back under its own name"
            )
    return ShardFolder(folder, shard, manifest, generation)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable ({exc}); rerun that shard's command with --overwrite") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: not a capbench file (a JSON {type(document).__name__}); move it away")
    check_format(document.get("format", RESULTS_FORMAT), str(path))
    return document


def _results_root(groups: Mapping[tuple[str, str], list[ShardFolder]]) -> Path:
    """The results folder holding every shard (a shard lives in ``<results>/<benchmark>/_shards/<set>/<I>-of-<N>``)."""
    roots = sorted({str(f.path.parents[3]) for found in groups.values() for f in found})
    if len(roots) > 1:
        raise InputError(
            f"the shards are in several results folders ({', '.join(roots)}); say where the merged runs go with --into"
        )
    return Path(roots[0])


# ---------------------------------------------------------------- the checks


@dataclass
class _Plan:
    """A checked set of shards and what the merged folder will hold."""

    benchmark: str
    name: str
    shards: list[ShardFolder]
    order: list[str]
    files: dict[str, str]
    summaries: dict[str, dict[str, Any]]


def _check(found: list[ShardFolder]) -> _Plan:
    """Check that ``found`` are the N finished shards of one evaluation; return what their merge writes.

    Raises:
        InputError: the first problem, naming the shards concerned and what to do.
    """
    where = f"{found[0].path.parents[2].name}/{found[0].path.parent.name}"
    shards = _complete_set(found, where)
    scored = any(f.manifest is not None for f in shards)
    for folder in shards:
        _check_finished(folder, where, scored)
    first = shards[0]
    for folder in shards[1:]:
        _check_same(first, folder, where)
    order = _order(shards, where)
    captions = _captions(shards, scored)
    missing = [i for i in order if i not in captions]
    if missing:  # a shard that captioned only part of its images is refused as unfinished above
        raise InputError(f"cannot merge {where}: no caption for {len(missing)} sample(s) (e.g. {missing[0]!r})")
    texts = [captions[i] for i in order]
    stated = first.block["selection"].get("captions_sha256")
    if stated is not None and content_hash(dict(zip(order, texts, strict=True))) != stated:
        raise InputError(
            f"cannot merge {where}: the shards' captions.jsonl do not add up to the captions they were run on "
            "(a file edited after the run?); rerun every shard with --overwrite"
        )
    files: dict[str, str] = {}
    summaries: dict[str, dict[str, Any]] = {}
    if scored:
        files["captions.jsonl"] = "".join(jsonl_line({"id": i, "caption": captions[i]}) for i in order)
        for metric in _metrics(first, where):
            scores = _scores(shards, metric.name, captions, where)
            ordered = [scores[i] for i in order]
            summaries[metric.name] = metric.summarize(ordered)
            files[f"{safe_name(metric.name)}.jsonl"] = "".join(jsonl_line(s.to_dict()) for s in ordered)
    if first.generation is not None:
        rows = {}
        for folder in shards:
            rows.update((r["id"], r) for _, r in JsonlLog(folder.path / "generated.jsonl").rows(repair=False))
        files["generated.jsonl"] = "".join(jsonl_line(rows[i]) for i in order)
    benchmark = str((first.manifest or {}).get("benchmark") or first.path.parents[2].name)
    name = str(((first.manifest or {}).get("caption_set") or {}).get("name") or first.generation["caption_set"])  # type: ignore[index]
    return _Plan(benchmark, name, shards, order, files, summaries)


def _complete_set(found: list[ShardFolder], where: str) -> list[ShardFolder]:
    """Return the shards sorted by index, after checking there is exactly one of each of 0 … N-1."""
    counts = sorted({f.shard.count for f in found})
    if len(counts) > 1:
        splits = "; ".join(
            f"of {n}: {', '.join(str(f.path) for f in found if f.shard.count == n)}" for n in counts
        )  # fmt: skip
        raise InputError(
            f"cannot merge {where}: shards of different splits ({splits}); keep the shards of one --shard I/N "
            "split and move the others away"
        )
    count = counts[0]
    by_index: dict[int, list[ShardFolder]] = {}
    for folder in found:
        by_index.setdefault(folder.shard.index, []).append(folder)
    twice = {i: fs for i, fs in by_index.items() if len(fs) > 1}
    if twice:
        index, folders = min(twice.items())
        raise InputError(
            f"cannot merge {where}: shard {index}/{count} appears {len(folders)} times "
            f"({', '.join(str(f.path) for f in folders)}); keep one of them and move the others away"
        )
    missing = [f"{i}/{count}" for i in range(count) if i not in by_index]
    if missing:
        raise InputError(
            f"cannot merge {where}: missing shard(s) {', '.join(missing)} of {count}; run the same `capbench eval` "
            f"command with --shard {missing[0]}{' (and the others)' if len(missing) > 1 else ''}, then merge again"
        )
    return [by_index[i][0] for i in range(count)]


def _check_finished(folder: ShardFolder, where: str, scored: bool) -> None:
    """Refuse a shard that is being written, was killed, was interrupted, or left work undone."""
    rerun = f"rerun its command (`capbench eval ... --shard {folder.shard}`) to finish it, then merge again"
    state, holder = writer_state(folder.path)
    if state == "running":
        raise InputError(f"cannot merge {where}: {folder} is still being written ({holder}); wait for it to finish")
    if state == "killed":
        raise InputError(f"cannot merge {where}: {folder} was killed mid-run (its .lock is left); {rerun}")
    generation = folder.generation
    if generation is not None and generation.get("status") != "complete":
        failed = generation.get("failed") or {}
        why = f"{len(failed)} image(s) got no caption" if failed else f"captioning is {generation.get('status')!r}"
        raise InputError(f"cannot merge {where}: {folder} is unfinished ({why}); {rerun}")
    manifest = folder.manifest
    if manifest is None and generation is None:
        raise InputError(f"cannot merge {where}: {folder} has written nothing yet; {rerun}")
    if scored and manifest is None:
        raise InputError(f"cannot merge {where}: {folder} has scored nothing yet (no manifest.json); {rerun}")
    if manifest is not None and manifest.get("status") != "complete":
        raise InputError(f"cannot merge {where}: {folder} is unfinished (status {manifest.get('status')!r}); {rerun}")
    settings = folder.block.get("settings") or {}
    if manifest is not None and not all(isinstance(settings.get(m), dict) for m in manifest["metrics"]):
        raise InputError(
            f"cannot merge {where}: {folder} does not record the settings that built its metrics (an Evaluator "
            "made without settings=); rerun it through capbench.evaluate or `capbench eval --shard`"
        )


def _check_same(first: ShardFolder, other: ShardFolder, where: str) -> None:
    """Refuse two shards of different settings, judges, prompts, selections or captions."""
    pair = f"shard {other.shard} ({other.path}) and shard {first.shard}"
    one, two = first.block, other.block
    if (first.manifest is None) != (other.manifest is None) or (first.generation is None) != (other.generation is None):
        raise InputError(f"cannot merge {where}: {pair} disagree on whether the captions were generated or scored")
    if first.manifest is not None and other.manifest is not None:
        names = [(f.manifest or {}).get("benchmark") for f in (first, other)]
        names += [((f.manifest or {}).get("caption_set") or {}).get("name") for f in (first, other)]
        if names[0] != names[1] or names[2] != names[3]:
            raise InputError(
                f"cannot merge {where}: {pair} are of different benchmarks or caption sets ({names[1]}/{names[3]} "
                f"and {names[0]}/{names[2]}); move the stray folder away"
            )
        entries = {n: e.get("config_hash") for n, e in first.manifest["metrics"].items()}
        theirs = {n: e.get("config_hash") for n, e in other.manifest["metrics"].items()}
        if entries != theirs:
            raise InputError(
                f"cannot merge {where}: {pair} were scored with different settings, judges or prompts ({first.shard} "
                f"-> {other.shard}: {_changes(first.manifest, other.manifest)}); rerun shard {other.shard} with the "
                "others' settings and --overwrite (or all of them with the new ones), then merge again"
            )
    made = [(f.generation or {}).get("settings") for f in (first, other)]
    if first.generation is not None and content_hash(made[0]) != content_hash(made[1]):
        raise InputError(
            f"cannot merge {where}: {pair} generated captions with different models or settings "
            f"({'; '.join(config_changes(made[0], made[1])[:3])}); rerun shard {other.shard} with the others' "
            "settings and --regenerate"
        )
    if one["selection"]["ids_sha256"] != two["selection"]["ids_sha256"]:
        raise InputError(
            f"cannot merge {where}: {pair} were split from different selections of samples "
            f"({one['selection']['samples']} and {two['selection']['samples']}: --limit or the caption file's ids "
            "differ); rerun the shards with the same --limit and caption file, with --overwrite"
        )
    if one["selection"].get("captions_sha256") != two["selection"].get("captions_sha256"):
        raise InputError(
            f"cannot merge {where}: {pair} were run on different captions (the caption file changed between "
            "their runs); rerun every shard on the same file with --overwrite, or restore the file the others used"
        )


def _changes(first: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    """Name what differs between two shards' metric entries (settings, prompts, judges)."""
    keys = ("config", "prompts", "judges")
    mine = {n: {k: e.get(k) for k in keys} for n, e in first["metrics"].items()}
    theirs = {n: {k: e.get(k) for k in keys} for n, e in other["metrics"].items()}
    changes = config_changes(mine, theirs)
    return "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "") or "unknown"


def _order(shards: Sequence[ShardFolder], where: str) -> list[str]:
    """Rebuild the selection's order from the shards' parts (shard i holds positions i, i + N, …) and check it."""
    selection = shards[0].block["selection"]
    total, count = int(selection["samples"]), len(shards)
    parts = [list(f.block.get("ids") or []) for f in shards]
    for folder, part in zip(shards, parts, strict=True):
        if len(part) != len(range(folder.shard.index, total, count)):
            raise InputError(
                f"cannot merge {where}: {folder} holds {len(part)} sample(s) where its part of {total} has "
                f"{len(range(folder.shard.index, total, count))}; rerun it with --overwrite"
            )
    order = [parts[p % count][p // count] for p in range(total)]
    owners: dict[str, ShardFolder] = {}
    for position, sample_id in enumerate(order):
        if sample_id in owners:
            raise InputError(
                f"cannot merge {where}: sample {sample_id!r} is in {owners[sample_id]} and in "
                f"{shards[position % count]} (overlapping shards); rerun them with --overwrite"
            )
        owners[sample_id] = shards[position % count]
    if content_hash(order) != selection["ids_sha256"]:
        raise InputError(f"cannot merge {where}: the shards' ids do not make up their selection; rerun them")
    return order


def _captions(shards: Sequence[ShardFolder], scored: bool) -> dict[str, str]:
    """Return each shard's captions of its own part (those it scored, or generated)."""
    out: dict[str, str] = {}
    for folder in shards:
        ids = set(folder.block.get("ids") or [])
        path = folder.path / ("captions.jsonl" if scored else "generated.jsonl")
        out.update((r["id"], r["caption"]) for _, r in JsonlLog(path).rows(repair=False) if r.get("id") in ids)
    return out


def _metrics(first: ShardFolder, where: str) -> list[Metric]:
    """Build each metric as the shards built it, and check it is the one that scored them."""
    assert first.manifest is not None
    entries, settings = first.manifest["metrics"], first.block["settings"]
    built: dict[str, list[Metric]] = {}
    out = []
    for name, entry in entries.items():
        key = content_hash(settings[name])
        try:
            if key not in built:
                built[key], _ = build_metrics(EvalConfig.from_dict(settings[name]))
        except ConfigError as exc:
            raise ConfigError(f"cannot merge {where}: the shards' metrics cannot be built here ({exc})") from None
        metric = next((m for m in built[key] if m.name == name), None)
        if metric is None:
            raise InputError(f"cannot merge {where}: the settings recorded for {name} do not name it; rerun the shards")
        here = {"config": metric.config(), "prompts": metric.prompt_hashes()}
        there = {"config": entry.get("config"), "prompts": entry.get("prompts")}
        if content_hash(here) != content_hash(there):
            shown = "; ".join(config_changes(json.loads(json.dumps(there)), json.loads(json.dumps(here)))[:3])
            raise InputError(
                f"cannot merge {where}: metric {name!r} as this capbench builds it is not the one that scored the "
                f"shards ({shown}); merge with the capbench (and --prompt-dir files) that scored them"
            )
        out.append(metric)
    return out


def _scores(
    shards: Sequence[ShardFolder], metric: str, captions: Mapping[str, str], where: str
) -> dict[str, SampleScore]:
    """Return every shard's final score of each sample of its part, after checking none is missing."""
    out: dict[str, SampleScore] = {}
    for folder in shards:
        rerun = f"rerun its command (`capbench eval ... --shard {folder.shard}`) to finish it, then merge again"
        logged = ScoreLog(folder.path / f"{safe_name(metric)}.jsonl").load(repair=False)
        ids = list(folder.block.get("ids") or [])
        missing = [i for i in ids if i not in logged]
        if missing:
            raise InputError(
                f"cannot merge {where}: {folder} is unfinished ({len(missing)} sample(s) without a {metric} score, "
                f"e.g. {missing[0]!r}); {rerun}"
            )
        failed = [i for i in ids if logged[i].failed]
        if failed:  # kept, as an unsharded run keeps them (counted and shown as failed)
            warnings.warn(
                f"{where}: {folder} has {len(failed)} sample(s) whose {metric} judge calls failed (e.g. "
                f"{failed[0]!r}), merged as failed; to ask the judge again, rerun its command (`capbench eval ... "
                f"--shard {folder.shard}`: only the failed calls are asked again), then merge with --overwrite",
                UserWarning,
                stacklevel=2,
            )
        changed = [i for i in ids if logged[i].caption_sha256 and logged[i].caption_sha256 != sha256_text(captions[i])]
        if changed:
            raise InputError(
                f"cannot merge {where}: {folder} holds {metric} scores of other captions than its captions.jsonl "
                f"(e.g. {changed[0]!r}); rerun it with --overwrite"
            )
        out.update((i, logged[i]) for i in ids)
    return out


# ---------------------------------------------------------------- writing


def _write(plan: _Plan, root: Path, overwrite: bool) -> MergeResult:
    """Write the merged run to ``<root>/<benchmark>/<caption set>/``, whole or not at all."""
    target = RunDir(root, plan.benchmark, plan.name).path
    first = plan.shards[0]
    files = dict(plan.files)
    if first.generation is not None:
        files["generation.json"] = _dump(_generation(plan))
    if first.manifest is not None:
        files["manifest.json"] = _dump(_manifest(plan, target))
    done = MergeResult(plan.benchmark, plan.name, target, len(plan.shards), len(plan.order), None, files=sorted(files))
    if target.exists():
        state, holder = writer_state(target)
        if state == "running":
            raise InputError(f"{target}: a capbench run ({holder}) is writing there; wait for it, then merge again")
        if _same(target, files):
            done.unchanged = True
            done.result = read_run(target) if first.manifest is not None else None
            return done
        if not overwrite and any(target.iterdir()):
            raise InputError(
                f"{target}: already holds a run that is not this merge of its shards; move it away, merge "
                "--into another results folder, or pass --overwrite to replace it"
            )
    publish_folder(target, files, target.parent / SHARDS)  # whole or not at all
    done.result = read_run(target) if first.manifest is not None else None
    return done


def _dump(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def _same(target: Path, files: Mapping[str, str]) -> bool:
    """Whether ``target`` already holds this merge: the same captions and scores, from a merge.

    Its manifest may differ in times, the command, and sessions the shards ran since (a resumed
    shard that had nothing left to do).
    """
    present = {p.name for p in target.iterdir() if not p.name.startswith(".")}
    if present != set(files):
        return False
    for name, text in files.items():
        held = (target / name).read_text(encoding="utf-8")
        if not name.endswith(".json"):
            if held != text:
                return False
            continue
        document, new = json.loads(held), json.loads(text)
        if "merged" not in document:
            return False
        summaries = [{m: e.get("summary") for m, e in d.get("metrics", {}).items()} for d in (document, new)]
        if summaries[0] != summaries[1]:
            return False
    return True


def _manifest(plan: _Plan, target: Path) -> dict[str, Any]:
    """The merged run's manifest: what an unsharded run writes, with every shard's sessions and a ``merged`` entry."""
    first = plan.shards[0]
    assert first.manifest is not None
    captions = [json.loads(line) for line in plan.files["captions.jsonl"].splitlines()]
    caption_set = dict(first.manifest["caption_set"])
    if first.generation is not None:
        caption_set["source"] = str(target / "generated.jsonl")
    caption_set.update(sha256=content_hash({c["id"]: c["caption"] for c in captions}), samples=len(plan.order))
    # each shard's manifest covers its own part; the merged run covers them all
    merged = merge_coverage([((f.manifest or {}).get("caption_set") or {}).get("coverage") for f in plan.shards])
    caption_set.pop("coverage", None)
    if merged is not None:
        caption_set["coverage"] = merged
    metrics = {
        name: {**entry, "samples": len(plan.order), "summary": plan.summaries[name]}
        for name, entry in first.manifest["metrics"].items()
    }
    sessions = [
        {**session, "shard": str(folder.shard)}
        for folder in plan.shards
        for session in (folder.manifest or {}).get("sessions", [])
    ]
    return {
        "format": RESULTS_FORMAT,
        "capbench_version": __version__,
        "benchmark": plan.benchmark,
        "caption_set": caption_set,
        "command": redact_command(sys.argv),
        "git_commit": git_commit(),
        "versions": versions(),
        "judges": first.manifest.get("judges", {}),
        "judge_specs": first.manifest.get("judge_specs", {}),
        "metrics": metrics,
        "sessions": sessions,
        "status": "complete",
        "updated": _now(),
        "merged": _provenance(plan),
    }


def _generation(plan: _Plan) -> dict[str, Any]:
    """The merged ``generation.json``: what an unsharded generation writes, so a later run reuses the captions."""
    first = plan.shards[0].generation
    assert first is not None
    kept = {k: v for k, v in first.items() if k != "shard"}
    return {**kept, "status": "complete", "failed": {}, "updated": _now(), "merged": _provenance(plan)}


def _provenance(plan: _Plan) -> dict[str, Any]:
    return {
        "shards": len(plan.shards),
        "from": [
            {
                "shard": str(f.shard),
                "path": str(f.path),
                "command": (f.manifest or {}).get("command", []),
                "updated": (f.manifest or f.generation or {}).get("updated"),
            }
            for f in plan.shards
        ],
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
