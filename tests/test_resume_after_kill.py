"""A real run killed with SIGKILL mid-way resumes: nothing lost, duplicated or judged twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capbench.engines.cache import ResponseCache

pytestmark = pytest.mark.engine

EXAMPLES = Path(__file__).resolve().parents[1] / "capbench" / "data" / "mini" / "captions"


def _eval(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "capbench.cli", "eval", "-c", str(EXAMPLES / "short.jsonl"), "--limit", "5",
            "--batch-size", "1", "--results-dir", str(results), *extra]  # fmt: skip


def test_sigkill_then_resume(tmp_path: Path, capbench_home: Path):
    results = tmp_path / "results"
    log = results / "mini" / "short" / "captionqa.jsonl"
    proc = subprocess.Popen(_eval(results), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = log.read_text().count("\n")
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
