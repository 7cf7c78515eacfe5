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
from capbench.engines.llamacpp_build import PORTABLE_FEATURES, REBUILD, REFERENCE_VERSION, kernel_difference
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


def _verdict(recorded: dict, live_engine) -> str:
    """Say whether a live answer that differs from the cassette is a kernel difference or a regression."""
    difference = kernel_difference(recorded, live_engine.fingerprint())
    if difference is not None:
        return (
            f"KERNEL DIFFERENCE, not a regression: this llama.cpp build is not the one the cassette was recorded "
            f"with ({difference}). Rebuild llama-cpp-python portable (`make clean install`, or: {REBUILD})."
        )
    return (
        "REGRESSION: the same llama.cpp build and kernels as the cassette answer differently, so capbench's "
        "requests or their scoring changed (re-record the cassette only if that change was meant)."
    )


@pytest.mark.engine
def test_cassette_matches_the_live_embedded_judge():
    """The cassette is what the embedded judge answers today (first two images), to the last bit.

    The portable llama.cpp build runs the same kernels on every x86-64 CPU with AVX2, so its
    log-likelihoods are exact; a difference is a regression, or another build (the message says which).
    """
    bench = load_benchmark("mini")
    samples = list(bench.samples[:2])
    captions = read_caption_file(bench.example_captions["detailed"])
    metric = CaptionQA(CaptionQAConfig(answer_mode="loglik"))
    caps = [Caption(s.id, captions.captions[s.id]) for s in samples]
    cassette = ReplayEngine(CASSETTE)
    replayed = metric.score(samples, caps, {"text": cassette})
    live_engine = build_engine("llamacpp:smollm2")
    assert cassette.recorded["sha256"] == live_engine.fingerprint()["sha256"], "the cassette is of another GGUF file"
    live = metric.score(samples, caps, {"text": live_engine})
    got = {q["question_id"]: (q["option_scores"], q["chosen"]) for s in live for q in s.details["questions"]}
    want = {q["question_id"]: (q["option_scores"], q["chosen"]) for s in replayed for q in s.details["questions"]}
    differ = sorted(qid for qid in want if got.get(qid) != want[qid])
    assert not differ, f"{len(differ)} of {len(want)} answers differ (first: {differ[0]}). " + _verdict(
        cassette.recorded, live_engine
    )


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
    live_engine = build_engine("llamacpp:smollm2")
    [live] = metric.score([sample], [caption], {"text": live_engine})
    recorded = ReplayEngine(FACTS_CASSETTE).recorded
    assert (live.details, live.values) == (replayed.details, replayed.values), _verdict(recorded, live_engine)


def test_the_documented_demo_numbers_are_the_golden_ones():
    """README and the CaptionQA metric card quote `make demo`'s scores: they must be the golden file's."""
    golden = json.loads((GOLDEN / "captionqa_mini_embedded.json").read_text())["captionqa"]
    want = {name: f"{golden[name]['score']:.1f}" for name in ("detailed", "short", "planted_errors")}
    root = Path(__file__).parent.parent
    readme = " ".join((root / "README.md").read_text().split())
    assert (
        f"{want['detailed']} (detailed), {want['short']} (short) and {want['planted_errors']} (planted_errors)"
        in readme
    )
    card = " ".join((root / "docs" / "metrics" / "captionqa.md").read_text().split())
    assert (
        f"detailed ({want['detailed']}) > planted errors ({want['planted_errors']}) > short ({want['short']})" in card
    )


def test_cassettes_name_the_portable_kernels():
    """Both cassettes were recorded on the portable build, and say so in their header."""
    for path in (CASSETTE, FACTS_CASSETTE):
        recorded = ReplayEngine(path).recorded
        assert recorded["llama_cpp"] == REFERENCE_VERSION, path.name
        assert recorded["kernels"].split("; ")[0].split()[1:8] == list(PORTABLE_FEATURES), path.name


def test_the_verdict_tells_a_kernel_difference_from_a_regression():
    class Live:
        def __init__(self, **fingerprint) -> None:
            self.fp = fingerprint

        def fingerprint(self) -> dict:
            return self.fp

    recorded = {"llama_cpp": "0.3.36", "kernels": "CPU: SSE3 SSSE3 AVX AVX2 F16C FMA BMI2"}
    assert _verdict(recorded, Live(**recorded)).startswith("REGRESSION")
    native = _verdict(recorded, Live(llama_cpp="0.3.36", kernels="CPU: SSE3 SSSE3 AVX AVX2 F16C FMA BMI2 AVX512"))
    assert native.startswith("KERNEL DIFFERENCE") and "AVX512" in native and "CMAKE_ARGS=" in native
    assert "names no kernels" in _verdict({"llama_cpp": "0.3.36"}, Live(**recorded))
