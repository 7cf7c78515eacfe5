"""Every metric's units reproduce its headline score: what lets the leaderboard bootstrap any metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from capbench.cli import main
from capbench.metrics import build_metric
from capbench.metrics.base import headline
from capbench.records import SampleScore, read_jsonl


def test_headline_is_the_mean_of_stratum_weighted_means():
    units = [("a", "x", 100.0, 3), ("b", "x", 0.0, 1), ("c", "y", 10.0, 1), ("d", "z", 5.0, 0)]
    # x: 300/4 = 75; y: 10; z has no weight and is left out
    assert headline(units) == pytest.approx((75 + 10) / 2)
    assert headline([]) is None


@pytest.mark.parametrize(("judge", "metrics"), [("scripted:A", "captionqa"), ("oracle:truth", "dcscore,balcap")])
def test_units_reproduce_every_summary(tmp_path: Path, oracle_cli_engine, scripted_cli_engine, judge, metrics):
    argv = ["eval", "--example-captions", "--judge", judge, "-m", metrics, "--results-dir", str(tmp_path), "--json"]
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    runs = json.loads(result.output)["runs"]
    checked = 0
    for run in runs:
        for name, summary in run["metrics"].items():
            path = Path(run["results_dir"]) / f"{name}.jsonl"
            scores = [SampleScore.from_dict(obj) for _, obj in read_jsonl(path)]
            units = build_metric(name).units(scores)
            assert units, (run["caption_set"], name)
            assert headline(units) == pytest.approx(summary["score"]), (run["caption_set"], name)
            checked += 1
    assert checked == 3 * len(metrics.split(","))
