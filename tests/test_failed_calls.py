"""A judge call that failed is never final: the next run asks for exactly those calls again.

Failures are counted in the printed tables with the first error's text, and a run whose share of
failed calls reaches ``--fail-at`` (default: every call) exits with status 1.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ScriptedEngine
from oracle_engine import OracleEngine

from capbench.cli import main
from capbench.data import load_benchmark
from capbench.engines.base import EngineWrapper, Response
from capbench.engines.cache import CachedEngine, ResponseCache
from capbench.errors import InputError
from capbench.evaluation import Evaluator
from capbench.hashing import content_hash
from capbench.metrics import build_metric
from capbench.records import read_caption_file
from capbench.runs import ScoreLog

#: The kinds of fault this file covers (counted in benchmarks/results/robustness.md).
KINDS = (
    "judge calls failing in transport, then a rerun with the judge back",
    "every judge call of a run failing",
    "a share of failed calls past --fail-at",
    "a second run into a folder a run is writing",
    "a killed run's folder lock",
)
METRICS = ("captionqa", "caprl", "dcscore", "balcap", "arena")


def _verdict(request) -> str:
    """Letters for the QA metrics, a verdict for pairwise judging."""
    if "caption_1" in request.messages[-1].joined_text():
        return json.dumps({"reason": "r", "judgment": "Caption 1 is better"})
    return "A"


class Counting(EngineWrapper):
    """Counts the requests that reach the judge; with ``flaky``, every third distinct one fails."""

    def __init__(self, engine, flaky: bool = False) -> None:
        super().__init__(engine)
        self.flaky = flaky
        self.asked = 0

    def run(self, requests, on_result=None):
        out = []
        for index, request in enumerate(requests):
            self.asked += 1
            if self.flaky and int(content_hash(request.canonical())[:8], 16) % 3 == 0:
                response = Response(error="ConnectError: connection refused")
            else:
                [response] = self.engine.run([request])
            out.append(response)
            if on_result is not None:
                on_result(index, response)
        return out


def _judge(metric: str, flaky: bool = False) -> Counting:
    return Counting(OracleEngine() if metric in ("dcscore", "balcap") else ScriptedEngine(_verdict), flaky)


def _evaluate(tmp_path: Path, judge: Counting, cache: ResponseCache, metric: str):
    bench = load_benchmark("mini")
    evaluator = Evaluator(bench, [build_metric(metric)], {"text": CachedEngine(judge, cache)}, tmp_path / "r", 4)
    captions = read_caption_file(bench.example_captions["short"])
    return evaluator.evaluate(captions, limit=6)


@pytest.mark.parametrize("metric", METRICS)
def test_a_rerun_asks_again_for_exactly_the_failed_calls(tmp_path: Path, metric: str):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    flaky = _judge(metric, flaky=True)
    first = _evaluate(tmp_path, flaky, cache, metric)
    failed = first.stats["failures"]
    assert failed > 0 and first.first_error == "ConnectError: connection refused"
    log = ScoreLog(tmp_path / "r" / "mini" / "short" / f"{metric}.jsonl").load()
    with_failures = [s for s in log.values() if s.failed]
    assert with_failures and sum(s.failed for s in log.values()) == failed

    healthy = _judge(metric)
    second = _evaluate(tmp_path, healthy, cache, metric)
    assert second.retried[metric] == len(with_failures)
    assert second.resumed[metric] == 6 - len(with_failures)
    assert second.stats["failures"] == 0 and second.first_error is None
    assert not any(s.failed for s in ScoreLog(tmp_path / "r" / "mini" / "short" / f"{metric}.jsonl").load().values())

    fresh = _judge(metric)
    clean = _evaluate(tmp_path / "clean", fresh, ResponseCache(), metric)
    assert second.summaries == clean.summaries  # the good replies were kept, the failed ones replaced
    # No call that succeeded was asked twice: both runs together asked what a clean run asks, plus
    # the failed calls once more (a staged metric's later stages wait for the calls they build on).
    assert flaky.asked + healthy.asked == fresh.asked + failed

    third = _judge(metric)
    assert _evaluate(tmp_path, third, cache, metric).retried[metric] == 0 and third.asked == 0


def test_an_unparseable_reply_stays_unscored_and_is_not_asked_again(tmp_path: Path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    first = _evaluate(tmp_path, Counting(ScriptedEngine(lambda r: "no option named here")), cache, "captionqa")
    assert first.summaries["captionqa"]["unparsed"] > 0 and first.stats["failures"] == 0
    again = _judge("captionqa")
    second = _evaluate(tmp_path, again, cache, "captionqa")
    assert again.asked == 0 and second.retried["captionqa"] == 0
    assert second.summaries == first.summaries


def _cassette(tmp_path: Path) -> Path:
    """A cassette that answers nothing: every call fails with 'not in the cassette'."""
    path = tmp_path / "empty.jsonl"
    header = {"cassette": 1, "engine": {"backend": "scripted", "model": "x"}, "supports_loglik": True}
    path.write_text(json.dumps(header) + "\n")
    return path


def _eval(tmp_path: Path, *args: str):
    argv = ["eval", "--example-captions", "--limit", "2", "--results-dir", str(tmp_path / "res"), *args]
    return CliRunner().invoke(main, argv)


def test_a_run_whose_every_call_failed_exits_1_and_says_why(tmp_path: Path):
    result = _eval(tmp_path, "--judge", f"replay:{_cassette(tmp_path)}", "--answer-mode", "letter")
    assert result.exit_code == 1, result.output
    assert "judge calls failed" in result.output and "not in empty.jsonl" in result.output
    assert "rerun the same command" in result.output
    header = "".join(result.output.split("Judge usage")[1].splitlines()[1:5])
    assert "failed" in header  # the failures column


def test_json_output_counts_failures_and_still_exits_1(tmp_path: Path):
    result = _eval(tmp_path, "--judge", f"replay:{_cassette(tmp_path)}", "--answer-mode", "letter", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    run = report["runs"][0]
    assert run["failures"] == run["judge_calls"] > 0 and "not in empty.jsonl" in run["first_error"]


def test_fail_at_sets_the_threshold(tmp_path: Path):
    # every other reply of the golden cassette: about half of each set's judge calls find none and fail
    lines = (Path(__file__).parent / "golden" / "embedded_mini_cassette.jsonl").read_text().splitlines()
    half = tmp_path / "half.jsonl"
    half.write_text("\n".join([lines[0], *lines[1::2]]) + "\n")
    partial = ["--judge", f"replay:{half}", "--answer-mode", "loglik", "--no-cache"]
    lenient = _eval(tmp_path / "a", *partial)
    assert lenient.exit_code == 0, lenient.output
    assert "judge call(s) failed, first:" in lenient.output
    strict = _eval(tmp_path / "b", *partial, "--fail-at", "0")
    assert strict.exit_code == 1 and "judge calls failed" in strict.output


HOLD = """
import sys, time
from pathlib import Path
from capbench.runs import RunLock
with RunLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_ones_lock_is_recovered(tmp_path: Path):
    folder = tmp_path / "r" / "mini" / "short"
    holder = _holder(folder)
    try:
        with pytest.raises(InputError, match=rf"another capbench run \(pid {holder.pid} on .*\) is writing here"):
            _evaluate(tmp_path, _judge("captionqa"), ResponseCache(), "captionqa")
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the dead holder's lock: the next run takes it over
    result = _evaluate(tmp_path, _judge("captionqa"), ResponseCache(), "captionqa")
    assert result.samples == 6 and not (folder / ".lock").exists()


def test_two_cli_runs_into_one_folder_do_not_mix(tmp_path: Path):
    holder = _holder(tmp_path / "res" / "mini" / "short")
    try:
        short = str(load_benchmark("mini").example_captions["short"])
        argv = ["eval", "-c", short, "-m", "caprl", "--limit", "2", "--results-dir", str(tmp_path / "res")]
        result = CliRunner().invoke(main, argv)
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1 and f"pid {holder.pid}" in result.output, result.output
    assert not (tmp_path / "res" / "mini" / "short" / "caprl.jsonl").exists()


def test_a_lock_in_a_new_folder_leaves_no_folder_behind(tmp_path: Path):
    from capbench.runs import RunLock

    with RunLock(tmp_path / "new" / "run"):
        assert (tmp_path / "new" / "run" / ".lock").exists()
    assert not (tmp_path / "new" / "run").exists()
