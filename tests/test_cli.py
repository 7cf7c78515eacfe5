"""The capbench command: start-up, listing, eval runs and their files, and errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from capbench import __version__
from capbench.cli import main

pytestmark = pytest.mark.cli

EXAMPLES = Path(__file__).resolve().parents[1] / "capbench" / "data" / "mini" / "captions"


def _run(*args: str, ok: bool = True):
    result = CliRunner(env={"COLUMNS": "200"}).invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("argv", [["--help"], ["eval", "--help"], ["list", "--help"]])
def test_help_does_not_load_engines(argv):
    script = (
        "import sys; from capbench.cli import main\n"
        f"try: main({argv!r})\nexcept SystemExit: pass\n"
        "names = ('torch', 'llama_cpp', 'transformers', 'vllm', 'numpy', 'rich')\n"
        "heavy = sorted(m for m in names if m in sys.modules)\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "Usage:" in out


def test_version():
    assert __version__ in _run("--version").output


def test_list_json():
    info = json.loads(_run("list", "--json").output)
    mini = next(b for b in info["benchmarks"] if b["name"] == "mini")
    decapbench = next(b for b in info["benchmarks"] if b["name"] == "decapbench")
    assert (decapbench["samples"], decapbench["questions"]) == (400, 0)
    assert (mini["name"], mini["samples"], mini["questions"]) == ("mini", 18, 252)
    assert mini["domains"] == ["natural", "science", "document"]
    assert set(mini["example_captions"]) == {"detailed", "short", "planted_errors"}
    assert [m["name"] for m in info["metrics"]] == ["captionqa", "dcscore", "balcap", "caprl", "arena"]
    caparena = next(b for b in info["benchmarks"] if b["name"] == "caparena")
    assert "--data-file" in caparena["needs"]
    assert all(m["higher_is_better"] for m in info["metrics"])
    assert {e["name"] for e in info["engines"]} >= {"llamacpp", "replay"}


def test_list_table():
    out = _run("list").output
    assert "mini" in out and "captionqa" in out and "llamacpp" in out


def test_eval_json_then_rerun_makes_no_judge_calls(tmp_path: Path, scripted_cli_engine):
    args = [
        "eval",
        "--captions",
        str(EXAMPLES / "short.jsonl"),
        "--judge",
        "scripted:A",
        "--results-dir",
        str(tmp_path),
        "--json",
    ]
    first = json.loads(_run(*args).output)
    [run] = first["runs"]
    assert run["caption_set"] == "short" and run["samples"] == 18
    assert run["judge_calls"] == 252 and run["cache_hits"] == 0
    assert first["answer_mode"] == "letter"
    summary = run["metrics"]["captionqa"]
    assert summary["questions"] == 252 and summary["unparsed"] == 0
    run_dir = tmp_path / "mini" / "short"
    assert sorted(p.name for p in run_dir.iterdir()) == ["captionqa.jsonl", "captions.jsonl", "manifest.json"]
    again = json.loads(_run(*args).output)["runs"][0]
    assert again["judge_calls"] == 0 and again["metrics"] == run["metrics"]
    fresh = json.loads(_run(*args, "--overwrite").output)["runs"][0]
    assert fresh["judge_calls"] == 0 and fresh["cache_hits"] == 252 and fresh["metrics"] == run["metrics"]


def test_eval_table_for_several_sets(tmp_path: Path, scripted_cli_engine):
    out = _run(
        "eval", "--example-captions", "--judge", "scripted:B", "--results-dir", str(tmp_path), "--limit", "2"
    ).output
    for name in ("detailed", "short", "planted_errors", "natural", "judge scripted:B (letter answers)"):
        assert name in out


def test_mapping_captions_and_name(tmp_path: Path, scripted_cli_engine):
    captions = tmp_path / "mine.json"
    captions.write_text(json.dumps({"moon": "The grey surface of the moon with craters."}))
    out = json.loads(
        _run("eval", "-c", str(captions), "--name", "my-model", "--judge", "scripted:A",
             "--results-dir", str(tmp_path / "r"), "--json").output
    )  # fmt: skip
    assert out["runs"][0]["caption_set"] == "my-model" and out["runs"][0]["samples"] == 1
    assert (tmp_path / "r" / "mini" / "my-model" / "captionqa.jsonl").exists()


def test_garbage_judge_is_counted_not_scored(tmp_path: Path, scripted_cli_engine):
    out = json.loads(
        _run("eval", "-c", str(EXAMPLES / "short.jsonl"), "--judge", "scripted:no idea",
             "--results-dir", str(tmp_path), "--limit", "1", "--json").output
    )  # fmt: skip
    summary = out["runs"][0]["metrics"]["captionqa"]
    assert summary["unparsed"] == summary["questions"] > 0
    assert summary["score"] is None and summary["score_unparsed_as_wrong"] == 0.0


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["-c", "missing.jsonl"], "missing.jsonl: caption file not found"),
        ('{"id": "nat_001", "caption": "x"}\n', ["-c", "{f}"], "are not in benchmark 'mini' ('nat_001')"),
        ('{"id": "moon", "caption": "x"}\n{"id": "moon", "caption": "y"}\n', ["-c", "{f}"], "'moon' appears twice"),
        ('{"id": "moon", "caption": " "}\n', ["-c", "{f}"], "empty caption(s) ('moon')"),
        ('{"id": "moon", "caption": "x"}\n', ["-c", "{f}", "-b", "nope"], "unknown benchmark 'nope'"),
        ('{"id": "moon", "caption": "x"}\n', ["-c", "{f}", "--judge", "gpt4"], "is not ENGINE:MODEL"),
        ('{"id": "moon", "caption": "x"}\n', ["-c", "{f}", "--judge", "foo:bar"], "unknown engine 'foo'"),
        ('{"id": "moon", "caption": "x"}\n', ["-c", "{f}", "-m", "bleu"], "unknown metric 'bleu'"),
        ('{"id": "moon", "caption": "x"}\n', ["-c", "{f}", "-c", "{f}", "--name", "x"], "give exactly one --captions"),
        ('{"id": "moon", "caption": "x"}\n', ["-c", "{f}", "-c", "{f}"], "two caption sets are named 'caps'"),
        (None, [], "nothing to score"),
        ('{"id": "moon", "caption": "x"}\n', ["-c", "{f}", "--judge", "replay:none.jsonl"], "cassette not found"),
    ],
)
def test_bad_input_gives_one_line_and_writes_nothing(tmp_path: Path, setup, args, message):
    caption_file = tmp_path / "caps.jsonl"
    if setup is not None:
        caption_file.write_text(setup, encoding="utf-8")
    argv = ["eval", *[a.replace("{f}", str(caption_file)) for a in args], "--results-dir", str(tmp_path / "results")]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "results").exists()


def test_debug_shows_the_traceback(tmp_path: Path):
    result = CliRunner().invoke(main, ["--debug", "eval", "-c", str(tmp_path / "missing.jsonl")])
    assert result.exit_code != 0 and result.exception is not None
    assert type(result.exception).__name__ == "InputError"


def test_cache_stats_and_clear(tmp_path: Path, scripted_cli_engine):
    _run(
        "eval",
        "-c",
        str(EXAMPLES / "short.jsonl"),
        "--judge",
        "scripted:A",
        "--results-dir",
        str(tmp_path),
        "--limit",
        "1",
    )
    stats = json.loads(_run("cache", "stats", "--json").output)
    assert stats["entries"] == 15 and stats["engines"][0]["engine"] == "scripted:A"
    assert "deleted 15 cached responses" in _run("cache", "clear", "--yes").output
    assert json.loads(_run("cache", "stats", "--json").output)["entries"] == 0


@pytest.mark.engine
def test_demo_path_with_the_embedded_judge(tmp_path: Path):
    """`make demo`'s command, on one image per set, through the installed console script."""
    script = Path(sys.executable).parent / "capbench"
    argv = [str(script), "eval", "--benchmark", "mini", "--limit", "1", "--results-dir", str(tmp_path)]
    for name in ("detailed", "short", "planted_errors"):
        argv += ["--captions", str(EXAMPLES / f"{name}.jsonl")]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "200"})
    assert "CaptionQA on mini" in out.stdout
    assert "judge llamacpp:smollm2 (loglik answers)" in out.stdout
    for name in ("detailed", "short", "planted_errors"):
        manifest = json.loads((tmp_path / "mini" / name / "manifest.json").read_text())
        assert manifest["status"] == "complete"
        assert manifest["judges"]["text"]["model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert "judge calls" in out.stderr  # the progress bar went to stderr


def test_recording_with_a_warm_cache_still_records_everything(tmp_path: Path, scripted_cli_engine):
    base = ["eval", "-c", str(EXAMPLES / "short.jsonl"), "--judge", "scripted:A", "--limit", "2", "--json"]
    _run(*base, "--results-dir", str(tmp_path / "a"))
    cassette = tmp_path / "judge.jsonl"
    _run(*base, "--results-dir", str(tmp_path / "b"), "--record-judge", str(cassette))
    replayed = json.loads(_run(*base[:3], "--judge", f"replay:{cassette}", "--limit", "2", "--json",
                               "--results-dir", str(tmp_path / "c")).output)  # fmt: skip
    assert replayed["runs"][0]["metrics"]["captionqa"]["failed"] == 0


@pytest.mark.parametrize("no_cache", [False, True])
def test_fact_metrics_share_the_decomposition(tmp_path: Path, oracle_cli_engine, no_cache: bool):
    args = ["eval", "-c", str(EXAMPLES / "detailed.jsonl"), "--judge", "oracle:truth", "-m", "dcscore,balcap",
            "--results-dir", str(tmp_path), "--json"] + (["--no-cache"] if no_cache else [])  # fmt: skip
    out = json.loads(_run(*args).output)
    [run] = out["runs"]
    assert out["fact_protocol"] == "official"
    # per caption: decompose, match and verify once for both metrics, plus balcap's rating
    assert run["judge_calls"] == 18 * 4 and run["cache_hits"] == 18 * 3
    dc, bal = run["metrics"]["dcscore"], run["metrics"]["balcap"]
    assert dc["failed"] == bal["failed"] == 0
    assert dc["verify_mode"] == ["reference"] and 50 < dc["score"] < 100 and 50 < bal["score"] < 100
    manifest = json.loads((tmp_path / "mini" / "detailed" / "manifest.json").read_text())
    assert manifest["metrics"]["dcscore"]["config"]["verify_samples"] == 3
    assert "facts.decompose.system" in manifest["metrics"]["balcap"]["prompts"]


def test_fact_tables_mark_how_facts_were_verified(tmp_path: Path, oracle_cli_engine):
    out = _run("eval", "--example-captions", "--judge", "oracle:truth", "-m", "dcscore,balcap", "--limit", "2",
               "--results-dir", str(tmp_path)).output  # fmt: skip
    for text in ("DCScore on mini", "BalCapRL on mini", "b-CapScore", "verified by", "reference", "Judge usage"):
        assert text in out


def test_captionqa_needs_questions(tmp_path: Path):
    caps = tmp_path / "c.jsonl"
    caps.write_text('{"image_path": "aar_test_04746.jpg", "caption": "A shelf."}\n')
    result = CliRunner().invoke(main, ["eval", "-b", "decapbench", "-c", str(caps), "--results-dir", str(tmp_path)])
    assert result.exit_code != 0 and "needs multiple-choice questions; benchmark 'decapbench' has none" in result.output


def test_prompt_dir_replaces_templates(tmp_path: Path, scripted_cli_engine):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "captionqa.user.txt").write_text("CAPTION: $caption\\nQ: $question\\n$options\\nLetter:")
    base = ["eval", "-c", str(EXAMPLES / "short.jsonl"), "--judge", "scripted:A", "--limit", "1", "--json"]
    ours = json.loads(_run(*base, "--results-dir", str(tmp_path / "a")).output)
    theirs = json.loads(_run(*base, "--results-dir", str(tmp_path / "b"), "--prompt-dir", str(prompts)).output)
    assert theirs["runs"][0]["judge_calls"] == ours["runs"][0]["judge_calls"]  # new prompts: asked again
    manifest = json.loads((tmp_path / "b" / "mini" / "short" / "manifest.json").read_text())
    mine = json.loads((tmp_path / "a" / "mini" / "short" / "manifest.json").read_text())
    hashes = manifest["metrics"]["captionqa"]["prompts"], mine["metrics"]["captionqa"]["prompts"]
    assert hashes[0]["captionqa.user"] != hashes[1]["captionqa.user"]
    assert hashes[0]["captionqa.system"] == hashes[1]["captionqa.system"]


def test_metric_setting_flags_reach_their_metric_and_only_it(tmp_path: Path, scripted_cli_engine):
    base = ["eval", "--example-captions", "--judge", "scripted:A", "--limit", "2", "--results-dir", str(tmp_path)]
    result = CliRunner().invoke(main, [*base, "-m", "captionqa", "--caprl-parse", "caprl"])
    assert result.exit_code != 0 and "--caprl-parse is a setting of metric 'caprl'" in result.output
    result = CliRunner().invoke(
        main, [*base, "-m", "captionqa,caprl", "--caprl-parse", "caprl", "--captionqa-aggregation", "official",
               "--captionqa-shuffle", "per-question", "--answer-mode", "letter", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [run, *_] = json.loads(result.stdout)["runs"]
    assert "official_score" in run["metrics"]["captionqa"]
    manifest = json.loads((tmp_path / "mini" / run["caption_set"] / "manifest.json").read_text())
    assert manifest["metrics"]["caprl"]["config"]["parse"] == "caprl"
    assert manifest["metrics"]["captionqa"]["config"]["aggregation"] == "official"
