"""`capbench export`: lmms-eval's results JSON and the per-sample CSV, from real `capbench eval` runs."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import one_line_error, run_cli

from capbench import engines
from capbench.cli import main
from capbench.export import FORMULA_START, guard, read_csv, unguard
from capbench.results import read_run

pytestmark = [pytest.mark.cli, pytest.mark.filterwarnings("ignore:.*covers 12 of 18 images")]

EXAMPLES = ["detailed", "planted_errors", "short"]
#: Captions a CSV writer and a spreadsheet can get wrong, by sample id of capbench-mini.
HOSTILE = {
    "astronaut": "A red car, a blue door, and a dog",
    "camera": 'He said "cheese", then ""left""',
    "cell": "first line\nsecond line\r\nthird\rline",
    "chelsea": '=HYPERLINK("http://evil.example","click")',
    "china": "+1+1 cups",
    "clock": "-2+3 and a clock",
    "coffee": "@SUM(A1:A9) coffee",
    "coins": "\tTabbed coins",
    "flower": "'quoted from the start",
    "grace_hopper": "NA",
    "moon": "  spaced moon ,  ",
    "page": "Café — 日本語の説明 🚀, \u00e9\u0301",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real runs: the example sets (oracle fact metrics, a scripted CaptionQA and arena judge) and a hostile set."""
    root = tmp_path_factory.mktemp("results")
    hostile = tmp_path_factory.mktemp("captions") / "=evil.jsonl"
    hostile.write_text("".join(json.dumps({"id": i, "caption": c}) + "\n" for i, c in HOSTILE.items()), "utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPBENCH_HOME", str(root.parent / "home"))
        patch.setitem(engines.ENGINES, "scripted", ("conftest", "FixedReplyEngine", "test engine"))
        patch.setitem(engines.ENGINES, "oracle", ("oracle_engine", "OracleEngine", "test engine"))
        for judge, metrics in (("oracle:truth", "dcscore,balcap"), ("scripted:A", "captionqa,arena")):
            run_cli("eval", "--example-captions", "--judge", judge, "-m", metrics, "--results-dir", str(root))
        run_cli("eval", "-c", str(hostile), "--judge", "scripted:A", "-m", "captionqa", "--results-dir", str(root))
    return root


@pytest.fixture(scope="module")
def exported(results: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """`capbench export --format lmms-eval` of the whole results folder, each file by caption set."""
    out = tmp_path_factory.mktemp("lmms")
    shown = json.loads(run_cli("export", str(results), "--format", "lmms-eval", "--out", str(out), "--json").output)
    files = [Path(f) for f in shown["files"]]
    assert sorted(f.parent.name for f in files) == ["detailed", "evil", "planted_errors", "short"]
    for path in files:
        assert re.fullmatch(r"[0-9]{8}_[0-9]{6}_results\.json", path.name), path
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "temporary files left behind"
    return {json.loads(f.read_text("utf-8"))["model_name"]: json.loads(f.read_text("utf-8")) for f in files}


def _units(folder: Path, metric: str) -> dict[str, list[tuple[str, float, float]]]:
    run = read_run(folder)
    return {s.sample_id: list(s.scores[metric].units or ()) for s in run.samples}


def test_lmms_eval_keys_and_values_equal_the_run_summaries(results: Path, exported: dict[str, dict[str, Any]]):
    layout = {"results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config",
              "git_hash", "lmms_eval_version", "date", "task_hashes", "model_name", "model_name_sanitized"}  # fmt: skip
    for name in EXAMPLES:
        report = exported[name]
        assert layout <= set(report)
        manifest = json.loads((results / "mini" / name / "manifest.json").read_text("utf-8"))
        tasks = {f"mini_{m}" for m in manifest["metrics"]}
        for key in ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "group_subtasks"):
            assert set(report[key]) == tasks, key
        for metric, entry in manifest["metrics"].items():
            task, info = f"mini_{metric}", entry["info"]
            row = report["results"][task]
            assert row["alias"] == task
            stated = entry["summary"][info["columns"][0][1]]
            if stated is None:  # the scripted judge never gives an arena verdict
                assert row[f"{metric},none"] is None and row[f"{metric}_stderr,none"] == "N/A"
            else:
                assert row[f"{metric},none"] == pytest.approx(stated, abs=1e-9)
                assert isinstance(row[f"{metric}_stderr,none"], float) and row[f"{metric}_stderr,none"] > 0
            scored = sum(1 for u in _units(results / "mini" / name, metric).values() if u)
            assert report["n-samples"][task] == {"original": 18, "effective": scored}
            assert report["higher_is_better"][task][metric] is info["higher_is_better"]
            assert report["configs"][task]["metadata"]["config_hash"] == entry["config_hash"]
            assert report["configs"][task]["metadata"]["judges"] == entry["judges"]
            for _label, key in info["columns"][1:]:  # the other printed columns, as further metrics without stderr
                if isinstance(entry["summary"].get(key), (int, float)):
                    assert row[f"{key},none"] == entry["summary"][key] and row[f"{key}_stderr,none"] == "N/A"
        assert report["config"]["model"] == name
        assert report["config"]["versions"] == manifest["versions"] and report["git_hash"] == manifest["git_commit"]
        assert report["config"]["command"] == manifest["command"]
        assert report["task_hashes"]["mini_dcscore"] == manifest["caption_set"]["sha256"]
    domains = exported["detailed"]["results"]["mini_captionqa"]
    summary = json.loads((results / "mini" / "detailed" / "manifest.json").read_text("utf-8"))
    for domain, numbers in summary["metrics"]["captionqa"]["summary"]["domains"].items():
        assert domains[f"domains/{domain},none"] == numbers["score"]
    assert exported["detailed"]["n-samples"]["mini_arena"]["effective"] == 0  # every arena verdict unparsed


def test_stderr_is_the_bootstrap_sd_and_depends_only_on_the_run_and_seed(
    results: Path, exported: dict[str, dict[str, Any]], tmp_path: Path
):
    # DCScore has one unit per image, weight 1: its bootstrap sd is close to the analytic sd / sqrt(n).
    values = [u[0][1] for u in _units(results / "mini" / "short", "dcscore").values()]
    analytic = np.std(values, ddof=1) / math.sqrt(len(values))
    found = exported["short"]["results"]["mini_dcscore"]["dcscore_stderr,none"]
    assert found == pytest.approx(analytic, rel=0.15)
    alone = tmp_path / "alone"
    run_cli("export", str(results / "mini" / "short"), "--format", "lmms-eval", "--out", str(alone))
    [path] = alone.glob("short/*_results.json")
    assert json.loads(path.read_text("utf-8"))["results"] == exported["short"]["results"]
    run_cli("export", str(results / "mini" / "short"), "--format", "lmms-eval", "--out", str(alone), "--seed", "7")
    reseeded = json.loads(path.read_text("utf-8"))["results"]["mini_dcscore"]
    assert reseeded["dcscore,none"] == exported["short"]["results"]["mini_dcscore"]["dcscore,none"]
    assert reseeded["dcscore_stderr,none"] != found


@pytest.fixture(scope="module")
def csv_path(results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("csv") / "samples.csv"
    run_cli("export", str(results), "--format", "csv", "--out", str(path))
    return path


def _expected_rows(results: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The per-sample records of every run, read with capbench's own reader, by (caption set, metric, sample)."""
    out = {}
    for manifest in results.glob("mini/*/manifest.json"):
        run = read_run(manifest.parent)
        for record in run.samples:
            for metric, score in record.scores.items():
                units = score.units or ()
                mass = sum(u[2] for u in units)
                out[(run.name, metric, record.sample_id)] = {
                    "caption": record.caption,
                    "score": sum(u[1] * u[2] for u in units) / mass if mass else None,
                    "values": score.values,
                    "flag": score.unscored > 0 or score.failed > 0,
                }
    return out


def test_csv_read_back_with_csv_equals_the_records(results: Path, csv_path: Path):
    expected = _expected_rows(results)
    with csv_path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(expected) == 18 * 3 * 4 + len(HOSTILE)
    for row in rows:
        want = expected[(unguard(row["caption_set"]), row["metric"], row["sample_id"])]
        assert unguard(row["caption"]) == want["caption"]
        assert (float(row["score"]) if row["score"] else None) == want["score"]
        assert row["judge_failed"] == ("true" if want["flag"] else "false")
        for key, value in want["values"].items():
            assert (float(row[f"value_{key}"]) if row[f"value_{key}"] else None) == value
    arena = [r for r in rows if r["metric"] == "arena"]
    assert arena and all(r["judge_failed"] == "true" and r["score"] == "" for r in arena)
    domains = {r["sample_id"]: r["domain"] for r in rows if r["metric"] == "captionqa"}
    assert {r["domain"] for r in rows if r["metric"] == "dcscore"} <= set(domains.values()) and all(domains.values())


def test_csv_read_back_with_pandas_equals_the_records(results: Path, csv_path: Path):
    expected = _expected_rows(results)
    frame = read_csv(csv_path)
    assert len(frame) == len(expected)
    for row in frame.to_dict(orient="records"):
        want = expected[(row["caption_set"], row["metric"], row["sample_id"])]
        assert row["caption"] == want["caption"]
        assert (None if pd.isna(row["score"]) else row["score"]) == want["score"]
        assert row["judge_failed"] is want["flag"]


def test_hostile_captions_round_trip_and_cannot_run_as_formulas(csv_path: Path):
    text = csv_path.read_bytes().decode("utf-8")  # UTF-8, no byte-order mark
    assert not text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, body = rows[0], rows[1:]
    for row in body:
        for cell in row:
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), cell
            assert not cell.startswith("-") or re.fullmatch(r"-[0-9.e+-]+", cell), cell  # only negative numbers
    evil = [dict(zip(header, r, strict=True)) for r in body if unguard(r[header.index("caption_set")]) == "=evil"]
    assert {r["caption_set"] for r in evil} == {"'=evil"}
    assert {r["sample_id"]: unguard(r["caption"]) for r in evil} == HOSTILE
    frame = read_csv(csv_path)
    assert dict(zip(frame.loc[frame.caption_set == "=evil", "sample_id"], frame.loc[frame.caption_set == "=evil",
                    "caption"], strict=True)) == HOSTILE  # fmt: skip


@pytest.mark.parametrize("text", [*HOSTILE.values(), "'", "''=", "", "plain", "-", "="])
def test_guard_is_undone_by_unguard(text: str):
    assert unguard(guard(text)) == text
    assert not guard(text).startswith(tuple(c for c in FORMULA_START if c != "'"))


def _copy(results: Path, tmp_path: Path, name: str = "short") -> Path:
    folder = tmp_path / "res" / "mini" / name
    shutil.copytree(results / "mini" / name, folder)
    return folder


def _export(*args: str):
    return CliRunner().invoke(main, ["export", *args], catch_exceptions=False)


def _refused(source: Path, tmp_path: Path, *words: str) -> None:
    out = tmp_path / "out.csv"
    one_line_error(_export(str(source), "--format", "csv", "--out", str(out)), *words)
    assert not out.exists()


def test_unfinished_runs_are_refused_naming_the_fix(results: Path, tmp_path: Path):
    folder = _copy(results, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text("utf-8"))
    (folder / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}), "utf-8")
    _refused(folder.parent.parent, tmp_path, "interrupted", "rerun the same `capbench eval`")
    (folder / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    with (folder / "dcscore.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"format": 2, "sample_id": "astron')
    _refused(folder, tmp_path, "dcscore.jsonl", "unfinished", "rerun")
    (folder / "dcscore.jsonl").unlink()
    _refused(folder, tmp_path, "dcscore.jsonl", "missing", "-m dcscore")
    shutil.copy(results / "mini" / "short" / "dcscore.jsonl", folder / "dcscore.jsonl")
    (folder / ".lock").write_text("{}")  # a lock nobody holds: the run was killed
    _refused(folder, tmp_path, "killed", "resume")
    (folder / ".lock").unlink()
    lines = (folder / "balcap.jsonl").read_text("utf-8").splitlines(keepends=True)
    (folder / "balcap.jsonl").write_text("".join(lines[:-1]), "utf-8")
    _refused(folder, tmp_path, "balcap.jsonl", "no score for 1 of the run's 18 samples")


def test_missing_runs_and_shards_are_refused(results: Path, tmp_path: Path):
    _refused(tmp_path / "nowhere", tmp_path, "no such folder")
    (tmp_path / "empty").mkdir()
    _refused(tmp_path / "empty", tmp_path, "no finished runs", "capbench eval")
    folder = _copy(results, tmp_path)
    (folder / "manifest.json").unlink()
    _refused(folder.parent.parent, tmp_path, "without a manifest.json", "rerun")
    shards = tmp_path / "sharded" / "mini" / "_shards" / "short" / "0-of-2"
    shutil.copytree(results / "mini" / "short", shards)
    _refused(tmp_path / "sharded", tmp_path, "not merged yet", "capbench merge")


def test_several_sources_export_together_but_one_run_only_once(results: Path, tmp_path: Path):
    other = _copy(results, tmp_path, "detailed").parent.parent
    out = tmp_path / "two.csv"
    run_cli("export", str(results / "mini" / "short"), str(other), "--format", "csv", "--out", str(out))
    assert set(read_csv(out).caption_set) == {"short", "detailed"}
    run_cli("export", str(results / "mini" / "short"), str(results), "--name", "short", "--format", "csv", "--out",
         str(out))  # fmt: skip
    assert set(read_csv(out).caption_set) == {"short"}
    clash = _copy(results, tmp_path / "again", "detailed").parent.parent
    one_line_error(_export(str(other), str(clash), "--format", "csv", "--out", str(out)), "also in", "only one")


def test_outputs_are_replaced_whole_and_the_same_twice(results: Path, csv_path: Path, tmp_path: Path):
    out = tmp_path / "again.csv"
    out.write_text("old")
    run_cli("export", str(results), "--format", "csv", "--out", str(out))
    assert out.read_bytes() == csv_path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["again.csv"]
    one_line_error(_export(str(results), "--format", "csv", "--out", str(tmp_path)), "a folder", "file name")
    one_line_error(_export(str(results), "--format", "lmms-eval", "--out", str(out)), "a file", "folder")


def test_older_results_export_through_the_installed_metric(results: Path, exported: dict, tmp_path: Path):
    folder = _copy(results, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text("utf-8"))
    for entry in manifest["metrics"].values():
        entry.pop("info")
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format": 1}), "utf-8")
    for path in folder.glob("*.jsonl"):
        if path.name != "captions.jsonl":
            lines = [json.loads(x) for x in path.read_text("utf-8").splitlines()]
            path.write_text("".join(json.dumps({**x, "format": 1, "units": None}) + "\n" for x in lines), "utf-8")
    out = tmp_path / "old"
    run_cli("export", str(folder), "--format", "lmms-eval", "--out", str(out))
    [path] = out.glob("short/*_results.json")
    assert json.loads(path.read_text("utf-8"))["results"] == exported["short"]["results"]
