"""DCScore and BalCap end to end on the fact pipeline, with a judge that knows the truth."""

from __future__ import annotations

import pytest
from oracle_engine import OracleEngine

from capbench.data import load_benchmark
from capbench.engines.cache import CachedEngine, ResponseCache
from capbench.metrics import build_metric
from capbench.records import Caption, read_caption_file


@pytest.fixture(scope="module")
def oracle_scores():
    bench = load_benchmark("mini")
    judge = CachedEngine(OracleEngine(), ResponseCache(":memory:"))
    out = {}
    for name, path in bench.example_captions.items():
        captions = read_caption_file(path)
        caps = [Caption(s.id, captions.captions[s.id]) for s in bench.samples]
        for metric_name in ("dcscore", "balcap"):
            metric = build_metric(metric_name)
            scores = metric.score(list(bench.samples), caps, {"text": judge})
            out[(metric_name, name)] = metric.summarize(scores)
    return out, judge


def test_truthful_judge_ranks_the_example_sets(oracle_scores):
    summaries, _ = oracle_scores
    for metric in ("dcscore", "balcap"):
        detailed, planted, short = (summaries[(metric, n)] for n in ("detailed", "planted_errors", "short"))
        assert detailed["failed"] == planted["failed"] == short["failed"] == 0
        assert detailed["precision"] > planted["precision"], metric
        assert detailed["recall"] > short["recall"], metric
        assert detailed["score"] > planted["score"] and detailed["score"] > short["score"], metric
    assert summaries[("dcscore", "detailed")]["verify_mode"] == ["reference"]


def test_both_metrics_share_every_fact_judgment(oracle_scores):
    _, judge = oracle_scores
    # per caption: decompose, match, verify (shared by both metrics) and the writing rating
    assert judge.stats.calls == 3 * 18 * 4
    assert judge.stats.cache_hits == 3 * 18 * 3
