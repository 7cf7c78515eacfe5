"""Core figures: CLI start-up, and the demo's first run against its cached rerun.

Usage: python benchmarks/core.py [--quick]
Writes benchmarks/results/core.json and benchmarks/results/core.md.

- start-up: wall time of `capbench --help` and `capbench eval --help` (median of 10 runs);
- first run: `capbench eval --example-captions` on capbench-mini with the embedded judge and an
  empty cache (judge calls, cache hits, seconds);
- cached rerun: the same command with --overwrite, so every sample is rescored from the cache;
- resumed rerun: the same command as the first run, which finds every sample done.
--quick scores one image per caption set instead of all 18.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import save

HERE = Path(__file__).resolve().parent
CAPBENCH = [sys.executable, "-m", "capbench.cli"]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run a command; return its wall time and stdout."""
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    return time.perf_counter() - start, out.stdout


def startup(env: dict[str, str], repeats: int = 10) -> dict[str, float]:
    """Median wall time of the help commands, in seconds."""
    return {
        " ".join(args): statistics.median(timed([*CAPBENCH, *args], env)[0] for _ in range(repeats))
        for args in (["--help"], ["eval", "--help"])
    }


def eval_run(env: dict[str, str], results: Path, extra: list[str]) -> dict[str, object]:
    """Run the demo's eval once; return seconds, judge calls, cache hits and scores."""
    argv = [*CAPBENCH, "eval", "--example-captions", "--results-dir", str(results), "--json", *extra]
    seconds, stdout = timed(argv, env)
    runs = json.loads(stdout)["runs"]
    return {
        "seconds": round(seconds, 2),
        "judge_calls": sum(r["judge_calls"] for r in runs),
        "cache_hits": sum(r["cache_hits"] for r in runs),
        "prompt_tokens": sum(r["prompt_tokens"] for r in runs),
        "scores": {r["caption_set"]: round(r["metrics"]["captionqa"]["score"], 2) for r in runs},
    }


def table(report: dict[str, Any]) -> list[str]:
    """The Markdown rows of a core report: start-up times, then the first, cached and resumed runs."""
    rows = [
        "| figure | value |",
        "|---|---|",
        *(f"| `capbench {k}` start-up | {v:.3f} s |" for k, v in report["startup_seconds"].items()),
    ]
    for key in ("first_run", "cached_rerun", "resumed_rerun"):
        run = report[key]
        rows.append(f"| {key.replace('_', ' ')} | {run['seconds']} s, {run['judge_calls']} judge calls, "
                    f"{run['cache_hits']} cache hits |")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one image per caption set")
    args = parser.parse_args()
    limit = ["--limit", "1"] if args.quick else []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CAPBENCH_HOME": str(Path(tmp) / "home")}
        results = Path(tmp) / "results"
        report = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "scope": "1 image per caption set" if args.quick else "all 18 images, 3 caption sets",
            "startup_seconds": {k: round(v, 3) for k, v in startup(env).items()},
            "first_run": eval_run(env, results, limit),
            "cached_rerun": eval_run(env, results, [*limit, "--overwrite"]),
            "resumed_rerun": eval_run(env, results, limit),
        }
    rows = table(report)
    text = f"# Core figures\n\nMachine: {report['machine']}. Scope: {report['scope']}.\n\n" + "\n".join(rows) + "\n"
    save("core", report, text)


if __name__ == "__main__":
    main()
