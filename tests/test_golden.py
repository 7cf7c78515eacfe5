"""Regression guard of the reward scorers: recorded judge replies must give the frozen scores.

``golden/embedded_mini_cassette.jsonl`` holds every reply of the embedded judge (SmolLM2-135M,
loglik mode) to CaptionQA over capbench-mini's three example caption sets;
``golden/captionqa_mini_embedded.json`` the scores they gave. Replaying the cassette must give
exactly those scores. A change to prompts, option order or request shape changes the requests,
which the cassette then lacks: those judgments fail, and this test says to re-record.
Re-record with:
    capbench eval --example-captions --answer-mode loglik --overwrite \\
        --record-judge tests/golden/embedded_mini_cassette.jsonl --results-dir /tmp/golden --json
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from capbench.cli import main
from capbench.data import load_benchmark
from capbench.engines import build_engine
from capbench.engines.replay import ReplayEngine
from capbench.metrics.captionqa import CaptionQA, CaptionQAConfig
from capbench.records import Caption, read_caption_file

GOLDEN = Path(__file__).parent / "golden"
CASSETTE = GOLDEN / "embedded_mini_cassette.jsonl"


def test_replayed_judge_gives_the_frozen_scores(tmp_path: Path):
    expected = json.loads((GOLDEN / "captionqa_mini_embedded.json").read_text())
    argv = ["eval", "--example-captions", "--judge", f"replay:{CASSETTE}", "--answer-mode", "loglik",
            "--results-dir", str(tmp_path), "--json"]  # fmt: skip
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    runs = {r["caption_set"]: r for r in json.loads(result.output)["runs"]}
    for name, summary in expected["captionqa"].items():
        got = runs[name]["metrics"]["captionqa"]
        assert got["failed"] == 0, f"{got['failed']} judgments missing from the cassette: re-record it (see docstring)"
        assert got == summary, name
    # the embedded judge tells the three sets apart in the expected order
    score = {name: expected["captionqa"][name]["score"] for name in expected["captionqa"]}
    assert score["detailed"] > score["planted_errors"] > score["short"]


@pytest.mark.engine
def test_cassette_matches_the_live_embedded_judge():
    """The cassette is what the embedded judge answers today, on this machine (first two images)."""
    bench = load_benchmark("mini")
    samples = list(bench.samples[:2])
    captions = read_caption_file(bench.example_captions["detailed"])
    metric = CaptionQA(CaptionQAConfig(answer_mode="loglik"))
    caps = [Caption(s.id, captions.captions[s.id]) for s in samples]
    replayed = metric.score(samples, caps, {"text": ReplayEngine(CASSETTE)})
    live_engine = build_engine("llamacpp:smollm2")
    assert ReplayEngine(CASSETTE).recorded["sha256"] == live_engine.fingerprint()["sha256"]
    live = metric.score(samples, caps, {"text": live_engine})
    flips = 0
    for a, b in zip(replayed, live, strict=True):
        for qa, qb in zip(a.details["questions"], b.details["questions"], strict=True):
            # another CPU's kernels may round differently: allow 1e-3, and a different choice only on a tie
            assert qa["option_scores"] == pytest.approx(qb["option_scores"], abs=1e-3), qa["question_id"]
            if qa["chosen"] != qb["chosen"]:
                top = sorted(qb["option_scores"])[-2:]
                assert top[1] - top[0] < 2e-3, qa["question_id"]
                flips += 1
    assert flips <= 1


FACTS_CASSETTE = GOLDEN / "embedded_facts_cassette.jsonl"


def test_replayed_judge_gives_the_frozen_fact_scores(tmp_path: Path):
    """DCScore and b-CapScore of the embedded judge's recorded replies, exactly.

    Re-record with:
        capbench eval --example-captions -m dcscore,balcap --overwrite \\
            --record-judge tests/golden/embedded_facts_cassette.jsonl --results-dir /tmp/golden --json
    """
    expected = json.loads((GOLDEN / "facts_mini_embedded.json").read_text())
    argv = ["eval", "--example-captions", "-m", "dcscore,balcap", "--judge", f"replay:{FACTS_CASSETTE}",
            "--fact-protocol", "embedded", "--results-dir", str(tmp_path), "--json"]  # fmt: skip
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    runs = {r["caption_set"]: r for r in json.loads(result.output)["runs"]}
    for name, metrics in expected["metrics"].items():
        for metric, summary in metrics.items():
            assert runs[name]["metrics"][metric] == summary, (name, metric)
    # every request the pipeline sends today is in the cassette
    log = tmp_path / "mini" / "detailed" / "dcscore.jsonl"
    replay_misses = [f for line in log.read_text().splitlines() for f in json.loads(line)["details"]["failures"]
                     if "not in" in (f["error"] or "")]  # fmt: skip
    assert replay_misses == [], "the prompts changed: re-record the cassette (see docstring)"


@pytest.mark.engine
def test_fact_cassette_matches_the_live_embedded_judge():
    """The fact cassette is what the embedded judge answers today (one short caption)."""
    from capbench.metrics.balcap import BalCap
    from capbench.metrics.facts import FactConfig

    bench = load_benchmark("mini")
    sample = bench.samples[0]
    caption = Caption(sample.id, read_caption_file(bench.example_captions["short"]).captions[sample.id])
    metric = BalCap(FactConfig.preset("embedded"))
    [replayed] = metric.score([sample], [caption], {"text": ReplayEngine(FACTS_CASSETTE)})
    [live] = metric.score([sample], [caption], {"text": build_engine("llamacpp:smollm2")})
    assert live.details == replayed.details
    assert live.values == replayed.values
