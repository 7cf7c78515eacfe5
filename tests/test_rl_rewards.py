"""capbench-rl rewards: length masking and penalty, TRL's advantage arithmetic, and BalCap rewards."""

from __future__ import annotations

import asyncio
import inspect
import math
import pickle
import threading
import time
from collections import Counter
from typing import ClassVar

import numpy as np
import pytest
from conftest import ScriptedEngine
from oracle_engine import OracleEngine

from capbench.data import load_benchmark
from capbench.engines.cache import CachedEngine, ResponseCache
from capbench.errors import ConfigError
from capbench.metrics import build_metric
from capbench.metrics.facts import FactConfig
from capbench.records import Caption, read_caption_file
from capbench_rl import rewards
from capbench_rl.advantages import advantages
from capbench_rl.rewards import JudgeSetup, balcap_rewards, completion_text, in_band, length_ratio

# --- length: ratio, band, penalty ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "reference", "rho"),
    [
        ("a b c", "a b c d e f", 0.5),  # half the reference's words
        ("one  two\nthree four", "x y", 2.0),  # any whitespace splits words
        ("", "x y z", 0.0),  # an empty caption
    ],
)
def test_length_ratio_in_words(caption, reference, rho):
    assert length_ratio(caption, reference) == rho


def test_length_ratio_in_tokens_and_its_errors():
    class Chars:
        def encode(self, text, add_special_tokens=False):
            return list(text)

    assert length_ratio("abc", "abcdef", "tokens", Chars()) == 0.5
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        length_ratio("a", "b", "tokens")
    with pytest.raises(ConfigError, match="reference caption is empty"):
        length_ratio("a", "  ")


@pytest.mark.parametrize(
    ("rho", "inside"),
    [(0.49, False), (0.5, True), (1.0, True), (2.0, True), (2.01, False)],  # the band [0.5, 2] is closed
)
def test_band_edges(rho, inside):
    assert in_band(rho, (0.5, 2.0)) is inside


@pytest.mark.parametrize(("rho", "penalty"), [(1.0, 0.0), (0.5, -0.25), (3.0, -1.0)])
def test_linear_length_penalty_with_coefficient_half(rho, penalty):
    assert rewards.linear_length_penalty(rho, coef=0.5) == penalty


def test_completion_text_reads_every_completion_format():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "chat"}]) == "chat"
    assert (
        completion_text([{"role": "assistant", "content": [{"type": "text", "text": "pa"}, {"text": "rts"}]}])
        == "parts"
    )
    with pytest.raises(ConfigError, match="string or a list of chat messages"):
        completion_text(42)


# --- advantages: c-GDPO and GRPO as TRL computes them, by hand ----------------------------------


def _std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_cgdpo_normalises_each_reward_in_its_group_then_sums_then_normalises_the_batch():
    table = [[1.0, 0.0], [0.0, 0.0], [0.5, 1.0], [0.5, 0.0]]  # 2 groups of 2 rollouts, 2 rewards
    z = 0.5 / (math.sqrt(0.5) + 1e-4)  # a pair (x, x - 1) normalised in its group: ±z; a constant pair: 0
    sums = [1 * z, -1 * z, 2 * z, -2 * z]  # weights (1, 2)
    expected = [s / (_std(sums) + 1e-4) for s in sums]
    assert advantages(table, [1.0, 2.0], 2, "normalize_then_sum") == pytest.approx(expected, abs=1e-9)


def test_vanilla_grpo_sums_then_normalises_in_each_group():
    table = [[1.0, 0.0], [0.0, 0.0], [0.5, 1.0], [0.5, 0.0]]
    sums = [1.0, 0.0, 2.5, 0.5]
    first, second = _std(sums[:2]), _std(sums[2:])
    expected = [0.5 / (first + 1e-4), -0.5 / (first + 1e-4), 1.0 / (second + 1e-4), -1.0 / (second + 1e-4)]
    assert advantages(table, [1.0, 2.0], 2, "sum_then_normalize") == pytest.approx(expected, abs=1e-9)
    assert not np.allclose(expected, advantages(table, [1.0, 2.0], 2))  # c-GDPO differs


def test_a_failed_reward_is_left_out_of_its_group_and_a_rollout_without_rewards_gets_zero():
    table = [[None, 1.0], [0.0, 0.0], [1.0, 0.0], [None, None], [0.0, 1.0], [1.0, 1.0]]  # groups of 3
    got = advantages(table, [1.0, 1.0], 3)
    # reward 0 in either group: only (0, 1) count, normalised to ±z; the missing one adds 0 to its sum
    z = 0.5 / (math.sqrt(0.5) + 1e-4)
    first = [1.0, 0.0, 0.0]  # group 1's reward 1
    n = [(v - 1 / 3) / (_std(first) + 1e-4) for v in first]
    # group 2's reward 1 is (1, 1) once rollout 3's None is left out: constant, so 0
    sums = [n[0], -z + n[1], z + n[2], None, -z, z]
    known = [s for s in sums if s is not None]
    mean, std = sum(known) / len(known), _std(known)
    expected = [0.0 if s is None else (s - mean) / (std + 1e-4) for s in sums]
    assert got == pytest.approx(expected, abs=1e-9)
    assert got[3] == 0.0


def test_grpo_leaves_a_rollout_whose_reward_failed_out_of_its_group():
    # TRL alone nansums the failed reward as 0: sums (1, 1.5, 1.6), advantages (-1.14, .41, .73)
    got = advantages([[None, 1.0], [0.5, 1.0], [0.6, 1.0]], [1.0, 1.0], 3, "sum_then_normalize")
    z = 0.05 / (_std([1.5, 1.6]) + 1e-4)  # the two scored rollouts, alone in their group
    assert got == pytest.approx([0.0, -z, z], abs=1e-9)
    # a rollout whose rewards all failed: 0 in both aggregations (TRL >= 1.6; capbench's rule)
    for aggregation in ("normalize_then_sum", "sum_then_normalize"):
        got = advantages([[1.0], [0.0], [0.0], [None]], [1.0], 4, aggregation)
        assert got == pytest.approx([1.1547, -0.5773, -0.5773, 0.0], abs=1e-3)


# --- BalCap rewards: the same numbers as capbench eval, masking, failures --------------------------


@pytest.fixture
def oracle_setup(oracle_cli_engine):
    rewards._RUNTIMES.clear()
    rewards.STATS.clear()
    yield JudgeSetup(judge="oracle:truth", fact_protocol="official", cache=":memory:")
    rewards._RUNTIMES.clear()


def test_rewards_are_coroutine_partials_that_pickle_and_keep_their_names(oracle_setup):
    from trl.trainer.utils import get_callable_name

    funcs = balcap_rewards(oracle_setup)
    assert [get_callable_name(f) for f in funcs] == ["balcap_precision", "balcap_recall", "balcap_linguistic"]
    for func in funcs:
        assert inspect.iscoroutinefunction(func)
        clone = pickle.loads(pickle.dumps(func))
        assert get_callable_name(clone) == get_callable_name(func) and clone.keywords == func.keywords


def test_balcap_rewards_equal_capbench_eval_and_share_one_set_of_judge_calls(oracle_setup):
    bench = load_benchmark("mini")
    samples = list(bench.samples[:4])
    captions = read_caption_file(bench.example_captions["detailed"]).captions
    completions = [[{"role": "assistant", "content": captions[s.id]}] for s in samples]
    columns = {
        "reference_caption": [s.reference_caption for s in samples],
        "reference_facts": [list(s.reference_facts) for s in samples],
    }
    funcs = balcap_rewards(oracle_setup, band=None)
    got = [asyncio.run(f(["prompt"] * 4, completions, **columns)) for f in funcs]

    judge = CachedEngine(OracleEngine(), ResponseCache(":memory:"))
    metric = build_metric("balcap", FactConfig.preset("official"))
    scores = metric.score(samples, [Caption(s.id, captions[s.id]) for s in samples], {"text": judge})
    for component, values in zip(("precision", "recall", "linguistic"), got, strict=True):
        assert values == pytest.approx([s.values[component] for s in scores]), component
    # each request reached the judge once; recall's and linguistic's facts, matches and verdicts came from
    # the cache (precision and recall ask for no rating: the 4 ratings are linguistic's own)
    stats = rewards.runtime(oracle_setup).judges["text"].stats
    assert stats.calls == judge.stats.calls and stats.cache_hits == 2 * (judge.stats.calls - 4)


def test_linguistic_reward_is_zero_outside_the_length_band_and_counted(oracle_setup):
    bench = load_benchmark("mini")
    samples = list(bench.samples[:2])
    short = read_caption_file(bench.example_captions["short"]).captions
    detailed = read_caption_file(bench.example_captions["detailed"]).captions
    completions = [short[samples[0].id], detailed[samples[1].id]]
    refs = [s.reference_caption for s in samples]
    assert length_ratio(completions[0], refs[0]) < 0.5 <= length_ratio(completions[1], refs[1]) <= 2.0
    linguistic = balcap_rewards(oracle_setup)[2]
    facts = [list(s.reference_facts) for s in samples]
    values = asyncio.run(linguistic(["p"] * 2, completions, reference_caption=refs, reference_facts=facts))
    assert values[0] == 0.0 and values[1] is not None and values[1] > 0.0
    assert rewards.STATS["balcap_linguistic"]["masked"] == 1


class CountingOracle(OracleEngine):
    """``counting:truth``: the oracle judge, counting the requests that reach it per stage (past the cache)."""

    stages: ClassVar[Counter] = Counter()

    def run(self, requests, on_result=None):
        CountingOracle.stages.update(self.stage_of[r.messages[0].joined_text()] for r in requests)
        return super().run(requests, on_result)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0)])  # TRL runs the rewards concurrently: either may go first
def test_only_rollouts_inside_the_length_band_are_rated(monkeypatch, order):
    from capbench import engines

    monkeypatch.setitem(engines.ENGINES, "counting", ("test_rl_rewards", "CountingOracle", "test engine"))
    monkeypatch.setattr(CountingOracle, "stages", Counter())
    rewards._RUNTIMES.clear()
    bench = load_benchmark("mini")
    captions = {name: read_caption_file(path).captions for name, path in bench.example_captions.items()}
    samples = [s for s in bench.samples[:2] for _ in range(2)]  # two groups of two rollouts
    texts = [captions["short" if i % 2 == 0 else "detailed"][s.id] for i, s in enumerate(samples)]
    columns = _columns(samples)
    masked = [
        not in_band(length_ratio(t, s.reference_caption), (0.5, 2.0)) for t, s in zip(texts, samples, strict=True)
    ]
    assert masked == [True, False, True, False]
    funcs = balcap_rewards(JudgeSetup(judge="counting:truth", fact_protocol="official", cache=":memory:"))
    got = {i: asyncio.run(funcs[i](["p"] * 4, texts, **columns)) for i in order}
    # 4 rollouts, 2 outside the band: 2 rating requests (precision and recall ask for none)
    assert CountingOracle.stages["linguistic"] == 2
    assert CountingOracle.stages["decompose"] == 4  # the shared stages: once per caption, then the cache
    assert [v == 0.0 for v in got[2]] == masked
    metric = build_metric("balcap", FactConfig.preset("official"))
    scores = metric.score(
        samples, [Caption(s.id, t) for s, t in zip(samples, texts, strict=True)], {"text": OracleEngine()}
    )
    assert got[0] == pytest.approx([s.values["precision"] for s in scores])
    assert got[1] == pytest.approx([s.values["recall"] for s in scores])
    assert [v for v, m in zip(got[2], masked, strict=True) if not m] == pytest.approx(
        [s.values["linguistic"] for s, m in zip(scores, masked, strict=True) if not m]
    )
    rewards._RUNTIMES.clear()


class ServedOracle(CountingOracle):
    """The counting oracle as a served judge: safe from several threads, each batch a round trip long."""

    concurrent = True
    running: ClassVar[list[int]] = [0, 0]  # now, most at once
    lock = threading.Lock()

    def run(self, requests, on_result=None):
        with ServedOracle.lock:
            ServedOracle.running[0] += 1
            ServedOracle.running[1] = max(ServedOracle.running)
        time.sleep(0.2)
        with ServedOracle.lock:
            ServedOracle.running[0] -= 1
        return super().run(requests, on_result)


def test_a_steps_rewards_judge_at_the_same_time_and_share_their_calls(monkeypatch):
    from capbench import engines

    monkeypatch.setitem(engines.ENGINES, "served", ("test_rl_rewards", "ServedOracle", "test engine"))
    monkeypatch.setattr(CountingOracle, "stages", Counter())
    monkeypatch.setattr(ServedOracle, "running", [0, 0])
    rewards._RUNTIMES.clear()
    bench = load_benchmark("mini")
    captions = read_caption_file(bench.example_captions["detailed"]).captions
    samples = list(bench.samples[:3])
    texts = [captions[s.id] for s in samples]
    funcs = balcap_rewards(JudgeSetup(judge="served:truth", fact_protocol="official", cache=":memory:"))

    async def step():  # as TRL runs a step's async rewards
        return await asyncio.gather(*(f(["p"] * 3, texts, **_columns(samples)) for f in funcs))

    precision, recall, linguistic = asyncio.run(step())
    # the three rewards' judging overlapped, and each shared request reached the judge once
    assert ServedOracle.running[1] >= 2
    assert CountingOracle.stages["decompose"] == 3 and CountingOracle.stages["linguistic"] == 3
    assert sum(CountingOracle.stages.values()) == rewards.judge_usage()["calls"]
    assert all(v is not None for v in (*precision, *recall, *linguistic))
    rewards._RUNTIMES.clear()


def test_a_judge_failure_is_none_and_counted_never_zero(scripted_cli_engine):
    rewards._RUNTIMES.clear()
    rewards.STATS.clear()
    setup = JudgeSetup(judge="scripted:this is not JSON", cache=":memory:")
    precision = balcap_rewards(setup)[0]
    values = asyncio.run(precision(["p"], ["A cat on a mat."], reference_caption=["A cat sits on a red mat."]))
    assert values == [None]
    assert rewards.STATS["balcap_precision"]["unscored"] == 1
    rewards._RUNTIMES.clear()


# --- CapRL, CaptionQA and DCScore rewards: capbench eval's numbers, per rollout ---------------------


class LengthParityJudge(ScriptedEngine):
    """``parity:any``: answers a letter chosen by the request's length, so different captions get different answers."""

    supports_loglik = False

    def __init__(self, model: str = "any") -> None:
        super().__init__(lambda request: "ABC"[len(request.messages[-1].joined_text()) % 3], name=model)


def _columns(samples):
    return {
        "sample_id": [s.id for s in samples],
        "reference_caption": [s.reference_caption for s in samples],
        "reference_facts": [list(s.reference_facts) for s in samples],
        "questions": [[q.to_dict() for q in s.questions] for s in samples],
        "domain": [s.domain for s in samples],
    }


@pytest.mark.parametrize(
    ("func", "metric", "options", "key", "scale"),
    [
        (rewards.caprl_qa_utility, "caprl", (("samples", 5),), "utility", 100.0),
        (rewards.captionqa_reward, "captionqa", (), "score", 100.0),
    ],
)
def test_qa_rewards_equal_capbench_eval_per_rollout(monkeypatch, func, metric, options, key, scale):
    from capbench import engines

    monkeypatch.setitem(engines.ENGINES, "parity", ("test_rl_rewards", "LengthParityJudge", "test engine"))
    rewards._RUNTIMES.clear()
    setup = JudgeSetup(judge="parity:any", cache=":memory:")
    bench = load_benchmark("mini")
    image = bench.samples[0]
    group = [image] * 3  # one image, three rollouts: records must not mix across them
    captions = [read_caption_file(path).captions[image.id] for path in bench.example_captions.values()][:3]
    got = asyncio.run(rewards.reward(func, setup=setup, metric_options=options)(["p"] * 3, captions, **_columns(group)))

    reference = build_metric(metric, seed=0, **dict(options))
    scores = reference.score(group, [Caption(image.id, c) for c in captions], {"text": LengthParityJudge()})
    assert got == pytest.approx([s.values[key] / scale for s in scores])
    assert len(set(got)) > 1  # the three captions draw differently, so the check has something to compare
    assert all(0.0 <= v <= 1.0 for v in got)
    rewards._RUNTIMES.clear()


def test_dcscore_reward_equals_capbench_eval(oracle_setup):
    bench = load_benchmark("mini")
    samples = list(bench.samples[:3])
    captions = read_caption_file(bench.example_captions["planted_errors"]).captions
    texts = [captions[s.id] for s in samples]
    got = asyncio.run(rewards.reward(rewards.dcscore_reward, setup=oracle_setup)(["p"] * 3, texts, **_columns(samples)))

    metric = build_metric("dcscore", FactConfig.preset("official"))
    scores = metric.score(samples, [Caption(s.id, t) for s, t in zip(samples, texts, strict=True)],
                          {"text": CachedEngine(OracleEngine(), ResponseCache(":memory:"))})  # fmt: skip
    assert got == pytest.approx([s.values["dcscore"] / 100 for s in scores])
    assert all(0.0 < v < 1.0 for v in got)


def test_length_in_tokens_reads_the_policys_tokenizer(monkeypatch):
    class Chars:
        def encode(self, text, add_special_tokens=False):
            return list(text)

    monkeypatch.setattr(rewards, "_load_tokenizer", lambda name: Chars())
    penalty = rewards.reward(rewards.length_penalty_reward, unit="tokens", tokenizer="policy")
    assert asyncio.run(penalty(["p"], ["abc"], reference_caption=["abcdef"])) == [-0.5]
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        asyncio.run(rewards.reward(rewards.length_penalty_reward, unit="tokens")(["p"], ["a"], reference_caption=["b"]))
