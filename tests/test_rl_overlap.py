"""Judging that overlaps generation (capbench_rl.overlap): chunks, the same rewards, counters, failures, a real step."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import re
import threading
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

from capbench.data import load_benchmark
from capbench.engines.base import JsonSchema, Response
from capbench.engines.cache import request_key
from capbench.errors import ConfigError
from capbench.records import read_caption_file
from capbench_rl import rewards
from capbench_rl import service_client as S
from capbench_rl.overlap import Overlap, check_chunks, chunk_bounds, missing_support
from capbench_rl.recipe import load_recipe
from capbench_rl.timing import PhaseTimer

GROUP = 2  # rollouts per prompt in the unit tests

# --- a served judge's stand-in, and one step's rollouts -------------------------------------------------


def reply(request: Any) -> str:
    """A valid, varied answer to any request: facts per sentence, flags by a hash, ratings, or a letter."""
    text = request.messages[-1].joined_text()

    def flag(*where: Any) -> bool:
        return hashlib.sha256(f"{text}{where}".encode()).digest()[0] % 3 > 0

    if not isinstance(request.constraint, JsonSchema):
        return "A" if flag() else "B"
    properties = json.loads(request.constraint.schema_json).get("properties", {})
    if "facts" in properties:
        caption = text.split("<caption>\n")[-1].split("\n</caption>")[0].strip() or "nothing"
        parts = [s for s in re.split(r"(?<=[.!?])\s+", caption) if s.strip()][:16]
        facts = [{"fact": s[:300], "object": s.split()[0][:40], "descriptive": flag(s)} for s in parts]
        return json.dumps({"facts": facts})
    if "verdicts" in properties:
        count = properties["verdicts"]["minItems"]
        return json.dumps(
            {"verdicts": [{"id": i, "correct": flag(i), "pointable": flag(i, 1)} for i in range(1, count + 1)]}
        )
    if "matches" in properties:
        count = properties["matches"]["minItems"]
        return json.dumps({"matches": [{"id": i, "reference": 1 if flag(i) else None} for i in range(1, count + 1)]})
    return json.dumps({"clarity": 7, "fluency": 8, "coherence": 6})


class ServedJudge:
    """``served:any``: a served judge's stand-in, safe from several threads, a round trip per batch, any caption.

    ``sent`` counts the requests that reached it by cache key; while ``down``, every request fails.
    """

    backend = "served"
    accepts_images = True
    supports_loglik = False
    concurrent = True
    delay: ClassVar[float] = 0.05
    down: ClassVar[bool] = False
    sent: ClassVar[Counter[str]] = Counter()
    lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, model: str = "any") -> None:
        self.model = model

    def fingerprint(self) -> dict:
        return {"backend": self.backend, "model": self.model}

    def run(self, requests, on_result=None):
        time.sleep(self.delay)
        out = []
        for index, request in enumerate(requests):
            with self.lock:
                ServedJudge.sent[request_key(self.fingerprint(), request)] += 1
            if ServedJudge.down:
                response = Response(error="ConnectError: the judge is restarting")
            else:
                response = Response(texts=(reply(request),) * request.sampling.n, prompt_tokens=10, completion_tokens=5)
            out.append(response)
            if on_result is not None:
                on_result(index, response)
        return out


@pytest.fixture
def served(monkeypatch):
    from capbench import engines

    monkeypatch.setitem(engines.ENGINES, "served", ("test_rl_overlap", "ServedJudge", "test engine"))
    ServedJudge.sent.clear()
    ServedJudge.down = False
    rewards._RUNTIMES.clear()
    rewards.STATS.clear()
    yield ServedJudge
    rewards._RUNTIMES.clear()


def step_rows(samples: int = 3) -> tuple[list[dict[str, Any]], list[str]]:
    """TRL's rows of one step (each prompt GROUP times, its dataset columns) and each row's completion."""
    bench = load_benchmark("mini")
    sets = {name: read_caption_file(path).captions for name, path in bench.example_captions.items()}
    rows, captions = [], []
    for sample in [s for s in bench.samples if s.questions][:samples]:
        for copy in range(GROUP):
            rows.append({
                "prompt": [{"role": "user", "content": f"row {len(rows)}"}], "sample_id": sample.id,
                "reference_caption": sample.reference_caption, "reference_facts": list(sample.reference_facts),
                "questions": [q.to_dict() for q in sample.questions], "domain": sample.domain,
            })  # fmt: skip
            captions.append(sets["short" if copy else "detailed"][sample.id])
    return rows, captions


class FakeTrainer:
    """What the overlap uses of GRPOTrainer, and its rollout phase as TRL runs it: generate, then score the batch."""

    num_generations = GROUP
    num_generations_eval = GROUP

    def __init__(self, captions: list[str], funcs: list[Any], interrupt_at: int | None = None) -> None:
        self.captions = captions
        self.funcs = funcs
        self.interrupt_at = interrupt_at
        self.model = SimpleNamespace(training=True)
        self.state = SimpleNamespace(global_step=7)
        self.processing_class = self
        self.generated: list[tuple[list[int], int]] = []
        self.rollout_func: Any = None
        self.before_scoring: Any = None

    def batch_decode(self, ids, skip_special_tokens=True):
        return [self.captions[row[0]] for row in ids]

    def _tokenize_prompts(self, prompts):
        return [[int(p[0]["content"].split()[1])] for p in prompts], None, {}

    def _generate_single_turn(self, prompt_ids, images, fields, num_generations):
        if len(self.generated) == self.interrupt_at:
            raise KeyboardInterrupt
        self.generated.append(([ids[0] for ids in prompt_ids], num_generations))
        return [list(ids) for ids in prompt_ids], None

    def _generate_and_score_completions(self, inputs):
        prompts = [row["prompt"] for row in inputs]
        out = self.rollout_func(prompts, self)
        assert set(out) == {"prompt_ids", "completion_ids", "logprobs"} and out["logprobs"] is None
        completions = [[{"role": "assistant", "content": text}] for text in self.batch_decode(out["completion_ids"])]
        columns = {key: [row[key] for row in inputs] for key in inputs[0] if key != "prompt"}
        if self.before_scoring is not None:
            self.before_scoring()

        async def score():
            return await asyncio.gather(*(
                f(prompts=prompts, completions=completions, completion_ids=out["completion_ids"],
                  trainer_state=self.state, **columns)
                for f in self.funcs
            ))  # fmt: skip

        return asyncio.run(score())


def prepared(funcs, chunks: int, samples: int = 3, **settings: Any) -> tuple[FakeTrainer, Overlap]:
    """The fake trainer with an overlap of ``chunks`` chunks as its rollout function."""
    _, captions = step_rows(samples)
    trainer = FakeTrainer(captions, funcs, settings.pop("interrupt_at", None))
    overlap = Overlap(chunks, funcs, **settings)
    trainer.rollout_func = overlap.rollout
    overlap.attach(trainer)
    return trainer, overlap


def overlapped(funcs, chunks: int, samples: int = 3, **settings: Any) -> tuple[list[list[float | None]], Overlap]:
    """One step of the fake trainer with ``chunks`` chunks; return its rewards and the overlap."""
    trainer, overlap = prepared(funcs, chunks, samples, **settings)
    return trainer._generate_and_score_completions(step_rows(samples)[0]), overlap


def settled(trainer: FakeTrainer, overlap: Overlap, then: Any = None) -> None:
    """Before TRL's reward call: wait for the prefetches to finish (then run ``then``), so the test is exact."""

    def wait() -> None:
        assert overlap.running is not None
        concurrent.futures.wait(overlap.running.futures)
        if then is not None:
            then()

    trainer.before_scoring = wait


def unoverlapped(funcs, samples: int = 3) -> list[list[float | None]]:
    """The same step's rewards scored in one call after generation, as TRL does without overlap."""
    rows, captions = step_rows(samples)
    trainer = FakeTrainer(captions, funcs)
    trainer.rollout_func = lambda prompts, t: {
        "prompt_ids": [[i] for i in range(len(prompts))], "completion_ids": [[i] for i in range(len(prompts))],
        "logprobs": None,
    }  # fmt: skip
    return trainer._generate_and_score_completions(rows)


def step_rewards(cache) -> list[Any]:
    """BalCapRL's three rewards and CapRL's utility, judged by the served stand-in through their own cache."""
    setup = rewards.JudgeSetup(judge="served:any", fact_protocol="greedy", cache=str(cache))
    caprl = rewards.reward(
        rewards.caprl_qa_utility, setup=setup, metric_options=(("answer_mode", "letter"), ("samples", 2))
    )
    return [*rewards.balcap_rewards(setup), caprl]


def judge_stats(funcs) -> Any:
    return rewards.runtime(funcs[0].keywords["setup"]).judges["text"].stats


# --- chunks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "group", "chunks", "bounds"),
    [
        (24, 3, 3, [(0, 9), (9, 18), (18, 24)]),  # 8 groups: 3, 3, 2 (the smaller chunk last: its judging shows)
        (6, 3, 4, [(0, 3), (3, 6)]),  # no more chunks than groups (an evaluation batch)
        (5, 3, 2, [(0, 5)]),  # rows that are not whole groups (a group split over processes): one chunk
        (8, 4, 1, [(0, 8)]),  # one chunk
    ],
)
def test_chunks_are_whole_groups_the_larger_first(rows, group, chunks, bounds):
    assert chunk_bounds(rows, group, chunks) == bounds


async def recorded(prompts, completions, **columns):
    """A reward that keeps what it was given (and whether it ran as a prefetch)."""
    CALLS.append({"prompts": prompts, "completions": completions, "prefetch": rewards.PREFETCH.get(), **columns})
    return [0.5] * len(completions)


CALLS: list[dict[str, Any]] = []


def test_the_rollout_function_generates_whole_groups_in_order_and_prefetches_what_trl_passes():
    CALLS.clear()
    trainer, overlap = prepared([recorded], chunks=2)  # 3 groups of 2: chunks of 2 groups and 1
    got = trainer._generate_and_score_completions(step_rows()[0])
    assert trainer.generated == [([0, 1, 2, 3], GROUP), ([4, 5], GROUP)]
    assert got == [[0.5] * 6]
    prefetches = [c for c in CALLS if c["prefetch"]]
    [final] = [c for c in CALLS if not c["prefetch"]]
    rows, captions = step_rows()
    assert [len(c["completions"]) for c in prefetches] == [4, 2]
    for call, (start, end) in zip(prefetches, [(0, 4), (4, 6)], strict=True):
        # the chunk's completions decoded as TRL decodes them, its prompts, ids and dataset columns
        assert (
            call["completions"]
            == final["completions"][start:end]
            == [[{"role": "assistant", "content": c}] for c in captions[start:end]]
        )
        assert call["prompts"] == [r["prompt"] for r in rows[start:end]]
        assert call["completion_ids"] == [[i] for i in range(start, end)]
        assert call["sample_id"] == [r["sample_id"] for r in rows[start:end]]
        assert call["questions"] == [r["questions"] for r in rows[start:end]]
        assert call["trainer_state"] is trainer.state and call["log_extra"]() is None
    assert overlap.take() == {"chunks": 2, "rollouts": 6, "errors": 0, "cancelled": 0}
    assert overlap.take()["rollouts"] == 0  # taken figures are forgotten
    assert not [t for t in threading.enumerate() if t.name == "capbench-rl-prefetch"]  # ended with the phase


# --- the same rewards, counted once --------------------------------------------------------------------------


def test_overlap_gives_the_rewards_of_a_step_without_it_with_the_same_judge_calls(served, tmp_path):
    off = step_rewards(tmp_path / "off.sqlite")
    expected = unoverlapped(off)
    sent_without = Counter(served.sent)
    served.sent.clear()
    on = step_rewards(tmp_path / "on.sqlite")
    got, overlap = overlapped(on, chunks=3)
    assert got == expected
    assert any(v not in (0.0, 1.0, None) for row in expected for v in row)  # varied values, not a constant
    # every request reached the judge once, the same requests as without overlap: TRL's call found the
    # prefetch's answers in the cache, or waited for them in flight
    assert served.sent == sent_without and max(served.sent.values()) == 1
    assert judge_stats(on).calls == judge_stats(off).calls
    assert judge_stats(on).cache_hits >= judge_stats(off).cache_hits + judge_stats(on).calls
    assert overlap.take() == {"chunks": 3, "rollouts": 6, "errors": 0, "cancelled": 0}


def test_a_prefetch_adds_nothing_to_the_reward_counters(served, tmp_path):
    funcs = step_rewards(tmp_path / "cache.sqlite")
    overlapped(funcs, chunks=3)
    for name in ("balcap_precision", "balcap_recall", "balcap_linguistic", "caprl_qa_utility"):
        assert rewards.STATS[name]["calls"] == 1 and rewards.STATS[name]["rollouts"] == 6, name  # not 12


def test_through_a_reward_service_the_final_call_is_answered_from_its_cache(served, tmp_path):
    for module in ("fastapi", "uvicorn"):
        pytest.importorskip(module, reason="the service needs: pip install 'capbench[serve]'")
    from capbench.serve import Running, ServeConfig

    names = ("balcap_precision", "caprl_qa_utility")
    values = {}
    for run in ("off", "on"):
        config = ServeConfig(judge="served:any", answer_mode="letter", caprl_samples=2, fact_protocol="greedy",
                             cache=tmp_path / f"{run}.sqlite", port=0)  # fmt: skip
        with Running(config, log=lambda line: None) as service:
            funcs = [S.ServiceReward(name, service.url) for name in names]
            before, prefetched = S.service_usage(), S.service_usage(prefetch=True)
            if run == "off":
                values[run] = unoverlapped(funcs)
                continue
            rewards.STATS.clear()
            trainer, overlap = prepared(funcs, chunks=3)
            settled(trainer, overlap)
            values[run] = trainer._generate_and_score_completions(step_rows()[0])
            after, prefetched_after = S.service_usage(), S.service_usage(prefetch=True)
    assert values["on"] == values["off"]
    # the prefetch's usage is kept apart; TRL's call, made once the prefetches were done, judged nothing
    assert prefetched_after["judge_calls"] > prefetched.get("judge_calls", 0)
    assert after["judge_calls"] == before["judge_calls"] and after["cache_hits"] > before["cache_hits"]
    assert rewards.STATS["balcap_precision"]["rollouts"] == 6


# --- failures and stopping -----------------------------------------------------------------------------------


def test_a_judge_down_during_the_prefetch_costs_time_not_values(served, tmp_path):
    expected = unoverlapped(step_rewards(tmp_path / "off.sqlite"))
    served.down = True
    funcs = step_rewards(tmp_path / "on.sqlite")
    trainer, overlap = prepared(funcs, chunks=3)
    settled(trainer, overlap, then=lambda: setattr(ServedJudge, "down", False))  # back up before TRL's call
    assert trainer._generate_and_score_completions(step_rows()[0]) == expected  # failures are not cached: asked again
    assert all(rewards.STATS[name]["unscored"] == 0 for name in rewards.STATS)
    assert judge_stats(funcs).failures > 0  # the prefetch's failed calls are counted as calls, once


def test_a_failure_in_flight_is_reported_once_as_today(served, tmp_path):
    served.down = True  # down for the whole step: TRL's call waits for the prefetch's calls and gets their failure
    got, _ = overlapped(step_rewards(tmp_path / "cache.sqlite"), chunks=3)
    assert got[:2] == [[None] * 6] * 2  # BalCapRL: unscored, never 0
    assert got[2] == [None, 0.0] * 3  # linguistic: the short captions are outside the length band, 0 unasked
    assert rewards.STATS["balcap_precision"]["unscored"] == 6 and rewards.STATS["balcap_precision"]["calls"] == 1


async def flaky(prompts, completions, **columns):
    """A reward whose prefetch raises (a service unreachable for longer than the client's patience)."""
    if rewards.PREFETCH.get():
        raise RuntimeError("judge unreachable")
    return [1.0] * len(completions)


def test_a_prefetch_that_raises_is_counted_and_logged_and_training_goes_on(caplog):
    with caplog.at_level(logging.WARNING, logger="capbench_rl.overlap"):
        got, overlap = overlapped([flaky], chunks=3)
    assert got == [[1.0] * 6]
    assert overlap.take()["errors"] == 3
    assert "3 prefetch(es) failed (flaky: RuntimeError: judge unreachable)" in caplog.text


async def slow(prompts, completions, **columns):
    """A reward whose prefetch takes 30 s; TRL's own call returns at once."""
    if rewards.PREFETCH.get():
        await asyncio.sleep(30)
    return [0.0] * len(completions)


def test_keyboard_interrupt_during_generation_cancels_the_prefetches_at_once():
    trainer, overlap = prepared([slow], chunks=3, interrupt_at=1)  # Ctrl-C while the first chunk is judged
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        trainer._generate_and_score_completions(step_rows()[0])
    assert time.perf_counter() - started < 5
    assert overlap.take()["cancelled"] == 1
    assert not [t for t in threading.enumerate() if t.name == "capbench-rl-prefetch"]


def test_a_prefetch_still_running_after_trls_rewards_is_cancelled_after_the_grace_period():
    started = time.perf_counter()
    got, overlap = overlapped([slow], chunks=3, grace=0.2)
    assert got == [[0.0] * 6] and time.perf_counter() - started < 5
    assert overlap.take()["cancelled"] == 3
    assert not [t for t in threading.enumerate() if t.name == "capbench-rl-prefetch"]


def test_the_timer_records_prefetches_and_their_part_during_generation(monkeypatch):
    from capbench_rl import timing

    class Trainer:
        def _generate(self): ...
        def _calculate_rewards(self): ...
        def _generate_and_score_completions(self): ...

    timer = PhaseTimer(Trainer())
    timer.intervals["generation"] += [(0.0, 2.0), (2.0, 4.0)]  # two chunks
    timer.intervals["rollout"] += [(0.0, 5.0)]
    timer.intervals["rewards"] += [(4.0, 4.5)]
    for start, end in ((2.0, 3.5), (3.0, 4.2), (4.1, 4.4)):  # chunk 1's prefetch, chunk 2's, overlapping
        timer.record("prefetch", start, end)
    phases = timer.take(step_seconds=6.0)
    assert phases["prefetch"] == pytest.approx(2.4) and phases["prefetch_during_generation"] == pytest.approx(2.0)
    assert phases["rewards"] == 0.5 and phases["update"] == 1.0
    assert timing.union([(3.0, 4.0), (0.0, 1.0), (0.5, 2.0)]) == [(0.0, 2.0), (3.0, 4.0)]


# --- the recipe --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        (["overlap_chunks=0"], "overlap_chunks must be at least 1"),
        (
            ["overlap_chunks=2"],
            r"overlap_chunks 2: each process generates 1 whole group\(s\) of num_generations 3 "
            r"per step \(per_device_train_batch_size 3 × steps_per_generation 1\); set "
            r"overlap_chunks to at most 1",
        ),
        (["overlap_chunks=3", "per_device_train_batch_size=6"], "set overlap_chunks to at most 2"),
        (["overlap_chunks=4", "per_device_train_batch_size=6", "trl={gradient_accumulation_steps: 2}"], None),
        (["overlap_chunks=5", "per_device_train_batch_size=6", "trl={steps_per_generation: 2}"], "at most 4"),
        (["overlap_chunks=9", "trl={generation_batch_size: 6}"], None),  # depends on the processes: checked later
        (["overlap_chunks=abc"], "recipe field overlap_chunks must be an integer"),
    ],
)
def test_the_recipe_checks_overlap_chunks_against_the_groups_of_a_process(settings, error):
    if error is None:
        assert load_recipe("toy-cpu", ["model=m", *settings]).overlap_chunks > 1
        return
    with pytest.raises(ConfigError, match=error):
        load_recipe("toy-cpu", ["model=m", *settings])


def test_the_trainer_checks_the_groups_of_a_process_and_an_old_trl_turns_overlap_off():
    from trl import GRPOTrainer

    from capbench_rl.train import overlap_for

    recipe = load_recipe("toy-cpu", ["model=m", "overlap_chunks=4", "trl={generation_batch_size: 24}"])
    assert missing_support(GRPOTrainer) == []
    assert overlap_for(recipe, SimpleNamespace(world_size=2, generation_batch_size=24), [], GRPOTrainer) is not None
    with pytest.raises(ConfigError, match=r"2 whole group\(s\) .* \(generation batch 24 over 4 process\(es\)\)"):
        overlap_for(recipe, SimpleNamespace(world_size=4, generation_batch_size=24), [], GRPOTrainer)
    with pytest.raises(ConfigError, match=r"no whole groups \(4 rollouts\).*set overlap_chunks to 1"):
        check_chunks(2, 4, 3, "here")

    class OldTrainer:  # a TRL without rollout_func or the methods the overlap calls
        def __init__(self, model, reward_funcs, args): ...

    with pytest.warns(UserWarning, match="GRPOTrainer lacks rollout_func, _tokenize_prompts, _generate_single_turn"):
        assert overlap_for(recipe, SimpleNamespace(world_size=1, generation_batch_size=24), [], OldTrainer) is None


# --- real TRL ---------------------------------------------------------------------------------------------


@pytest.mark.engine
def test_trls_rollout_phase_gives_the_same_batch_in_chunks_as_in_one(tmp_path):
    """Greedy rollouts of a tiny policy through TRL's own rollout phase: chunked, then in one batch."""
    import torch
    from tiny_models import build_tiny_qwen25vl

    from capbench_rl.train import build_trainer

    policy = build_tiny_qwen25vl(tmp_path / "policy")
    recipe = load_recipe("toy-cpu", [
        f"model={policy}", f"output_dir={tmp_path / 'run'}", "eval_benchmark=null", "rewards={length_penalty: 1}",
        "per_device_train_batch_size=6", "overlap_chunks=2", "trl={generation_kwargs: {do_sample: false}}",
    ])  # fmt: skip
    trainer = build_trainer(recipe)
    trainer.model.train()
    inputs = [dict(row) for row in trainer.train_dataset for _ in range(3)]
    chunked = trainer._generate_and_score_completions([dict(r) for r in inputs])
    trainer.rollout_func = None  # TRL's own path: one batch
    whole = trainer._generate_and_score_completions([dict(r) for r in inputs])
    assert set(chunked) == set(whole)
    for key, value in whole.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(chunked[key], value), key
    assert chunked["completion_ids"].shape[0] == 6


@pytest.mark.engine
def test_a_training_step_with_overlap_judges_during_generation_and_sends_each_request_once(served, tmp_path):
    """Two real GRPO steps of a tiny policy, with 2 chunks of one group each, judged by the served stand-in."""
    from tiny_models import build_tiny_qwen25vl

    from capbench_rl.cli import main

    policy = build_tiny_qwen25vl(tmp_path / "policy")
    out = tmp_path / "run"
    settings = [f"model={policy}", f"output_dir={out}", "judge=served:any", "qa_answer_mode=letter",
                "eval_benchmark=null", "per_device_train_batch_size=6", "overlap_chunks=2",
                "max_completion_length=32"]  # fmt: skip
    result = CliRunner().invoke(main, ["train", "--config", "toy-cpu", *(a for s in settings for a in ("--set", s))])
    assert result.exit_code == 0, result.output
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    for step in steps:
        assert step["prefetch"] == {"chunks": 2, "rollouts": 6, "errors": 0, "cancelled": 0}
        phases = step["phases"]
        # the first chunk was judged while the second generated; TRL's call is the exposed rest
        assert phases["prefetch"] > 0 and 0 < phases["prefetch_during_generation"] <= phases["generation"]
        assert step["rewards"]["balcap_precision"]["rollouts"] == 6  # counted once, not once more for the prefetch
        # TRL's call found the prefetch's answers: a cache hit (or a wait in flight) for every request sent
        assert step["judge"]["cache_hits"] >= step["judge"]["calls"] > 0
    # no request reached the judge twice, and the logged calls are the requests it received
    assert max(served.sent.values()) == 1 and sum(s["judge"]["calls"] for s in steps) == len(served.sent)
