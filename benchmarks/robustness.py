"""Count the kinds of bad input, hostile caption and fault that the test suite puts capbench through.

Usage: python benchmarks/robustness.py

Reads the suites' own lists (``CASES`` of tests/test_bad_inputs.py, ``PAYLOADS`` of
tests/test_hostile_captions.py, and ``KINDS`` of every other robustness suite), so the figure
is what the tests hold, not a number kept by hand; tests/test_robustness_figure.py fails when
benchmarks/results/robustness.json no longer matches them. Writes benchmarks/results/robustness.json
and .md.
"""

from __future__ import annotations

import importlib
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from _report import save

TESTS = Path(__file__).resolve().parents[1] / "tests"
#: Suite module -> what its kinds are, and the list that names them.
SUITES = {
    "test_bad_inputs": ("bad input", "CASES"),
    "test_cli_inputs": ("bad input", "KINDS"),
    "test_rl_checks": ("bad input", "KINDS"),
    "test_api": ("bad input", "KINDS"),
    "test_jsonl_benchmark": ("bad input", "KINDS"),
    "test_serve": ("bad input", "KINDS"),
    "test_serve_batches": ("bad input", "KINDS"),
    "test_shards": ("bad input", "KINDS"),
    "test_hostile_captions": ("hostile caption", "PAYLOADS"),
    "test_faulty_judge": ("fault", "KINDS"),
    "test_resume_after_kill": ("fault", "KINDS"),
    "test_failed_calls": ("fault", "KINDS"),
    "test_cache_faults": ("fault", "KINDS"),
    "test_openai_fingerprint": ("fault", "KINDS"),
    "test_judge_fleet": ("fault", "KINDS"),
}


def kinds_of(module: Any, attribute: str) -> list[str]:
    """Return the kinds a suite module names in ``attribute``, each once."""
    items = getattr(module, attribute)
    if attribute == "CASES":
        kinds = [case.id for case in items]
    elif attribute == "PAYLOADS":  # (kind, payload) pairs
        kinds = [kind for kind, _ in items]
    else:
        kinds = [str(kind) for kind in items]
    return list(dict.fromkeys(kinds))


def count() -> dict[str, Any]:
    """Return every suite's kinds and the totals per category."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    suites = {}
    for name, (category, attribute) in SUITES.items():
        kinds = kinds_of(importlib.import_module(name), attribute)
        suites[name] = {"category": category, "kinds": kinds, "count": len(kinds)}
    totals = Counter()
    for suite in suites.values():
        totals[suite["category"]] += suite["count"]
    return {"suites": suites, "totals": dict(totals), "all": sum(totals.values())}


def markdown(report: dict[str, Any]) -> str:
    """Return the report as a Markdown table."""
    totals = report["totals"]
    lines = [
        "# Bad inputs, hostile captions and faults the tests put capbench through",
        "",
        f"**{report['all']} kinds in all**: {totals.get('bad input', 0)} kinds of bad input, "
        f"{totals.get('hostile caption', 0)} of hostile caption, {totals.get('fault', 0)} of fault. "
        "Counted from the suites' own lists by `python benchmarks/robustness.py`.",
        "",
        "| suite | category | kinds |",
        "|---|---|---|",
    ]
    for name, suite in report["suites"].items():
        lines.append(f"| tests/{name}.py | {suite['category']} | {suite['count']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    result = count()
    save("robustness", result, markdown(result))
