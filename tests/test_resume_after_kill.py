"""A real run killed with SIGKILL mid-way resumes: nothing lost, duplicated or judged twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kill_after_lines

from capbench.engines.cache import ResponseCache

pytestmark = pytest.mark.engine

#: The kinds of fault this file covers (counted in benchmarks/results/robustness.md).
KINDS = (
    "SIGKILL mid-run, then a resume",
    "twenty SIGKILLs at random points, then a resume",
    "an API key in the environment (it must reach the server and nothing else)",
)

EXAMPLES = Path(__file__).resolve().parents[1] / "capbench" / "data" / "mini" / "captions"


def _eval(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "capbench.cli", "eval", "-c", str(EXAMPLES / "short.jsonl"), "--limit", "5",
            "--batch-size", "1", "--results-dir", str(results), *extra]  # fmt: skip


def test_sigkill_then_resume(tmp_path: Path, capbench_home: Path):
    results = tmp_path / "results"
    log = results / "mini" / "short" / "captionqa.jsonl"
    done_before = kill_after_lines(_eval(results), log, 2)
    cached_before = ResponseCache().stats()["entries"]
    assert 2 <= done_before < 5

    out = subprocess.run(_eval(results, "--json"), capture_output=True, text=True, check=True, env=os.environ)
    run = json.loads(out.stdout)["runs"][0]
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["sample_id"] for x in lines] == ["astronaut", "camera", "chelsea", "coffee", "rocket"]
    assert run["resumed_samples"]["captionqa"] == done_before
    # every request was answered once: the ones before the kill come from the cache, at most
    # the one in flight at the kill is asked again
    total = ResponseCache().stats()["entries"]
    assert run["judge_calls"] == total - cached_before
    assert run["cache_hits"] <= cached_before
    # and the result equals an uninterrupted run's
    clean = subprocess.run(_eval(tmp_path / "clean", "--json"), capture_output=True, text=True, check=True)
    assert json.loads(clean.stdout)["runs"][0]["metrics"] == run["metrics"]


def _served_eval(results: Path, base_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "capbench", "eval", "-c", str(EXAMPLES / "detailed.jsonl"), "--metrics", "captionqa",
            "--answer-mode", "letter", "--judge", "openai:loopback", "--judge-base-url", base_url,
            "--judge-opt", "concurrency=1", "--batch-size", "1", "--results-dir", str(results), *extra]  # fmt: skip


def test_twenty_kills_at_random_points_then_resume(tmp_path: Path, capbench_home: Path):
    import random
    import signal
    import time

    from loopback_judge import LoopbackJudge

    results = tmp_path / "results"
    log = results / "mini" / "detailed" / "captionqa.jsonl"
    rng = random.Random(20)
    interrupted = 0
    with LoopbackJudge(delay=0.08) as judge:
        for _ in range(20):
            before = sum(judge.received.values())
            proc = subprocess.Popen(_served_eval(results, judge.base_url), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=os.environ)  # fmt: skip
            time.sleep(rng.uniform(0.3, 2.0))  # start-up included: some kills land before any work
            assert proc.poll() is None, "the run finished before its kill: give it more work"
            interrupted += sum(judge.received.values()) > before
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        rows_before = log.read_text(errors="replace").count("\n") if log.exists() else 0
        done = subprocess.run(_served_eval(results, judge.base_url, "--json"), capture_output=True, text=True,
                              check=True, env=os.environ)  # fmt: skip
        repeated = sum(n - 1 for n in judge.received.values())
    assert interrupted >= 10  # most kills hit a run at work
    assert 0 < rows_before < 18  # the kills left work done and work to do
    run = json.loads(done.stdout)["runs"][0]
    rows = [json.loads(line) for line in log.read_text().splitlines()]  # every line is whole JSON
    ids = [r["sample_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 18  # nothing lost, nothing twice
    # a killed run loses at most the judge call in flight (concurrency 1): the cache kept every answer
    assert repeated <= interrupted
    assert not list(results.rglob("*.tmp")) and json.loads(
        (results / "mini" / "detailed" / "manifest.json").read_text()
    )

    with LoopbackJudge() as clean_judge:  # same answers, no kills, a fresh home: the reference run
        env = {**os.environ, "CAPBENCH_HOME": str(tmp_path / "clean-home")}
        clean = subprocess.run(_served_eval(tmp_path / "clean", clean_judge.base_url, "--json"), capture_output=True,
                               text=True, check=True, env=env)  # fmt: skip
    assert json.loads(clean.stdout)["runs"][0]["metrics"] == run["metrics"]


def test_an_api_key_reaches_the_server_and_nothing_else(tmp_path: Path, capbench_home: Path):
    from loopback_judge import LoopbackJudge

    secret = "sk-capbench-test-5c1f0e2d9a"
    env = {**os.environ, "CAPBENCH_FAKE_KEY": secret}
    results = tmp_path / "results"
    with LoopbackJudge() as judge:
        command = _served_eval(results, judge.base_url, "--judge-opt", "api_key_env=CAPBENCH_FAKE_KEY", "--limit", "2")
        done = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env, check=True)
        rich = subprocess.run(command, capture_output=True, text=True, env=env, check=True)  # the table, the bar
    assert judge.authorization == {f"Bearer {secret}"}
    written = [p for p in [*results.rglob("*"), *capbench_home.rglob("*")] if p.is_file()]
    assert any(p.name == "manifest.json" for p in written) and any(p.suffix == ".sqlite" for p in written)
    for path in written:
        assert secret.encode() not in path.read_bytes(), path
    for text in (done.stdout, done.stderr, rich.stdout, rich.stderr):
        assert secret not in text
