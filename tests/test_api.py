"""capbench as a library: typed settings checked before anything loads, evaluate(), reading runs back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import capbench
from capbench import build
from capbench.cli import main
from capbench.errors import ConfigError, InputError
from capbench.records import Caption, Sample, SampleScore

MINI = Path(capbench.__file__).parent / "data" / "mini" / "captions"


def test_import_capbench_offers_a_documented_surface():
    assert "evaluate" in capbench.__all__ and "EvalConfig" in capbench.__all__ and "read_run" in capbench.__all__
    for name in capbench.__all__:
        assert getattr(capbench, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'evalute'"):
        capbench.evalute  # noqa: B018


_SETTINGS = [
        ({"batch_size": "8"}, r"EvalConfig\.batch_size must be int, not str"),
        ({"batch_size": 0}, r"EvalConfig\.batch_size must be at least 1"),
        ({"limit": True}, r"EvalConfig\.limit must be int or None, not bool"),
        ({"answer_mode": "letters"}, r"EvalConfig\.answer_mode is 'letters'; choose from auto, letter, loglik"),
        ({"metrics": "captionqa,dcscore"}, r"not the string 'captionqa,dcscore'; write \['captionqa', 'dcscore'\]"),
        ({"metrics": ["captionqa", "captionqa"]}, r"names a metric twice"),
        ({"metrics": {"captionqa": "letter"}}, r"metrics\['captionqa'\] must be a mapping"),
        ({"captions": "mine.jsonl"}, r"takes a list of files or a \{name: file\} mapping, not one path"),
        ({"judge_options": 3}, r"EvalConfig\.judge_options must be a mapping or a list, not int"),
        ({"batchsize": 8}, r"unknown evaluation setting\(s\) 'batchsize'; the settings are: .*batch_size"),
]  # fmt: skip


@pytest.mark.parametrize(("settings", "message"), _SETTINGS)
def test_a_wrong_setting_names_the_field(settings: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        capbench.EvalConfig.from_dict(settings)


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model or judge is built."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model or judge was loaded before the refusal")

    monkeypatch.setattr(build, "build_engine", refuse)
    monkeypatch.setattr(build, "build_judges", refuse)


_REFUSALS = [
        ({"metrics": ["bleu"]}, ConfigError, r"unknown metric 'bleu'; choose from: .*entry-point group"),
        ({"benchmark": "imagenet"}, ConfigError, r"unknown benchmark 'imagenet'; choose from"),
        ({"judge": "foo:bar"}, ConfigError, r"unknown engine 'foo'"),
        ({"judge": "llamacpp:smollm2", "judge_options": {"n_cxt": 4}}, ConfigError, r"takes no option n_cxt"),
        ({"judge_options": {"api_key": "sk-1"}}, ConfigError, r"looks like a secret"),
        ({"metrics": {"captionqa": {"answer_mod": "letter"}}}, ConfigError,
         r"metric 'captionqa' has no setting 'answer_mod'; its settings: .*answer_mode"),
        ({"metrics": {"dcscore": {"trials": "3"}}}, ConfigError, r"metric 'dcscore'"),
        ({"captions": ["missing.jsonl"], "example_captions": False}, InputError,
         r"missing\.jsonl: caption file not found"),
        ({"captions": {"mine": {"moon": ""}}, "example_captions": False}, InputError, r"id 'moon' has no caption"),
        ({"benchmark": "decapbench", "metrics": ["arena"], "model": "hf:/nonexistent/model"}, ConfigError,
         r"no such folder|not found|needs baseline captions"),
        ({"benchmark": "decapbench", "metrics": ["arena"]}, ConfigError, r"needs baseline captions"),
        ({"benchmark": "jsonl"}, ConfigError, r"benchmark 'jsonl' needs --data-file"),
        ({"metrics": []}, ConfigError, r"only generates captions: give a model"),
    ]  # fmt: skip


@pytest.mark.usefixtures("no_loading")
@pytest.mark.parametrize(("settings", "error", "message"), _REFUSALS)
def test_every_refusal_comes_before_any_model_loads(tmp_path: Path, settings, error, message):
    base = {"example_captions": True, "results_dir": tmp_path / "results"}
    with pytest.raises(error, match=message):
        capbench.evaluate(**{**base, **settings})
    assert not (tmp_path / "results").exists()


@pytest.mark.usefixtures("no_loading")
def test_arena_without_baselines_is_refused_before_captioning(tmp_path: Path):
    # a user's own data without baseline captions: refused before the model is built or any caption made
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    data = tmp_path / "mine.jsonl"
    data.write_text('{"id": "red", "image": "red.png", "caption": "A red square."}\n')
    with pytest.raises(ConfigError, match="needs baseline captions"):
        capbench.evaluate(benchmark="jsonl", benchmark_options={"data_file": data}, metrics=["arena"],
                          model="openai:served-model", model_options={"base_url": "http://127.0.0.1:9/v1"},
                          results_dir=tmp_path / "results")  # fmt: skip
    assert not (tmp_path / "results").exists()


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> str:
    """A judge that answers 'A' to everything, named as users name judges."""
    from capbench import engines

    monkeypatch.setitem(engines.ENGINES, "scripted", ("conftest", "FixedReplyEngine", "test engine"))
    return "scripted:A"


def test_evaluate_returns_per_set_summaries_and_samples_the_same_when_resumed(tmp_path: Path, scripted: str):
    settings = {
        "benchmark": "mini",
        "captions": {"mine": MINI / "short.jsonl", "theirs": MINI / "detailed.jsonl"},
        "metrics": {"captionqa": {"answer_mode": "letter"}},
        "judge": scripted,
        "limit": 3,
        "results_dir": tmp_path / "results",
        "cache": False,
    }
    first = capbench.evaluate(**settings)
    assert list(first) == ["mine", "theirs"] and first.benchmark == "mini"
    mine = first["mine"]
    assert [s.sample_id for s in mine.samples] == [s.id for s in capbench.load_benchmark("mini").samples[:3]]
    record = mine.samples[0]
    assert record.caption and isinstance(record.scores["captionqa"], SampleScore)
    assert mine.summary["captionqa"]["score"] == mine.headline("captionqa")
    assert mine.info["captionqa"].title == "CaptionQA" and mine.stats["judge_calls"] > 0
    # the judge always answers "A": the score is the share of questions whose right answer was shown as A
    questions = [q for s in mine.samples for q in s.scores["captionqa"].details["questions"]]
    assert {q["chosen"] for q in questions} == {"A"}
    # the same call again resumes: no judge call, the same objects
    second = capbench.evaluate(capbench.EvalConfig(**settings))
    assert second["mine"].stats["judge_calls"] == 0 and second["mine"].resumed == {"captionqa": 3}
    assert second["mine"].summary == mine.summary and second["mine"].samples == mine.samples
    # and read back from disk
    again = capbench.read_run(mine.path)
    assert again.summary == mine.summary and again.samples == mine.samples and again.info == mine.info
    everything = capbench.read_results(tmp_path / "results")
    assert set(everything) == {"mini"} and set(everything["mini"]) == {"mine", "theirs"}
    assert everything["mini"]["theirs"].samples == first["theirs"].samples
    # the report is what `capbench eval --json` prints
    report = first.to_dict()
    assert [r["caption_set"] for r in report["runs"]] == ["mine", "theirs"] and report["judges"]["text"]
    json.dumps(report)


def test_read_run_refuses_what_is_not_a_run(tmp_path: Path):
    with pytest.raises(InputError, match=r"no manifest\.json; not a capbench run folder"):
        capbench.read_run(tmp_path)
    with pytest.raises(InputError, match="no such results folder"):
        capbench.read_results(tmp_path / "nope")


class WordCount:
    """A metric added at run time, as the issue tried: words per caption (no judge)."""

    name = "wordcount"
    higher_is_better = False
    value_range = (0.0, 1000.0)
    needs = frozenset[str]()
    judge_roles: tuple[str, ...] = ()

    def config(self) -> dict[str, Any]:
        return {}

    def prompt_hashes(self) -> dict[str, str]:
        return {}

    def planned_requests(self, samples: Sequence[Sample], captions: Sequence[Caption]) -> int:
        return 0

    def score(self, samples: Sequence[Sample], captions: Sequence[Caption], judges: Any) -> list[SampleScore]:
        return [SampleScore(c.sample_id, self.name, {"words": float(len(c.text.split()))}) for c in captions]

    def summarize(self, scores: Sequence[SampleScore]) -> dict[str, Any]:
        return {"score": sum(s.values["words"] for s in scores) / len(scores)}

    def units(self, scores: Sequence[SampleScore]) -> list[tuple[str, str, float, float]]:
        return [(s.sample_id, "all", s.values["words"], 1.0) for s in scores]


def test_a_metric_registered_at_run_time_is_scored_printed_and_ranked(tmp_path: Path, monkeypatch):
    from capbench import metrics

    monkeypatch.setitem(metrics.METRICS, "wordcount", ("test_api", "WordCount", "", "words per caption"))
    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(main, ["eval", "--example-captions", "-m", "wordcount", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "wordcount on mini" in result.output  # a table of its own, from its declaration's defaults
    short = [len(json.loads(x)["caption"].split()) for x in (MINI / "short.jsonl").read_text().splitlines()]
    assert f"{sum(short) / len(short):.1f}" in result.output
    board = runner.invoke(main, ["leaderboard", str(tmp_path), "--json", "--no-figures"])
    assert board.exit_code == 0, board.output
    rows = json.loads(board.stdout)["boards"][0]["rows"]
    assert rows[0]["model"] == "short"  # lower is better: the shortest captions first


def test_a_metric_named_like_a_leaderboard_column_is_refused():
    from capbench import metrics

    class Words(WordCount):
        name = "words"

    with pytest.raises(capbench.ConfigError, match="reserved"):
        metrics.describe(Words)


def test_a_served_judge_that_is_down_is_named_before_any_caption_is_generated(tmp_path: Path, scripted: str):
    from capbench import engines

    made: list[int] = []

    class Captioner:  # records every caption request: there must be none
        backend, accepts_images, supports_loglik = "counting", True, False

        def __init__(self, model: str) -> None:
            self.model = model

        def fingerprint(self) -> dict[str, Any]:
            return {"backend": "counting", "model": self.model}

        def run(self, requests, on_result=None):
            made.append(len(requests))
            raise AssertionError("a caption was generated before the judge was checked")

    engines.ENGINES["counting"] = ("test_api", "Captioner", "test engine")
    globals()["Captioner"] = Captioner
    try:
        with pytest.raises(capbench.CapbenchError, match=r"127\.0\.0\.1:9.*(unreachable|start the server)"):
            capbench.evaluate(model="counting:any", metrics=["captionqa"], judge="openai:judge-model",
                              judge_options={"base_url": "http://127.0.0.1:9/v1", "timeout": 2, "max_retries": 0},
                              results_dir=tmp_path / "results", cache=False)  # fmt: skip
    finally:
        del engines.ENGINES["counting"]
    assert made == [] and not list((tmp_path / "results").rglob("generated.jsonl"))


_METRIC_SETTINGS = [
    ({"captionqa": {"max_tokens": "4"}}, r"metric 'captionqa': setting 'max_tokens' must be int, not str"),
    ({"captionqa": {"answer_mode": "letters"}}, r"setting 'answer_mode' must be one of 'letter', 'loglik'"),
    ({"caprl": {"samples": 2.5}}, r"metric 'caprl': setting 'samples' must be int, not float"),
]


@pytest.mark.usefixtures("no_loading")
@pytest.mark.parametrize(("settings", "message"), _METRIC_SETTINGS)
def test_a_metric_setting_of_the_wrong_type_names_the_metric_and_setting(tmp_path: Path, settings, message):
    with pytest.raises(ConfigError, match=message):
        capbench.evaluate(example_captions=True, metrics=settings, results_dir=tmp_path)


@pytest.mark.usefixtures("no_loading")
def test_caption_ids_the_benchmark_lacks_are_named_before_any_judge_loads(tmp_path: Path):
    with pytest.raises(InputError, match=r"1 id\(s\) are not in benchmark 'mini' \('mars'\)"):
        capbench.evaluate(captions={"mine": {"mars": "Red dust."}}, results_dir=tmp_path)


#: The kinds of bad input this file covers (counted in benchmarks/results/robustness.md).
KINDS = (
    *(f"EvalConfig {', '.join(settings)}: {settings}" for settings, _ in _SETTINGS),
    *(f"refused before loading: {settings}" for settings, _, _ in _REFUSALS),
    *(f"metric setting of the wrong type: {settings}" for settings, _ in _METRIC_SETTINGS),
    "a served judge that is down, before captioning",
    "caption ids the benchmark lacks, before any judge",
)


class Boom(WordCount):
    """A metric whose score() has a bug, as a plugin's might."""

    name = "boom"

    def score(self, samples: Sequence[Sample], captions: Sequence[Caption], judges: Any) -> list[SampleScore]:
        raise ValueError("division by zero in the plugin")


def test_a_plugin_metric_that_raises_is_one_line_naming_it_not_a_traceback(tmp_path: Path, monkeypatch):
    from capbench import metrics

    monkeypatch.setitem(metrics.METRICS, "boom", ("test_api", "Boom", "", "a broken metric"))
    result = CliRunner().invoke(main, ["eval", "--example-captions", "-m", "boom", "--results-dir", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "metric 'boom' (from test_api) failed while scoring (ValueError: division by zero" in error
