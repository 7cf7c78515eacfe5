"""Bad and awkward inputs at the command line: model paths, prompt folders, arena and agreement options, BOMs.

Each bad input must end in one line that names the item and the fix (no traceback); each awkward
but valid one (a byte-order mark, the old --answer-mode word) must just work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ScriptedEngine

from capbench.cli import main
from capbench.data import load_benchmark
from capbench.engines import parse_engine
from capbench.errors import ConfigError
from capbench.metrics.arena import PairJudge
from capbench.records import CaptionSet, read_caption_file, read_json_file, read_jsonl
from capbench.tournament import Tournament, plan

pytestmark = pytest.mark.cli

#: The kinds of bad input this file covers (counted in benchmarks/results/robustness.md).
KINDS = (
    "model or judge path that does not exist",
    "model path that is a file",
    "prompt template missing a placeholder",
    "prompt template with a placeholder never filled",
    "prompt template with a stray $",
    "prompt file that replaces no template",
    "prompt folder that does not exist",
    "prompt template that is not UTF-8",
    "the same caption file twice in arena",
    "two caption sets of one name in arena",
)

EXAMPLES = Path(__file__).resolve().parents[1] / "capbench" / "data" / "mini" / "captions"
TIE = '{"reason": "r", "judgment": "Tie"}'
BOM = b"\xef\xbb\xbf"


def _invoke(*args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, [str(a) for a in args])


def _fails(*args: str, says: str | tuple[str, ...]):
    """Run the command; it must exit 1 with one capbench error line holding every piece of ``says``."""
    result = _invoke(*args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a ClickException, not a crash
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for piece in (says,) if isinstance(says, str) else says:
        assert piece in errors[0], errors[0]
    return errors[0]


def _ok(*args: str):
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    return result


# ---------------------------------------------------------------- 8: a model path that is not there


@pytest.mark.parametrize(
    "model",
    [
        "/no/such/folder",  # absolute
        "./no-such-model",  # relative, explicit
        "../no-such-model",
        "~/no-such-capbench-model",  # home
        "models/qwen/checkpoint-100",  # separators, but not the hub's ORG/NAME form
    ],
)
def test_a_missing_model_folder_is_one_line_before_transformers(model: str):
    error = _fails("eval", "--model", model, "--engine", "hf", "-m", "none", says=("model folder", "not found", model))
    assert "hub id" in error and "Repo id" not in error


def test_a_model_file_is_not_a_model_folder(tmp_path: Path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 16)
    says = (str(weights), "is a file, not a model folder")
    _fails("eval", "--model", weights, "--engine", "hf", "-m", "none", says=says)


def test_a_missing_judge_folder_is_named_for_vllm_and_hf_alike():
    for engine in ("vllm", "hf"):
        _fails("eval", "--judge", f"{engine}:/no/such/judge", says=(f"{engine} engine", "/no/such/judge", "not found"))


def test_hub_ids_and_gguf_files_are_not_refused(tmp_path: Path):
    for model in ("Qwen/Qwen2.5-VL-7B-Instruct", "gpt2", "org_/name_"):
        assert parse_engine(f"hf:{model}").model == model
    gguf = tmp_path / "judge.gguf"
    gguf.write_bytes(b"GGUF")
    assert parse_engine(f"vllm:{gguf}").model == str(gguf)  # vLLM loads a GGUF file as it is
    with pytest.raises(ConfigError, match="is a file"):
        parse_engine(f"hf:{gguf}")


def test_the_engines_check_the_path_themselves():
    from capbench.engines.hf import HFEngine
    from capbench.engines.models import is_vision_model, model_identity

    with pytest.raises(ConfigError, match=r"hf engine: model folder /no/such/folder not found"):
        HFEngine("/no/such/folder")
    with pytest.raises(ConfigError, match=r"model folder /no/such/folder not found"):
        model_identity("/no/such/folder")  # vLLM's fingerprint
    with pytest.raises(ConfigError, match=r"model folder \./no/such not found"):
        is_vision_model("./no/such")  # vLLM's first look at the config


# ---------------------------------------------------------------- 10: --prompt-dir overrides


def _prompts(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    folder = tmp_path / "prompts"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return folder


def _eval_with_prompts(tmp_path: Path, folder: Path, *more: str) -> tuple[str, ...]:
    return ("eval", "-c", EXAMPLES / "short.jsonl", "--judge", "scripted:A", "--limit", "1",
            "--results-dir", tmp_path / "r", "--prompt-dir", folder, *more)  # fmt: skip


def test_a_template_without_the_caption_is_refused(tmp_path: Path, scripted_cli_engine):
    folder = _prompts(tmp_path, {"captionqa.user.txt": "Q: $question\n$options\nLetter:"})
    _fails(*_eval_with_prompts(tmp_path, folder), says=(str(folder / "captionqa.user.txt"), "lacks $caption"))
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_a_template_lacking_several_placeholders_names_them_all(tmp_path: Path, scripted_cli_engine):
    folder = _prompts(tmp_path, {"arena.user.txt": "Which is better? $caption_1"})
    _fails("arena", "--example-captions", "--judge", f"scripted:{TIE}", "--results-dir", tmp_path / "r",
           "--prompt-dir", folder, says=("arena.user.txt", "$caption_2", "$reference"))  # fmt: skip


def test_a_template_with_a_placeholder_never_filled_is_refused(tmp_path: Path, scripted_cli_engine):
    folder = _prompts(tmp_path, {"captionqa.user.txt": "$caption\n$question\n$options\n$image_title"})
    _fails(*_eval_with_prompts(tmp_path, folder), says=("captionqa.user.txt", "$image_title", "$caption"))


def test_a_stray_dollar_is_refused(tmp_path: Path, scripted_cli_engine):
    folder = _prompts(tmp_path, {"captionqa.user.txt": "$caption costs $ 5\n$question\n$options"})
    _fails(*_eval_with_prompts(tmp_path, folder), says=("captionqa.user.txt", "$$"))


def test_a_file_that_replaces_no_template_is_refused(tmp_path: Path, scripted_cli_engine):
    folder = _prompts(tmp_path, {"captionqa.usr.txt": "$caption $question $options"})
    _fails(*_eval_with_prompts(tmp_path, folder), says=("captionqa.usr.txt", "replaces no prompt template",
                                                       "captionqa.user"))  # fmt: skip


def test_a_missing_prompt_folder_is_refused(tmp_path: Path, scripted_cli_engine):
    _fails(*_eval_with_prompts(tmp_path, tmp_path / "nope"), says=(str(tmp_path / "nope"), "not found"))


def test_a_template_that_is_not_utf8_is_refused(tmp_path: Path, scripted_cli_engine):
    folder = _prompts(tmp_path, {"captionqa.user.txt": "Caf\xe9 $caption $question $options".encode("latin-1")})
    _fails(*_eval_with_prompts(tmp_path, folder), says=("captionqa.user.txt", "not UTF-8"))


def test_a_complete_template_with_a_bom_and_a_readme_is_used(tmp_path: Path, scripted_cli_engine):
    folder = _prompts(
        tmp_path,
        {"captionqa.user.txt": BOM + b"CAPTION: $caption\nQ: $question\n${options}\nLetter:", "README.md": "ours"},
    )
    _ok(*_eval_with_prompts(tmp_path, folder))
    manifest = json.loads((tmp_path / "r" / "mini" / "short" / "manifest.json").read_text())
    from capbench.hashing import sha256_text

    expected = sha256_text("CAPTION: $caption\nQ: $question\n${options}\nLetter:")  # the BOM is not prompt text
    assert manifest["metrics"]["captionqa"]["prompts"]["captionqa.user"] == expected


# ---------------------------------------------------------------- 14: progress with a real count


def test_arena_shows_the_judge_calls_it_will_make(tmp_path: Path, scripted_cli_engine):
    argv = ("arena", "--example-captions", "--judge", f"scripted:{TIE}", "--rounds", "20", "--limit", "2",
            "--results-dir", tmp_path)  # fmt: skip
    first = _ok(*argv)
    assert "12/12 judge calls" in first.stderr  # 2 images x 3 pairs x 2 orders
    again = _ok(*argv)  # every battle is stored: none is planned
    assert "0/0 judge calls" in again.stderr and "12/12" not in again.stderr


def test_agreement_shows_the_judge_calls_it_will_make(tmp_path: Path, scripted_cli_engine):
    from test_tournament import _annotations

    result = _ok("agreement", _annotations(tmp_path), "--judge", f"scripted:{TIE}", "--rounds", "20",
                 "--results-dir", tmp_path / "r")  # fmt: skip
    assert "26/26 judge calls" in result.stderr  # 13 battles without a human side, 2 orders each


class _Recorder:
    """A progress receiver that keeps what it is told."""

    def __init__(self) -> None:
        self.planned: list[int] = []
        self.done = 0

    def start(self, caption_set: str, planned: int) -> None:
        self.planned.append(planned)

    def submitted(self, n: int) -> None:
        pass

    def completed(self, cached: bool) -> None:
        self.done += 1


def test_a_tournament_plans_only_the_calls_it_makes(tmp_path: Path):
    bench = load_benchmark("mini")
    ids = [s.id for s in bench.samples][:3]
    sets = [CaptionSet(n, {i: f"{n} caption of {i}" for i in ids}) for n in ("a", "bb", "ccc")]
    matches = plan(bench, sets)
    progress = _Recorder()
    Tournament(bench, sets, {"text": ScriptedEngine(lambda r: TIE)}, PairJudge(), tmp_path).run(
        matches[:4], progress=progress
    )
    assert progress.planned == [8] and progress.done == 8
    resumed = _Recorder()  # four battles are stored: only the other five are judged
    Tournament(bench, sets, {"text": ScriptedEngine(lambda r: TIE)}, PairJudge(), tmp_path).run(
        matches, progress=resumed
    )
    assert resumed.planned == [10] and resumed.done == 10


# ---------------------------------------------------------------- 15: arena's and agreement's options


def test_the_same_caption_file_twice_is_named_without_a_missing_option(tmp_path: Path, scripted_cli_engine):
    short = EXAMPLES / "short.jsonl"
    error = _fails("arena", "-c", short, "-c", short, "--judge", f"scripted:{TIE}", "--results-dir", tmp_path,
                   says=(str(short), "entered twice"))  # fmt: skip
    assert "--name" not in error


def test_two_caption_files_of_one_name_are_told_to_be_renamed(tmp_path: Path, scripted_cli_engine):
    copy = tmp_path / "other" / "short.jsonl"
    copy.parent.mkdir()
    copy.write_bytes((EXAMPLES / "short.jsonl").read_bytes())
    error = _fails("arena", "-c", EXAMPLES / "short.jsonl", "-c", copy, "--judge", f"scripted:{TIE}",
                   "--results-dir", tmp_path, says=("two caption sets are named 'short'", "rename"))  # fmt: skip
    assert "--name" not in error
    _fails("arena", "--example-captions", "-c", copy, "--judge", f"scripted:{TIE}", "--results-dir", tmp_path,
           says=("two caption sets are named 'short'", "example set"))  # fmt: skip


@pytest.mark.parametrize("command", ["arena", "agreement"])
def test_answer_mode_takes_evals_word_and_the_old_one(tmp_path: Path, scripted_cli_engine, command: str):
    from test_tournament import _annotations

    first = (_annotations(tmp_path),) if command == "agreement" else ("--example-captions", "--limit", "1")
    reports = []
    for mode in ("letter", "generate"):
        argv = (command, *first, "--judge", f"scripted:{TIE}", "--rounds", "20", "--results-dir", tmp_path / "r",
                "--answer-mode", mode, "--json")  # fmt: skip
        reports.append(json.loads(_ok(*argv).stdout))
    assert reports[0]["judge"] == reports[1]["judge"]
    if command == "arena":  # the same settings: the second run judges nothing again
        assert reports[0]["judge_usage"]["judge_calls"] == 6 and reports[1]["judge_usage"]["judge_calls"] == 0
    assert "'letters' is not one of 'auto', 'letter'" in _invoke(command, *first, "--answer-mode", "letters").output


def test_arena_limit_means_what_evals_does(tmp_path: Path, scripted_cli_engine):
    report = json.loads(_ok("arena", "--example-captions", "--judge", f"scripted:{TIE}", "--rounds", "20",
                            "--limit", "2", "--results-dir", tmp_path, "--json").stdout)  # fmt: skip
    assert report["battles"] == 2 * 3  # the first two images, every pair of the three sets
    bench = load_benchmark("mini")
    sets = [read_caption_file(EXAMPLES / f"{n}.jsonl") for n in ("short", "detailed")]
    assert [m.sample.id for m in plan(bench, sets, limit=2)] == [s.id for s in bench.samples[:2]]


def test_top_level_help_describes_what_capbench_does():
    text = _ok("--help").output
    assert "more metrics to come" not in text
    for word in ("CaptionQA", "DCScore", "CapArena", "arena", "agreement", "leaderboard"):
        assert word in text


# ---------------------------------------------------------------- 16: a UTF-8 byte-order mark


def test_caption_files_with_a_bom_are_read(tmp_path: Path):
    jsonl = tmp_path / "jsonl.jsonl"
    jsonl.write_bytes(BOM + (EXAMPLES / "short.jsonl").read_bytes())
    expected = read_caption_file(EXAMPLES / "short.jsonl").captions
    assert read_caption_file(jsonl).captions == expected
    mapping = tmp_path / "mapping.json"
    mapping.write_bytes(BOM + json.dumps(dict(expected), ensure_ascii=False).encode())
    assert read_caption_file(mapping).captions == expected
    listing = tmp_path / "list.json"
    listing.write_bytes(BOM + json.dumps([{"id": k, "caption": v} for k, v in expected.items()]).encode())
    assert read_caption_file(listing).captions == expected
    one = tmp_path / "one.jsonl"  # one record: parsed as a whole
    one.write_bytes(BOM + b'{"id": "astronaut", "caption": "An astronaut."}\n')
    assert read_caption_file(one).captions == {"astronaut": "An astronaut."}


def test_other_readers_take_a_bom_on_the_first_line_alike(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(BOM + b'{"a": 1}\n{"b": 2}\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (2, {"b": 2})]
    whole = tmp_path / "whole.json"
    whole.write_bytes(BOM + b"[1, 2]")
    assert read_json_file(whole, "a list") == [1, 2]


def test_eval_scores_a_caption_file_with_a_bom(tmp_path: Path, scripted_cli_engine):
    path = tmp_path / "excel.jsonl"
    path.write_bytes(BOM + (EXAMPLES / "short.jsonl").read_bytes())
    run = json.loads(_ok("eval", "-c", path, "--judge", "scripted:A", "--limit", "1", "--results-dir",
                         tmp_path / "r", "--json").stdout)["runs"][0]  # fmt: skip
    assert run["caption_set"] == "excel" and run["metrics"]["captionqa"]["score"] is not None


def test_warnings_print_as_one_line_while_a_command_runs():
    import warnings

    seen = []

    @main.command("warn-once", hidden=True)
    def warn_once() -> None:
        seen.append(warnings.formatwarning("the cache is full: free space", UserWarning, "/x/cache.py", 12, "src"))

    before = warnings.formatwarning
    try:
        assert CliRunner().invoke(main, ["warn-once"]).exit_code == 0
    finally:
        main.commands.pop("warn-once")
    assert seen == ["warning: the cache is full: free space\n"]
    assert warnings.formatwarning is before  # put back when the command ends
