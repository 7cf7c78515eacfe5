"""One evaluation split into shards (`capbench eval --shard I/N`), and their merge (`capbench merge`).

The merged run must equal an unsharded run: the same summaries to the last digit and the same
score records. Every way shards can fail to belong together is refused, naming the shards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import ScriptedEngine, kill_after_lines, one_line_error, run_cli
from jsonschema import Draft202012Validator

import capbench
from capbench import engines
from capbench import runs as run_folders
from capbench.config import EvalConfig, Shard
from capbench.engines.base import ImagePart, Response
from capbench.errors import ConfigError, InputError
from capbench.leaderboard import load_results
from capbench.runs import RunLock
from capbench.schemas import load_schema

MINI = Path(capbench.__file__).parent / "data" / "mini" / "captions"
SETS = ["detailed", "planted_errors", "short"]
#: (judge, metrics): every built-in metric, with judges that answer the same way every time.
PASSES = [("oracle:truth", "dcscore,balcap"), ("scripted:A", "captionqa,caprl,arena")]


def _cli(*args: str, ok: bool = True):
    return run_cli(*args, ok=ok, catch_exceptions=True)


@pytest.fixture(autouse=True)
def test_judges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(engines.ENGINES, "scripted", ("conftest", "FixedReplyEngine", "test engine"))
    monkeypatch.setitem(engines.ENGINES, "oracle", ("oracle_engine", "OracleEngine", "test engine"))


def _eval(results: Path, *extra: str, judge: str = "scripted:A", metrics: str = "captionqa") -> Any:
    out = _cli("eval", "--example-captions", "--judge", judge, "-m", metrics, "--answer-mode", "letter",
               "--results-dir", results, "--json", *extra)  # fmt: skip
    return json.loads(out.output)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unsharded run (whole/) and the same evaluation in 3 shards (sharded/, not merged), every metric."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPBENCH_HOME", str(root / "home"))
        patch.setitem(engines.ENGINES, "scripted", ("conftest", "FixedReplyEngine", "test engine"))
        patch.setitem(engines.ENGINES, "oracle", ("oracle_engine", "OracleEngine", "test engine"))
        for judge, metrics in PASSES:
            _eval(root / "whole", judge=judge, metrics=metrics)
            for index in range(3):
                report = _eval(root / "sharded", "--shard", f"{index}/3", judge=judge, metrics=metrics)
                assert report["shard"] == f"{index}/3" and report["runs"][0]["samples"] == 6
    return root


@pytest.fixture
def sharded(runs: Path, tmp_path: Path) -> Path:
    """A copy of the 3 unmerged shards, for a test to merge or spoil."""
    shutil.copytree(runs / "sharded", tmp_path / "results")
    return tmp_path / "results"


def _shard(results: Path, index: int, name: str = "short", count: int = 3) -> Path:
    return results / "mini" / "_shards" / name / f"{index}-of-{count}"


def _records(folder: Path) -> dict[str, list[Any]]:
    return {p.name: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted(folder.glob("*.jsonl"))}


# ---------------------------------------------------------------- the split


def test_the_split_is_deterministic_balanced_and_complete():
    items = list(range(17))
    for count in (1, 2, 3, 4, 16, 17, 20):
        parts = [Shard(i, count).part(items) for i in range(count)]
        assert parts == [Shard.parse(f"{i}/{count}").part(items) for i in range(count)]  # every shard agrees
        assert sorted(x for p in parts for x in p) == items  # each item in exactly one shard
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
        assert all(p == sorted(p) for p in parts)  # benchmark order within a shard
    assert Shard(1, 4).part(items) == [1, 5, 9, 13] and str(Shard(1, 4)) == "1/4"


_BAD = [
    ("4/4", r"EvalConfig\.shard is '4/4': shards are counted from 0, so I runs from 0 to 3 \(SLURM: --array=0-3"),
    ("0/0", r"EvalConfig\.shard is '0/0': N, the number of shards, must be at least 1"),
    ("-1/4", r"EvalConfig\.shard is '-1/4'; write I/N with I counted from 0, e.g. 0/4"),
    ("1of4", r"write I/N with I counted from 0"),
    ("1/4/2", r"write I/N"),
    ("", r"write I/N"),
    (3, r"EvalConfig\.shard must be str or None, not int"),
]


@pytest.mark.parametrize(("value", "message"), _BAD)
def test_a_bad_shard_setting_names_the_field_and_the_fix(value: Any, message: str):
    with pytest.raises(ConfigError, match=message):
        EvalConfig(shard=value)
    assert EvalConfig(shard=" 3/4 ").shard_spec == Shard(3, 4) and EvalConfig().shard_spec is None
    assert EvalConfig.from_dict(EvalConfig(shard="1/2").to_dict()).shard == "1/2"


def test_eval_takes_shard_on_the_command_line(tmp_path: Path):
    assert "--shard I/N" in _cli("eval", "--help").output
    one_line_error(_cli("eval", "--example-captions", "--shard", "3/3", ok=False), "--shard is '3/3'", "0 to 2")
    one_line_error(_cli("eval", "--example-captions", "--shard", "two", ok=False), "--shard is 'two'", "I/N")
    report = _eval(tmp_path / "r", "--shard", "1/2", "--limit", "5")
    assert report["shard"] == "1/2" and [r["samples"] for r in report["runs"]] == [2, 2, 2]
    folder = _shard(tmp_path / "r", 1, "detailed", 2)
    manifest = json.loads((folder / "manifest.json").read_text())
    ids = [s.id for s in capbench.load_benchmark("mini").samples[:5]]
    assert manifest["shard"]["ids"] == ids[1::2] and manifest["shard"]["selection"]["samples"] == 5
    assert [json.loads(x)["id"] for x in (folder / "captions.jsonl").read_text().splitlines()] == ids[1::2]
    assert not (tmp_path / "r" / "mini" / "detailed").exists()  # a shard is not a whole run


# ---------------------------------------------------------------- the merge


def test_merged_shards_equal_the_unsharded_run(runs: Path, sharded: Path):
    # before the merge, shards are neither runs to read nor rows of the leaderboard
    with pytest.raises(InputError, match=r"only 3 caption set\(s\) of shards not merged; .*capbench merge"):
        load_results(sharded)
    assert capbench.read_results(sharded) == {}
    out = _cli("merge", sharded)
    assert "mini/short: merged 3 shards: 18 samples in" in out.output and "CaptionQA" in out.output
    whole = capbench.read_results(runs / "whole")["mini"]
    merged = capbench.read_results(sharded)["mini"]
    validator = Draft202012Validator(load_schema("manifest"))
    for name in SETS:
        one, two = whole[name], merged[name]
        assert one.summary == two.summary  # to the last digit
        assert one.samples == two.samples
        assert _records(one.path) == _records(two.path)  # every score line, in the same order
        a, b = one.manifest, two.manifest
        ignored = {"sessions", "updated", "command", "merged"}
        assert {k: v for k, v in a.items() if k not in ignored} == {k: v for k, v in b.items() if k not in ignored}
        assert b["merged"]["shards"] == 3 and {s["shard"] for s in b["sessions"]} == {"0/3", "1/3", "2/3"}
        for manifest in [
            b,
            *(json.loads(p.read_text()) for p in (sharded / "mini" / "_shards").rglob("manifest.json")),
        ]:
            assert list(validator.iter_errors(manifest)) == []
    report = capbench.leaderboard_report(sharded, rounds=100)
    assert not report["warnings"] and {r["model"] for r in report["boards"][0]["rows"]} == set(SETS)
    # merging again changes nothing
    before = {p: p.stat().st_mtime_ns for p in (sharded / "mini" / "short").iterdir()}
    again = capbench.merge_shards(sharded, names=["short"])
    assert again[0].unchanged and {p: p.stat().st_mtime_ns for p in before} == before


def test_a_merge_into_another_folder_and_the_api(sharded: Path, tmp_path: Path):
    done = capbench.merge_shards(sharded / "mini" / "_shards" / "short", into=tmp_path / "merged")
    assert [(d.name, d.shards, d.samples, d.unchanged) for d in done] == [("short", 3, 18, False)]
    assert done[0].path == tmp_path / "merged" / "mini" / "short" and done[0].result.headline("captionqa") is not None
    assert json.loads(_cli("merge", sharded, "--name", "detailed", "--json").output)[0]["caption_set"] == "detailed"
    assert "merge_shards" in capbench.__all__


def test_an_empty_shard_and_a_leaderboard_of_some_merged_sets(runs: Path, sharded: Path, tmp_path: Path):
    for index in range(3):  # 3 shards of 2 samples: the last one is empty
        _cli("eval", "-c", MINI / "short.jsonl", "--judge", "scripted:A", "--limit", "2", "--results-dir",
             tmp_path / "small", "--shard", f"{index}/3")  # fmt: skip
    _cli("eval", "-c", MINI / "short.jsonl", "--judge", "scripted:A", "--limit", "2", "--results-dir", tmp_path / "one")
    assert capbench.read_run(_shard(tmp_path / "small", 2)).samples == []
    merged = capbench.merge_shards(tmp_path / "small")[0].result
    assert merged.summary == capbench.read_run(tmp_path / "one" / "mini" / "short").summary
    # one set merged, two not: the board has the merged one and says what to do with the others
    capbench.merge_shards(sharded, names=["short"])
    shutil.copytree(_shard(sharded, 0, "detailed"), sharded / "mini" / "stray")  # a shard where runs live
    assert set(capbench.read_results(sharded)["mini"]) == {"short"}
    warnings = load_results(sharded).warnings
    assert any(
        "_shards/detailed: shards of an evaluation, not merged yet" in w and "capbench merge" in w for w in warnings
    )
    assert any("mini/stray: one shard (0/3) of an evaluation, not a whole run; left out" in w for w in warnings)


def _spoil(sharded: Path, how: str) -> None:
    """Damage a copy of the shards in one of the ways a merge must refuse."""
    short = sharded / "mini" / "_shards" / "short"
    if how == "missing":
        shutil.rmtree(short / "1-of-3")
    elif how == "interrupted":
        path = short / "2-of-3" / "manifest.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "status": "interrupted"}))
    elif how == "unscored":
        log = short / "2-of-3" / "captionqa.jsonl"
        log.write_text("".join(log.read_text().splitlines(keepends=True)[:-1]))
    elif how == "failed":
        log = short / "0-of-3" / "caprl.jsonl"
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        lines[-1]["failed"] = 1
        log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    elif how == "killed":
        (short / "1-of-3" / ".lock").write_text("{}")
    elif how == "overlap":
        path = short / "1-of-3" / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["shard"]["ids"][0] = json.loads((short / "0-of-3" / "manifest.json").read_text())["shard"]["ids"][0]
        path.write_text(json.dumps(manifest))
    elif how == "renamed":
        shutil.move(short / "2-of-3", short / "5-of-6")


_REFUSALS = [
    ("missing", r"cannot merge mini/short: missing shard\(s\) 1/3 of 3; run the same `capbench eval` command with "
                r"--shard 1/3, then merge again \(nothing was merged; --name merges the other caption sets alone\)"),
    ("interrupted", r"shard 2/3 \(.*2-of-3\) is unfinished \(status 'interrupted'\); rerun its command "
                    r"\(`capbench eval \.\.\. --shard 2/3`\)"),
    ("unscored", r"shard 2/3 .* is unfinished \(1 sample\(s\) without a captionqa score, e\.g\. '\w+'\)"),
    ("killed", r"shard 1/3 \(.*\) was killed mid-run \(its \.lock is left\); rerun its command"),
    ("overlap", r"sample '\w+' is in shard 0/3 \(.*\) and in shard 1/3 .*overlapping shards"),
    ("renamed", r"5-of-6/manifest\.json: written by shard 2/3, but its folder says 5/6; put each shard folder back"),
]  # fmt: skip


@pytest.mark.parametrize(("how", "message"), _REFUSALS, ids=[r[0] for r in _REFUSALS])
def test_a_merge_refuses_shards_that_do_not_add_up(sharded: Path, how: str, message: str):
    _spoil(sharded, how)
    with pytest.raises(InputError, match=message):
        capbench.merge_shards(sharded)
    assert not (sharded / "mini" / "short").exists() and not (sharded / "mini" / "detailed").exists()
    assert not list((sharded / "mini" / "_shards").glob(".merging-*"))


def test_a_shard_with_failed_judge_calls_is_merged_as_an_unsharded_run_keeps_it(sharded: Path):
    _spoil(sharded, "failed")
    with pytest.warns(UserWarning, match=r"shard 0/3 .* has 1 sample\(s\) whose caprl judge calls failed .* merged as"):
        [merged] = capbench.merge_shards(sharded, names=["short"])
    assert sum(s.scores["caprl"].failed for s in merged.result.samples) == 1


def test_shards_of_different_splits_are_named(sharded: Path):
    _eval(sharded, "--shard", "0/2")
    with pytest.raises(InputError, match=r"mini/detailed: shards of different splits \(of 2: .*0-of-2; of 3: "):
        capbench.merge_shards(sharded, names=["detailed"])


def test_shard_found_twice_and_several_results_folders(sharded: Path, tmp_path: Path):
    shutil.copytree(sharded, tmp_path / "copy")
    with pytest.raises(InputError, match=r"shard 0/3 appears 2 times \(.*results.*, .*copy.*\); keep one of them"):
        capbench.merge_shards(sharded, tmp_path / "copy", into=tmp_path / "out")
    node = tmp_path / "node1"
    (node / "mini" / "_shards" / "short").mkdir(parents=True)
    shutil.move(_shard(sharded, 2), node / "mini" / "_shards" / "short")
    with pytest.raises(InputError, match=r"several results folders .*; say where the merged runs go with --into"):
        capbench.merge_shards(sharded, node, names=["short"])
    assert capbench.merge_shards(sharded, node, names=["short"], into=tmp_path / "out")[0].samples == 18
    one_line_error(_cli("merge", tmp_path / "empty-and-missing", ok=False), "no such folder")
    (tmp_path / "empty").mkdir()
    one_line_error(_cli("merge", tmp_path / "empty", ok=False), "no shards found in", "--shard I/N")


_OTHER = [
    ("seed", ["--seed", "1"], r"scored with different settings, .* \(0/3 -> 2/3: captionqa\.config\.seed: 0 -> 1\)"),
    ("judge", ["--judge", "scripted:B"], r"scored with .*\(0/3 -> 2/3: captionqa\.judges\.text\.model: A -> B\)"),
    ("limit", ["--limit", "9"], r"split from different selections of samples \(18 and 9: --limit or"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "extra", "message"), _OTHER, ids=[o[0] for o in _OTHER])
def test_a_shard_of_other_settings_judges_or_samples_is_refused(sharded: Path, what: str, extra: list, message: str):
    judge = extra[1] if extra[0] == "--judge" else "scripted:A"
    _eval(sharded, "--shard", "2/3", "--overwrite", *(extra if extra[0] != "--judge" else []), judge=judge)
    with pytest.raises(
        InputError, match=r"cannot merge mini/detailed: shard 2/3 \(.*2-of-3\) and shard 0/3 were " + message
    ):
        capbench.merge_shards(sharded, names=["detailed"])


def test_shards_run_on_an_edited_caption_file_are_refused(tmp_path: Path):
    mine = tmp_path / "mine.jsonl"
    shutil.copy(MINI / "short.jsonl", mine)
    for index in range(2):
        _cli("eval", "-c", mine, "--judge", "scripted:A", "--results-dir", tmp_path / "r", "--shard", f"{index}/3")
    mine.write_text(mine.read_text().replace('"caption": "', '"caption": "Edited: ', 1))
    _cli("eval", "-c", mine, "--judge", "scripted:A", "--results-dir", tmp_path / "r", "--shard", "2/3")
    error = one_line_error(_cli("merge", tmp_path / "r", ok=False), "shard 2/3", "and shard 0/3")
    assert "were run on different captions (the caption file changed between their runs); rerun every" in error


def test_a_target_holding_another_run_is_kept_unless_overwrite(runs: Path, sharded: Path):
    shutil.copytree(runs / "whole" / "mini" / "short", sharded / "mini" / "short")
    (sharded / "mini" / "short" / "captionqa.jsonl").write_text("")  # another run than the shards'
    with pytest.raises(InputError, match=r"mini/short: already holds a run that is not this merge .*--overwrite"):
        capbench.merge_shards(sharded, names=["short"])
    with RunLock(sharded / "mini" / "short"), pytest.raises(InputError, match=r"a capbench run .* is writing there"):
        capbench.merge_shards(sharded, names=["short"], overwrite=True)
    done = capbench.merge_shards(sharded, names=["short"], overwrite=True)
    assert done[0].result.summary == capbench.read_run(runs / "whole" / "mini" / "short").summary
    assert not list((sharded / "mini" / "_shards").glob(".*"))


def test_a_shard_still_running_is_named(sharded: Path):
    with RunLock(_shard(sharded, 0)), pytest.raises(InputError, match=r"shard 0/3 .* is still being written \(pid"):
        capbench.merge_shards(sharded, names=["short"])


def test_a_merge_that_fails_while_writing_leaves_no_half_run(sharded: Path, monkeypatch: pytest.MonkeyPatch):
    written: list[str] = []

    def fail_on_third(path: Path, text: str) -> None:
        written.append(path.name)
        if len(written) == 3:
            raise InputError(f"cannot write {path} (No space left on device)")
        path.write_text(text)

    monkeypatch.setattr(run_folders, "atomic_write_text", fail_on_third)
    with pytest.raises(InputError, match="No space left"):
        capbench.merge_shards(sharded, names=["short"])
    assert not (sharded / "mini" / "short").exists() and not list((sharded / "mini" / "_shards").glob(".*"))


# ---------------------------------------------------------------- a shard killed, then resumed


@pytest.mark.engine
def test_a_killed_shard_resumes_and_then_merges(tmp_path: Path):
    from loopback_judge import LoopbackJudge

    def command(results: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "capbench.cli", "eval", "-c", str(MINI / "detailed.jsonl"), "--answer-mode",
                "letter", "--judge", "openai:loopback", "--judge-base-url", judge.base_url, "--judge-opt",
                "concurrency=1", "--batch-size", "1", "--results-dir", str(results), *extra]  # fmt: skip

    with LoopbackJudge(delay=0.05) as judge:
        results = tmp_path / "results"
        log = _shard(results, 1, "detailed", 2) / "captionqa.jsonl"
        subprocess.run(command(results, "--shard", "0/2"), check=True, capture_output=True, env=os.environ)
        held = kill_after_lines(command(results, "--shard", "1/2"), log, 2)
        assert 2 <= held < 9
        with pytest.raises(InputError, match=r"shard 1/2 .* was killed mid-run"):
            capbench.merge_shards(results)
        subprocess.run(command(results, "--shard", "1/2"), check=True, capture_output=True, env=os.environ)
        subprocess.run(command(tmp_path / "whole"), check=True, capture_output=True, env=os.environ)
    ids = [json.loads(line)["sample_id"] for line in log.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 9  # nothing lost, nothing twice
    merged = capbench.merge_shards(results)[0].result
    whole = capbench.read_run(tmp_path / "whole" / "mini" / "detailed")
    assert merged.summary == whole.summary and merged.samples == whole.samples


# ---------------------------------------------------------------- generation


class Describer(ScriptedEngine):
    """A captioning model for tests (``describer:any``): names the image it is shown; counts what it captions."""

    backend = "describer"
    accepts_images = True
    asked: ClassVar[list[str]] = []
    broken: ClassVar[set[str]] = set()

    def __init__(self, model: str) -> None:
        super().__init__(self.describe, name=model)

    def describe(self, request) -> Any:
        image = next(p for p in request.messages[0].parts if isinstance(p, ImagePart)).image
        Describer.asked.append(image.sha256)
        if image.sha256 in Describer.broken:
            return Response(error="the server said no")
        return f"A picture whose hash starts with {image.sha256[:6]}."


def test_generation_shards_caption_only_their_images_and_merge_into_reusable_captions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(engines.ENGINES, "describer", ("test_shards", "Describer", "test engine"))
    monkeypatch.setattr(Describer, "asked", [])
    settings = {"model": "describer:cam", "judge": "scripted:A", "metrics": ["captionqa"], "answer_mode": "letter",
                "limit": 7, "cache": False}  # fmt: skip
    whole = capbench.evaluate(**settings, results_dir=tmp_path / "whole")["cam"]
    assert len(Describer.asked) == 7
    images = {s.id: s.image.sha256 for s in capbench.load_benchmark("mini", with_images=True).samples[:7]}
    for index in range(3):
        Describer.asked.clear()
        capbench.evaluate(**settings, results_dir=tmp_path / "sharded", shard=f"{index}/3")
        assert Describer.asked == [images[i] for i in list(images)[index::3]]  # only its own images
    merged = capbench.merge_shards(tmp_path / "sharded")[0]
    assert merged.files == ["captionqa.jsonl", "captions.jsonl", "generated.jsonl", "generation.json", "manifest.json"]
    assert merged.result.summary == whole.summary and merged.result.samples == whole.samples
    folder = tmp_path / "sharded" / "mini" / "cam"
    assert (folder / "generated.jsonl").read_text() == (whole.path / "generated.jsonl").read_text()
    Describer.asked.clear()  # an unsharded run with another judge reuses the merged captions
    again = capbench.evaluate(**{**settings, "judge": "scripted:B"}, results_dir=tmp_path / "sharded", overwrite=True)
    assert Describer.asked == [] and again.generation.reused == 7
    # captions only (--metrics none), in 2 shards
    for index in range(2):
        capbench.evaluate(**{**settings, "metrics": []}, results_dir=tmp_path / "captions", shard=f"{index}/2")
    done = capbench.merge_shards(tmp_path / "captions")[0]
    assert done.result is None and done.files == ["generated.jsonl", "generation.json"]
    assert (tmp_path / "captions" / "mini" / "cam" / "generated.jsonl").read_text() == (
        whole.path / "generated.jsonl"
    ).read_text()
    # a shard some of whose images got no caption is unfinished until rerun
    monkeypatch.setattr(Describer, "broken", {images[list(images)[1]]})
    for index in range(2):
        capbench.evaluate(**settings, results_dir=tmp_path / "flaky", shard=f"{index}/2")
    with pytest.raises(InputError, match=r"shard 1/2 .* is unfinished \(1 image\(s\) got no caption\); rerun its"):
        capbench.merge_shards(tmp_path / "flaky")
    monkeypatch.setattr(Describer, "broken", set())
    capbench.evaluate(**settings, results_dir=tmp_path / "flaky", shard="1/2")
    assert capbench.merge_shards(tmp_path / "flaky")[0].result.summary == whole.summary


#: The bad inputs and faults this suite puts shards and their merge through (counted by benchmarks/robustness.py).
KINDS = (
    *(f"--shard {value!r}" for value, _ in _BAD),
    *(f"merge refused: {how}" for how, _ in _REFUSALS),
    *(f"merge refused: shards of another {what}" for what, _, _ in _OTHER),
    "merge refused: shards of different splits",
    "merge refused: a shard found twice",
    "merge refused: shards in several results folders without --into",
    "merge refused: shards run on an edited caption file",
    "merge refused: a target holding another run",
    "merge refused: a shard still running",
    "merge refused: no shards found",
    "merge: a failure while writing leaves no half run",
    "merge: a shard with failed judge calls is merged as failed, with a warning",
    "a shard killed mid-run resumes and merges",
    "a generation shard with a failed caption is refused until rerun",
)
