"""Reward wall time of one RL step: capbench-rl's rewards one after another, or at the same time.

Usage: python benchmarks/reward_overlap.py [--delays 0.1,0.5] [--repeats 3] [--rollouts 8]
Writes benchmarks/results/reward_overlap.json and .md.

The judge behaves like a served model with room for every request: each batch it is sent
answers after ``delay`` seconds, whatever its size, and calls from several threads run at once
(``concurrent = True``, as the ``openai`` engine). Its answers are the truth written for
capbench-mini (``tests/oracle_engine.py``) for the fact stages, and "A" for CapRL's questions.

One step's rewards are the BalCapRL three (precision, recall, linguistic masked to the length
band [0.5, 2]) and CapRL's QA utility over ``rollouts`` rollouts of capbench-mini (the short and
detailed example captions in turn, so some fall outside the band). TRL gathers a step's async
rewards at once; "one at a time" awaits them in turn, which is what capbench-rl did before its
rewards shared judge calls in flight (one scoring per judge set at a time).

The critical path is what one rollout needs in turn: BalCapRL's decomposition (with the
caption's rating), then its matching and verification: 2 judge round trips. Figures are the
median of ``repeats`` runs, each with a fresh judge-call cache.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from _report import save  # noqa: E402
from oracle_engine import OracleEngine  # noqa: E402

import capbench  # noqa: E402
from capbench import engines  # noqa: E402
from capbench.engines.base import OnResult, Request, Response  # noqa: E402
from capbench.records import read_caption_file  # noqa: E402
from capbench_rl import rewards  # noqa: E402

DELAY = {"seconds": 0.1}
ROUND_TRIPS = 2  # decomposition (with rating), then matching and verification


class ServedJudge(OracleEngine):
    """The oracle, answering each batch after a fixed delay, safe to call from several threads."""

    backend = "served"
    concurrent = True

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        time.sleep(DELAY["seconds"])
        facts = [r for r in requests if r.messages[0].joined_text() in self.stage_of]
        answered = dict(zip((id(r) for r in facts), super().run(facts), strict=True)) if facts else {}
        out = [answered.get(id(r), Response(texts=("A",) * r.sampling.n)) for r in requests]
        if on_result is not None:
            for index, response in enumerate(out):
                on_result(index, response)
        return out


def step_inputs(rollouts: int) -> tuple[list[str], dict[str, Any]]:
    """Completions and TRL's dataset columns for ``rollouts`` rollouts of capbench-mini."""
    bench = capbench.load_benchmark("mini")
    sets = {n: dict(read_caption_file(p).captions) for n, p in bench.example_captions.items()}
    samples = [s for s in bench.samples if s.questions][:rollouts]
    captions = [sets["short" if i % 2 else "detailed"][s.id] for i, s in enumerate(samples)]
    columns = {
        "sample_id": [s.id for s in samples],
        "reference_caption": [s.reference_caption for s in samples],
        "reference_facts": [list(s.reference_facts) for s in samples],
        "questions": [[q.to_dict() for q in s.questions] for s in samples],
        "domain": [s.domain for s in samples],
    }
    return captions, columns


def reward_functions(cache: Path) -> list[Any]:
    """The step's four rewards, with a judge set of their own (a fresh cache)."""
    setup = rewards.JudgeSetup(judge="served:truth", fact_protocol="official", cache=str(cache))
    return [
        *rewards.balcap_rewards(setup),
        rewards.reward(rewards.caprl_qa_utility, setup=setup, metric_options=(("answer_mode", "letter"),)),
    ]


async def one_step(funcs: list[Any], captions: list[str], columns: dict[str, Any], together: bool) -> None:
    prompts = ["Describe this image."] * len(captions)
    calls = [lambda f=f: f(prompts, captions, **columns) for f in funcs]
    if together:
        await asyncio.gather(*(call() for call in calls))
    else:
        for call in calls:
            await call()


def measure(delay: float, together: bool, repeats: int, rollouts: int) -> dict[str, Any]:
    DELAY["seconds"] = delay
    captions, columns = step_inputs(rollouts)
    times, calls = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            funcs = reward_functions(Path(folder) / "cache.sqlite")
            started = time.perf_counter()
            asyncio.run(one_step(funcs, captions, columns, together))
            times.append(time.perf_counter() - started)
            calls.append(rewards.judge_usage()["calls"])
            rewards._RUNTIMES.clear()
    seconds = statistics.median(times)
    return {
        "delay": delay,
        "mode": "together" if together else "one at a time",
        "seconds": round(seconds, 3),
        "critical_path": ROUND_TRIPS * delay,
        "over_critical_path": round(seconds / (ROUND_TRIPS * delay), 2),
        "judge_calls": calls[-1],
        "runs": [round(t, 3) for t in times],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delays", default="0.1,0.5", help="seconds per judge round trip, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (the median counts)")
    parser.add_argument("--rollouts", type=int, default=8, help="rollouts in the step")
    args = parser.parse_args()
    engines.ENGINES["served"] = ("__main__", "ServedJudge", "oracle with a fixed round trip (benchmark)")
    rows = [
        measure(float(d), together, args.repeats, args.rollouts)
        for d in args.delays.split(",")
        for together in (False, True)
    ]
    lines = [
        "# Reward wall time of one RL step (BalCapRL's three rewards + CapRL's QA utility)",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}. "
        f"{args.rollouts} rollouts of capbench-mini; "
        "a judge that answers every batch after a fixed round trip, any number at once (a served model with room); "
        f"median of {args.repeats} runs, each with a fresh cache. Critical path: {ROUND_TRIPS} round trips "
        "(decomposition with rating, then matching and verification). `python benchmarks/reward_overlap.py`.",
        "",
        "| round trip | rewards | step's reward time | × critical path | judge calls |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['delay']:.1f} s | {row['mode']} | {row['seconds']:.2f} s | {row['over_critical_path']:.2f} | "
            f"{row['judge_calls']} |"
        )
    save("reward_overlap", {"rollouts": args.rollouts, "repeats": args.repeats, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
