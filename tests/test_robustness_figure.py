"""The published count of bad-input, hostile-caption and fault kinds is the suites' own count."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_published_figure_matches_the_suites():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import robustness
    finally:
        sys.path.remove(str(BENCHMARKS))
    published = json.loads((BENCHMARKS / "results" / "robustness.json").read_text())
    counted = robustness.count()
    assert published == counted, "a suite's kinds changed: run `python benchmarks/robustness.py` and commit its results"
    assert counted["totals"]["bad input"] >= 64 and counted["totals"]["fault"] >= 30
    summary = (BENCHMARKS / "results" / "SUMMARY.md").read_text()
    assert f"**{counted['all']} kinds in all**" in summary
