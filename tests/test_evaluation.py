"""Runs: results written batch by batch, resumed after an interruption, and checked for drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ScriptedEngine

from capbench.data import load_benchmark
from capbench.engines.cache import CachedEngine, ResponseCache
from capbench.errors import InputError
from capbench.evaluation import Evaluator, redact_command, select_samples
from capbench.metrics import build_metric
from capbench.records import CaptionSet, read_caption_file
from capbench.runs import ScoreLog


def _first_letter(request) -> str:
    return "A"


def _evaluator(
    tmp_path: Path, reply=_first_letter, batch_size: int = 4, cache: bool = True, **metric
) -> tuple[Evaluator, ScriptedEngine]:
    engine = ScriptedEngine(reply)
    judge = CachedEngine(engine, ResponseCache() if cache else None)
    bench = load_benchmark("mini")
    evaluator = Evaluator(
        bench, [build_metric("captionqa", **metric)], {"text": judge}, tmp_path / "results", batch_size
    )
    return evaluator, engine


def _detailed() -> CaptionSet:
    return read_caption_file(load_benchmark("mini").example_captions["detailed"])


def test_run_writes_scores_captions_and_manifest(tmp_path: Path):
    evaluator, engine = _evaluator(tmp_path)
    result = evaluator.evaluate(_detailed(), limit=5)
    run = tmp_path / "results" / "mini" / "detailed"
    assert sorted(p.name for p in run.iterdir()) == ["captionqa.jsonl", "captions.jsonl", "manifest.json"]
    lines = (run / "captionqa.jsonl").read_text().splitlines()
    assert len(lines) == 5
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["caption_set"]["samples"] == 5
    assert manifest["metrics"]["captionqa"]["config"]["answer_mode"] == "letter"
    assert set(manifest["metrics"]["captionqa"]["prompts"]) == {"captionqa.system", "captionqa.user"}
    assert manifest["judges"]["text"] == {"backend": "scripted", "model": "scripted"}
    assert manifest["sessions"][0]["judge_calls"] == len(engine.calls) == result.stats["judge_calls"]
    assert result.summaries["captionqa"]["questions"] == sum(
        len(s.questions) for s in load_benchmark("mini").samples[:5]
    )


def test_second_identical_run_makes_no_judge_calls(tmp_path: Path):
    evaluator, engine = _evaluator(tmp_path)
    first = evaluator.evaluate(_detailed(), limit=3)
    calls = len(engine.calls)
    resumed = evaluator.evaluate(_detailed(), limit=3)
    assert len(engine.calls) == calls and resumed.stats["judge_calls"] == 0
    assert resumed.summaries == first.summaries
    overwritten = evaluator.evaluate(_detailed(), limit=3, overwrite=True)
    assert len(engine.calls) == calls  # recomputed entirely from the cache
    assert overwritten.stats["cache_hits"] == calls
    assert overwritten.summaries == first.summaries


def test_interrupted_run_resumes_without_loss_or_duplicates(tmp_path: Path):
    asked = {"n": 0}

    def reply(request):
        asked["n"] += 1
        if asked["n"] == 60:  # mid-way through the third batch of 4 samples
            raise KeyboardInterrupt
        return "B"

    evaluator, _ = _evaluator(tmp_path, reply)
    with pytest.raises(KeyboardInterrupt):
        evaluator.evaluate(_detailed())
    run = tmp_path / "results" / "mini" / "detailed"
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    partial = ScoreLog(run / "captionqa.jsonl").load()
    assert 0 < len(partial) < 18
    result = evaluator.evaluate(_detailed())
    final = [json.loads(x)["sample_id"] for x in (run / "captionqa.jsonl").read_text().splitlines()]
    assert sorted(final) == sorted({s.id for s in load_benchmark("mini").samples})  # each sample once
    assert result.resumed["captionqa"] == len(partial)
    # the same scores as an uninterrupted run, and no judge call made twice
    clean, engine = _evaluator(tmp_path / "clean", lambda r: "B", cache=False)
    assert clean.evaluate(_detailed()).summaries == result.summaries
    sessions = json.loads((run / "manifest.json").read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["interrupted", "complete"]
    assert sessions[0]["judge_calls"] + sessions[1]["judge_calls"] == len(engine.calls)


def test_torn_last_line_is_repaired(tmp_path: Path):
    evaluator, _ = _evaluator(tmp_path)
    evaluator.evaluate(_detailed(), limit=4)
    log = tmp_path / "results" / "mini" / "detailed" / "captionqa.jsonl"
    whole = log.read_bytes()
    log.write_bytes(whole + b'{"sample_id": "half')  # what a kill during a write would leave
    assert len(ScoreLog(log).load()) == 4
    assert log.read_bytes() == whole


def test_changed_settings_or_captions_refuse_to_mix(tmp_path: Path):
    evaluator, _ = _evaluator(tmp_path)
    evaluator.evaluate(_detailed(), limit=2)
    other, _ = _evaluator(tmp_path, seed=1)
    with pytest.raises(InputError, match=r"other settings, judge or prompts \(config\.seed: 0 -> 1\); rerun with"):
        other.evaluate(_detailed(), limit=2)
    judge = CachedEngine(ScriptedEngine(name="bigger"), ResponseCache())
    swapped = Evaluator(load_benchmark("mini"), [build_metric("captionqa")], {"text": judge}, tmp_path / "results")
    with pytest.raises(InputError, match=r"\(judges\.text\.model: scripted -> bigger\)"):
        swapped.evaluate(_detailed(), limit=2)
    changed = CaptionSet("detailed", {**_detailed().captions, "astronaut": "Something else."}, "x")
    with pytest.raises(InputError, match="1 caption\\(s\\) differ"):
        evaluator.evaluate(changed, limit=2)
    other.evaluate(_detailed(), limit=2, overwrite=True)


def test_unknown_ids_are_named():
    bench = load_benchmark("mini")
    captions = CaptionSet("x", {"astronaut": "a", "nat_001": "b"}, "caps.jsonl")
    with pytest.raises(InputError, match="1 id\\(s\\) are not in benchmark 'mini' \\('nat_001'\\)"):
        select_samples(bench, captions)
    assert [s.id for s in select_samples(bench, CaptionSet("y", {"moon": "m", "astronaut": "a"}))] == [
        "astronaut",
        "moon",
    ]  # benchmark order, whatever the file's order


def test_secrets_are_redacted_from_commands():
    argv = ["capbench", "eval", "--api-key", "sk-123", "--token=abc", "--judge", "x:y"]
    assert redact_command(argv) == ["capbench", "eval", "--api-key", "***", "--token=***", "--judge", "x:y"]


def test_a_refused_run_leaves_its_folder_untouched(tmp_path: Path):
    evaluator, _ = _evaluator(tmp_path)
    evaluator.evaluate(_detailed(), limit=2)
    run = tmp_path / "results" / "mini" / "detailed"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    changed = CaptionSet("detailed", {**_detailed().captions, "astronaut": "Something else."}, "x")
    with pytest.raises(InputError):
        evaluator.evaluate(changed, limit=2)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
