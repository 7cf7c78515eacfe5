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
