"""Reward wall time of one RL step against the critical path of its slowest rollout.

Usage: python benchmarks/reward_overlap.py [--concurrency 64,16] [--repeats 3] [--rollouts 8]
Writes benchmarks/results/reward_overlap.json and .md.

The judge is ``benchmarks/_latency_judge.py`` in a process of its own: an OpenAI-compatible
server whose latency grows with prompt and output tokens, with a concurrency limit and overload
(settings in :data:`JUDGE`), answering the fact stages with JSON that satisfies their schemas
(``schema_answers``) and CapRL's questions with a letter. capbench reaches it through its
``openai`` engine, as it would a vLLM server.

One step's rewards are the BalCapRL three (precision, recall, linguistic masked to the length
band [0.5, 2]) and CapRL's QA utility over ``rollouts`` rollouts of capbench-mini (the detailed
and short example captions in turn, so decompositions differ in length, and some captions fall
outside the band). Three schedules:

- *one at a time, stage by stage*: each reward awaited in turn, each fact stage one batch over
  the whole step (what capbench-rl did before its rewards shared judge calls in flight);
- *together, stage by stage*: the rewards at once, but a caption's matching and verification
  wait for the whole batch's decompositions (``capbench.metrics.facts.STREAM_PER_CAPTION = False``);
- *together, per caption*: the rewards at once, and each caption's matching and verification sent
  as soon as its own decomposition returns (capbench's default).

The critical path is measured, not modelled: each rollout's rewards are run alone (a fresh
cache, the server otherwise idle, the third schedule; the median of ``repeats`` runs), and the
step cannot finish before the slowest of them. At a concurrency below the step's width the
server's work is the other bound: its busy seconds (modelled service time of every request,
queueing left out) over its concurrency. Figures are the median of ``repeats`` runs, each with a fresh judge-call cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import save  # noqa: E402

import capbench  # noqa: E402
from capbench.metrics import facts  # noqa: E402
from capbench.records import read_caption_file  # noqa: E402
from capbench_rl import rewards  # noqa: E402

#: The judge server's latency model (see benchmarks/_latency_judge.py); concurrency is swept.
JUDGE = {
    "base_s": 0.05,
    "per_prompt_token_s": 0.0001,
    "per_output_token_s": 0.003,
    "overload_factor": 0.5,
    "schema_answers": True,
}
SCHEDULES = {
    "one at a time, stage by stage": (False, False),
    "together, stage by stage": (True, False),
    "together, per caption": (True, True),
}


@contextmanager
def judge_server(concurrency: int) -> Iterator[str]:
    """Start the latency judge in its own process; yield its base URL."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump({**JUDGE, "concurrency": concurrency}, file)
    process = subprocess.Popen(
        [sys.executable, str(HERE / "_latency_judge.py"), "--config", file.name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield json.loads(process.stdout.readline())["base_url"]
    finally:
        process.kill()
        process.wait()
        Path(file.name).unlink()


def judge_stats(base_url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(base_url.removesuffix("/v1") + "/stats").json()


def step_inputs(rollouts: int) -> tuple[list[str], dict[str, Any]]:
    """Completions and TRL's dataset columns for ``rollouts`` rollouts of capbench-mini."""
    bench = capbench.load_benchmark("mini")
    sets = {n: dict(read_caption_file(p).captions) for n, p in bench.example_captions.items()}
    samples = [s for s in bench.samples if s.questions]
    samples = [samples[i % len(samples)] for i in range(rollouts)]
    captions = [sets["short" if i % 2 else "detailed"][s.id] for i, s in enumerate(samples)]
    columns = {
        "sample_id": [s.id for s in samples],
        "reference_caption": [s.reference_caption for s in samples],
        "reference_facts": [list(s.reference_facts) for s in samples],
        "questions": [[q.to_dict() for q in s.questions] for s in samples],
        "domain": [s.domain for s in samples],
    }
    return captions, columns


def reward_functions(base_url: str, concurrency: int, cache: Path) -> list[Any]:
    """The step's four rewards, with a judge set of their own (a fresh cache)."""
    setup = rewards.JudgeSetup(
        judge="openai:latency",
        judge_options=(f"base_url={base_url}", f"concurrency={concurrency}", "max_retries=0"),
        fact_protocol="official",
        cache=str(cache),
    )
    return [
        *rewards.balcap_rewards(setup),
        rewards.reward(rewards.caprl_qa_utility, setup=setup, metric_options=(("answer_mode", "letter"),)),
    ]


async def one_step(funcs: list[Any], captions: list[str], columns: dict[str, Any], together: bool) -> list[Any]:
    prompts = ["Describe this image."] * len(captions)
    if together:
        return list(await asyncio.gather(*(f(prompts, captions, **columns) for f in funcs)))
    return [await f(prompts, captions, **columns) for f in funcs]


def timed_step(
    base_url: str, concurrency: int, captions: list[str], columns: dict[str, Any], together: bool, stream: bool
) -> tuple[float, list[Any]]:
    """Seconds of one step's rewards (a fresh cache), and the rewards."""
    facts.STREAM_PER_CAPTION = stream
    try:
        with tempfile.TemporaryDirectory() as folder:
            funcs = reward_functions(base_url, concurrency, Path(folder) / "cache.sqlite")
            started = time.perf_counter()
            values = asyncio.run(one_step(funcs, captions, columns, together))
            seconds = time.perf_counter() - started
            rewards._RUNTIMES.clear()
    finally:
        facts.STREAM_PER_CAPTION = True
    return seconds, values


def critical_path(
    base_url: str, concurrency: int, captions: list[str], columns: dict[str, Any], repeats: int
) -> list[float]:
    """Each rollout's reward time when it is the only one (its own critical path at this server), a median."""
    alone = []
    for i in range(len(captions)):
        one = {k: v[i : i + 1] for k, v in columns.items()}
        runs = [timed_step(base_url, concurrency, captions[i : i + 1], one, True, True)[0] for _ in range(repeats)]
        alone.append(statistics.median(runs))
    return alone


def measure(concurrency: int, repeats: int, rollouts: int) -> list[dict[str, Any]]:
    captions, columns = step_inputs(rollouts)
    with judge_server(concurrency) as base_url:
        path = critical_path(base_url, concurrency, captions, columns, repeats)
        rows, reference = [], None
        for schedule, (together, stream) in SCHEDULES.items():
            times, busy = [], []
            for _ in range(repeats):
                before = judge_stats(base_url)
                seconds, values = timed_step(base_url, concurrency, captions, columns, together, stream)
                after = judge_stats(base_url)
                times.append(seconds)
                busy.append(after["busy_s"] - before["busy_s"])
                reference = reference or values
                assert values == reference, "a schedule changed the rewards"
            seconds, work = statistics.median(times), statistics.median(busy) / concurrency
            rows.append({
                "concurrency": concurrency,
                "schedule": schedule,
                "seconds": round(seconds, 3),
                "critical_path": round(max(path), 3),
                "over_critical_path": round(seconds / max(path), 2),
                "work_bound": round(work, 3),
                "over_best_bound": round(seconds / max(max(path), work), 2),
                "runs": [round(t, 3) for t in times],
                "alone": [round(t, 3) for t in path],
            })  # fmt: skip
        failed = sum(v is None for reward in reference or [] for v in reward)
        for row in rows:
            row["failed_rewards"] = failed
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="64,16", help="judge server concurrencies to sweep, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (the median counts)")
    parser.add_argument("--rollouts", type=int, default=8, help="rollouts in the step")
    args = parser.parse_args()
    rows = [row for c in args.concurrency.split(",") for row in measure(int(c), args.repeats, args.rollouts)]
    lines = [
        "# Reward wall time of one RL step (BalCapRL's three rewards + CapRL's QA utility)",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}. {args.rollouts} rollouts of "
        "capbench-mini (detailed and short captions in turn); judge: `benchmarks/_latency_judge.py` in its own "
        f"process, {json.dumps(JUDGE)}, reached through capbench's `openai` engine at the server's concurrency. "
        "Critical path: the slowest rollout's rewards run alone (measured, median of the repeats). Work bound: "
        f"the server's busy seconds over its concurrency. Median of {args.repeats} runs, each with a fresh cache; "
        "every schedule gave the same rewards. `python benchmarks/reward_overlap.py`.",
        "",
        "| server concurrency | rewards, fact stages | step's reward time | critical path | × critical path "
        "| work bound | × best bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['concurrency']} | {row['schedule']} | {row['seconds']:.2f} s | {row['critical_path']:.2f} s | "
            f"{row['over_critical_path']:.2f} | {row['work_bound']:.2f} s | {row['over_best_bound']:.2f} |"
        )
    report = {"rollouts": args.rollouts, "repeats": args.repeats, "judge": JUDGE, "rows": rows}
    save("reward_overlap", report, "\n".join(lines))


if __name__ == "__main__":
    main()
