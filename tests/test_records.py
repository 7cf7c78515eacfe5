"""Records and caption files: accepted formats, and a clear error for each kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from capbench.errors import InputError
from capbench.records import Question, SampleScore, read_caption_file, read_jsonl


def test_jsonl_records(write_json):
    path = write_json("model.jsonl", [{"id": "a", "caption": "A cat."}, {"id": "b", "caption": "A dog."}], jsonl=True)
    captions = read_caption_file(path)
    assert captions.name == "model"
    assert dict(captions.captions) == {"a": "A cat.", "b": "A dog."}


def test_captionqa_mapping(write_json):
    path = write_json("qwen.json", {"nat_001": "A grey cat.", "nat_002": "A forest path."})
    assert dict(read_caption_file(path, name="qwen3").captions) == {
        "nat_001": "A grey cat.",
        "nat_002": "A forest path.",
    }
    assert read_caption_file(path, name="qwen3").name == "qwen3"


def test_json_list(write_json):
    path = write_json("list.json", [{"id": "a", "caption": "x"}])
    assert dict(read_caption_file(path).captions) == {"a": "x"}


def test_single_jsonl_line_is_not_mistaken_for_a_mapping(write_json):
    path = write_json("one.jsonl", [{"id": "a", "caption": "x"}], jsonl=True)
    assert dict(read_caption_file(path).captions) == {"a": "x"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        # a broken JSONL line is named by its number
        (b'{"id": "a", "caption": "x"}\n{"id": "b", "caption": \n', "bad.jsonl:2: not valid JSON"),
        # invalid UTF-8 is named by line and byte
        (b'{"id": "a", "caption": "x"}\n{"id": "b", "caption": "\xff"}\n', "bad.jsonl:2: not valid UTF-8"),
        # a record without its caption
        (b'{"id": "a", "text": "x"}\n', "lacks 'id' or 'caption'"),
        # duplicate ids name both lines
        (b'{"id": "a", "caption": "x"}\n{"id": "a", "caption": "y"}\n', "'a' appears twice (line 1 and line 2)"),
        # whitespace-only captions are refused, by id
        (b'{"id": "a", "caption": "  \\n "}\n', "1 empty caption(s) ('a')"),
        # a caption that is not a string
        (b'{"id": "a", "caption": 3}\n', "'caption' is int"),
        # a JSON array line
        (b"[1, 2]\n", "item 0 is int"),
        # a JSONL line that is not an object
        (b'{"id": "a", "caption": "x"}\n7\n', "bad.jsonl:2: expected a JSON object"),
        # a pretty-printed mapping with a syntax error names the line
        (b'{\n  "a": "x",\n}\n', "line 3); fix the file"),
        # an empty file
        (b"\n\n", "no captions found"),
    ],
)
def test_bad_caption_files(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=None) as info:
        read_caption_file(path)
    assert message in str(info.value)


def test_missing_caption_file(tmp_path: Path):
    with pytest.raises(InputError, match="caption file not found"):
        read_caption_file(tmp_path / "nope.jsonl")


def test_mapping_with_non_string_value(write_json):
    with pytest.raises(InputError, match="caption of id 'a' is list"):
        read_caption_file(write_json("m.json", {"a": ["x"]}))


def test_read_jsonl_skips_blank_lines_and_counts_lines(tmp_path: Path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_question_validation():
    q = Question("q1", "What colour?", ("red", "blue"), "blue", "attribute")
    assert q.answer_index == 1
    assert Question.from_dict(q.to_dict()) == q
    with pytest.raises(InputError, match="is not one of its choices"):
        Question("q2", "What?", ("a", "b"), "c")
    with pytest.raises(InputError, match="at least 2"):
        Question("q3", "What?", ("a",), "a")


def test_sample_score_round_trip():
    score = SampleScore("s1", "captionqa", {"score": 50.0, "accuracy": None}, {"questions": [{"x": 1}]}, 2, "abc")
    assert SampleScore.from_dict(score.to_dict()) == score


def test_a_folder_is_not_a_caption_file(tmp_path: Path):
    with pytest.raises(InputError, match="not a file"):
        read_caption_file(tmp_path)


def test_decapbench_style_records_use_image_path_as_id(write_json):
    path = write_json("dc.jsonl", [{"image_path": "aar_test_1.jpg", "caption": "A door."}], jsonl=True)
    assert dict(read_caption_file(path).captions) == {"aar_test_1.jpg": "A door."}


def test_atomic_writes_are_readable_by_others(tmp_path):
    import os
    import stat

    from capbench.runs import atomic_write_text

    path = tmp_path / "manifest.json"
    atomic_write_text(path, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_results_carry_their_format_and_a_newer_one_is_refused(tmp_path):
    import json

    from conftest import ScriptedEngine

    from capbench.data import load_benchmark
    from capbench.engines.cache import CachedEngine, ResponseCache
    from capbench.evaluation import Evaluator
    from capbench.leaderboard import load_results
    from capbench.metrics import build_metric
    from capbench.records import RESULTS_FORMAT, SampleScore, read_caption_file
    from capbench.runs import RunDir, ScoreLog

    bench = load_benchmark("mini")
    judge = CachedEngine(ScriptedEngine(), ResponseCache())
    evaluator = Evaluator(bench, [build_metric("captionqa")], {"text": judge}, tmp_path)
    captions = read_caption_file(bench.example_captions["short"])
    evaluator.evaluate(captions, limit=2)
    run = RunDir(tmp_path, "mini", "short")
    lines = [json.loads(x) for x in run.scores("captionqa").path.read_text().splitlines()]
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["format"] == RESULTS_FORMAT and {line["format"] for line in lines} == {RESULTS_FORMAT}
    # format 2: each line carries its sample's headline units, the manifest the metric's description
    metric = build_metric("captionqa")
    for line in lines:
        score = SampleScore.from_dict(line)
        assert [list(u[1:]) for u in metric.units([score])] == line["units"]
    assert manifest["metrics"]["captionqa"]["info"]["higher_is_better"] is True
    assert manifest["metrics"]["captionqa"]["info"]["columns"][0] == ["score", "score"]
    # a line from before formats were written (format 0) is read as it always was
    old = {k: v for k, v in lines[0].items() if k != "format"}
    ScoreLog(tmp_path / "old.jsonl").append_rows([old])
    assert list(ScoreLog(tmp_path / "old.jsonl").load()) == [old["sample_id"]]
    # a newer format is refused, saying what to do, by the resume and by the leaderboard
    ScoreLog(tmp_path / "new.jsonl").append_rows([{**lines[0], "format": RESULTS_FORMAT + 1}])
    with pytest.raises(
        InputError, match=rf"new\.jsonl:1: written in results format {RESULTS_FORMAT + 1} by a newer capbench.*upgrade"
    ):
        ScoreLog(tmp_path / "new.jsonl").load()
    run.manifest_path.write_text(json.dumps({**manifest, "format": RESULTS_FORMAT + 1}))
    with pytest.raises(InputError, match="by a newer capbench"):
        evaluator.evaluate(captions, limit=2)
    evaluator.evaluate(read_caption_file(bench.example_captions["detailed"]), limit=2)
    board = load_results(tmp_path)
    assert [r.model for r in board.runs] == ["detailed"]
    assert any("newer capbench" in w and "left out" in w for w in board.warnings)
