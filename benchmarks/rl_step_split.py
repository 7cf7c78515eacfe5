"""Where a `capbench-rl train` step's time goes, with and without judging that overlaps generation.

Usage: python benchmarks/rl_step_split.py [--steps 6] [--speeds keeps-up,slower] [--chunks 1,4]
       [--rewards in-process,service] [--overload 0.5] [--no-stream-compare] [--quick]
Writes benchmarks/results/rl_step_split.json and .md.

The policy is a tiny random Qwen2.5-VL (tests/tiny_models.py) on the CPU; the data capbench-mini;
the recipe BalCapRL's paper recipe (`balcaprl-qwen2.5-vl-3b`: its three rewards, c-GDPO, the length
band, greedy fact protocol, a served text judge and a served vision judge) plus CapRL's QA utility,
reduced to tiny sizes (groups of 4, 16 rollouts per step, at most 192 tokens). The judges are
benchmarks/_latency_judge.py in a process of its own (`schema_answers: true`, so the fact stages
score), 8 requests at once, slower when overloaded (``--overload``), at three speeds: ``instant``
(no latency: the baseline), ``keeps-up`` and ``slower``. Whether the judges keep up is read from the
overlapped rows: judges that keep up finish each chunk before the next is generated, so the rewards
left after generation take at most one chunk's generation time (the table's "keeps up"). Rewards
are scored in process (capbench's ``openai`` engine pointed at the judge), or through `capbench
serve` (a process of its own on 127.0.0.1, with the same judge). ``chunks`` is the recipe's
``overlap_chunks`` (1: TRL's one batch, judged after it). ``stream`` is the fact pipeline's
``STREAM_PER_CAPTION`` switch (each caption's verification sent as its decomposition returns;
False: stage by stage, point 3's "before"), where this capbench has it.

Each configuration is one training run in a child process with a fresh judge cache. Figures are
medians over the steps after the first (which builds the judges). Exposed reward time is the
step's time minus that of the same configuration with instant judges; its share is of the step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

#: The latency judge at each speed (per-request seconds: base + per prompt word + per output token).
SPEEDS: dict[str, dict[str, float]] = {
    "instant": {"base_s": 0.0, "per_prompt_token_s": 0.0, "per_output_token_s": 0.0},
    "keeps-up": {"base_s": 0.02, "per_prompt_token_s": 0.00002, "per_output_token_s": 0.0003},
    "slower": {"base_s": 0.1, "per_prompt_token_s": 0.0001, "per_output_token_s": 0.001},
}
JUDGE = {"concurrency": 8, "overload_factor": 0.5, "schema_answers": True}
#: The recipe: balcaprl-qwen2.5-vl-3b's settings at tiny sizes, with CapRL's QA utility added.
RECIPE: dict[str, Any] = {
    "benchmark": "mini", "image_size": 64,
    "rewards": {"balcap_precision": 1.0, "balcap_recall": 1.0, "balcap_linguistic": 1.0, "caprl_qa_utility": 1.0},
    "aggregation": "normalize_then_sum", "length_band": [0.5, 2.0], "fact_protocol": "greedy",
    "qa_answer_mode": "letter", "caprl_samples": 4, "num_generations": 4, "per_device_train_batch_size": 16,
    "max_completion_length": 192, "temperature": 1.0, "learning_rate": 1.0e-6, "beta": 0.0, "use_cpu": True,
    "save_steps": 100000, "eval_benchmark": None,
}  # fmt: skip
ENGINE_CONCURRENCY = 64  # the paper recipe's judge_options


def child(spec: dict[str, Any]) -> None:
    """One training run (in this process): set the fact pipeline's switch, train, leave steps.jsonl."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as capbench-rl's CLI does, before torch loads
    import capbench.metrics.facts as facts
    from capbench_rl.cli import quiet_trl_vllm_warning
    from capbench_rl.recipe import Recipe
    from capbench_rl.train import train

    if hasattr(facts, "STREAM_PER_CAPTION"):
        facts.STREAM_PER_CAPTION = spec["stream"]
    quiet_trl_vllm_warning()
    train(Recipe(**spec["recipe"]))


def start_judge(settings: dict[str, Any], folder: Path) -> tuple[subprocess.Popen[str], str]:
    """The latency judge in a process of its own; return it and its base URL."""
    config = folder / "judge.json"
    config.write_text(json.dumps(settings))
    proc = subprocess.Popen([sys.executable, str(HERE / "_latency_judge.py"), "--config", str(config)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())["base_url"]


def start_service(judge_url: str, stream: bool, home: Path, images: Path) -> tuple[subprocess.Popen[str], str]:
    """`capbench serve` in a process of its own (its fact pipeline's switch set), judged by the latency judge."""
    boot = (
        "import sys, capbench.metrics.facts as f; f.STREAM_PER_CAPTION = sys.argv[1] == '1'; "
        "from capbench.cli import main; sys.argv = ['capbench', *sys.argv[2:]]; main()"
    )
    judge = [
        "--judge",
        "openai:latency",
        "--judge-base-url",
        judge_url,
        "--judge-opt",
        f"concurrency={ENGINE_CONCURRENCY}",
    ]
    vision = ["--vision-judge", "openai:latency", "--vision-judge-base-url", judge_url,
              "--vision-judge-opt", f"concurrency={ENGINE_CONCURRENCY}"]  # fmt: skip
    settings = ["--fact-protocol", "greedy", "--answer-mode", "letter", "--caprl-samples", str(RECIPE["caprl_samples"]),
                "--images-root", str(images), "--port", "0"]  # fmt: skip
    command = [sys.executable, "-c", boot, "1" if stream else "0", "serve", *judge, *vision, *settings]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "CAPBENCH_HOME": str(home)})
    assert proc.stderr is not None
    for line in proc.stderr:
        if '"url"' in line:
            return proc, json.loads(line)["url"]
    raise RuntimeError("capbench serve did not start")


def judge_received(url: str) -> int:
    import httpx

    return int(httpx.get(url.removesuffix("/v1") + "/stats", timeout=10).json()["received"])


def suppressed(policy: Path) -> list[int]:
    """Token ids the policy must not sample: the image placeholder (as TRL), and control characters.

    The random policy would babble NUL bytes, which the reward service refuses (HTTP 400 for the whole
    request, which stops training).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    control = [i for i in range(len(tokenizer)) if any(ord(c) < 32 and c not in "\n\t" for c in tokenizer.decode([i]))]
    return [tokenizer.convert_tokens_to_ids("<|image_pad|>"), *control]


def run_config(
    config: dict[str, Any], policy: Path, judge_url: str, service_url: str | None, work: Path
) -> dict[str, Any]:
    """Train one configuration in a child process; return its per-step medians."""
    out = work / "run"
    generation = {
        "suppress_tokens": suppressed(policy),
        "min_new_tokens": 16,
    }  # no empty caption: the service refuses it
    recipe = {**RECIPE, "model": str(policy), "output_dir": str(out), "max_steps": config["steps"],
              "overlap_chunks": config["chunks"], "trl": {"generation_kwargs": generation}}  # fmt: skip
    if service_url is not None:
        recipe.update(reward_service=service_url)
    else:
        options = [f"base_url={judge_url}", f"concurrency={ENGINE_CONCURRENCY}"]
        recipe.update(judge="openai:latency", judge_options=options, vision_judge="openai:latency",
                      vision_judge_options=options)  # fmt: skip
    spec = json.dumps({"recipe": recipe, "stream": config["stream"]})
    before = judge_received(judge_url)
    started = time.perf_counter()
    env = {**os.environ, "CAPBENCH_HOME": str(work / "home"), "TRL_EXPERIMENTAL_SILENCE": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", spec], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{config}: training failed\n{done.stderr[-3000:]}")
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    return {**config, "run_seconds": round(time.perf_counter() - started, 1),
            "judge_received": judge_received(judge_url) - before, **medians(steps[1:])}  # fmt: skip


def medians(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of the steps after the first, as medians."""

    def med(values: list[float | None]) -> float | None:
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 3) if values else None

    phase = lambda key: med([s["phases"][key] for s in steps])  # noqa: E731
    return {
        "steps": len(steps),
        "step_s_each": [round(s["step_seconds"], 3) for s in steps],
        "step_s": med([s["step_seconds"] for s in steps]),
        "generation_s": phase("generation"),
        "rewards_s": phase("rewards"),
        "rollout_other_s": phase("rollout_other"),
        "update_s": phase("update"),
        "prefetch_s": phase("prefetch"),
        "prefetch_during_generation_s": phase("prefetch_during_generation"),
        "judge_calls": med([s["judge"].get("calls", 0) for s in steps]),
        "cache_hits": med([s["judge"].get("cache_hits", 0) for s in steps]),
        "failures": sum(s["judge"].get("failures", 0) for s in steps),
        "unscored": sum(r["unscored"] for s in steps for r in s["rewards"].values()),
        "prefetch_errors": sum((s["prefetch"] or {}).get("errors", 0) for s in steps),
    }


def configurations(args: argparse.Namespace, streams: bool) -> list[dict[str, Any]]:
    """Every configuration: per rewards path, judge speed and chunks; stage by stage too where asked.

    The stage-by-stage fact pipeline (point 3's "before") runs in process, with the slow judges, at the
    fewest and the most chunks.
    """
    out = []
    for rewards in args.rewards:
        for speed in ["instant", *args.speeds]:
            for chunks in args.chunks:
                out.append({"rewards": rewards, "speed": speed, "chunks": chunks, "stream": True, "steps": args.steps})
                compare = args.stream_compare and streams and speed != "instant" and rewards == "in-process"
                if compare and chunks in (min(args.chunks), max(args.chunks)):
                    out.append({**out[-1], "stream": False})
    return out


def derive(rows: list[dict[str, Any]]) -> None:
    """Add each row's exposed reward time, its step against overlap off, and whether the judges keep up."""
    instant = {(r["rewards"], r["chunks"]): r["step_s"] for r in rows if r["speed"] == "instant"}
    one_batch = {(r["rewards"], r["speed"], r["stream"]): r for r in rows if r["chunks"] == 1}
    for row in rows:
        base = instant.get((row["rewards"], row["chunks"]))
        row["exposed_s"] = None if base is None else round(row["step_s"] - base, 3)
        row["exposed_share"] = None if base is None else round(max(0.0, row["exposed_s"]) / row["step_s"], 3)
        same = one_batch.get((row["rewards"], row["speed"], row["stream"]))
        row["vs_one_batch"] = None if same is None else round(row["step_s"] / same["step_s"], 3)
        # Judges that keep up finish a chunk before the next one is generated, so what is left after
        # generation is about the last chunk's judging: the exposed rewards, against one chunk's generation.
        chunk = row["generation_s"] / row["chunks"]
        row["keeps_up"] = None if row["chunks"] == 1 else row["rewards_s"] <= chunk


def markdown(report: dict[str, Any]) -> str:
    """The report's tables."""
    lines = [
        "# Where a `capbench-rl train` step's time goes, with judging that overlaps generation",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}` ({report['seconds'] / 60:.1f} min).",
        "",
        *report["setup"],
        "",
        "| rewards | judges | chunks | fact stages | step s | generation s | rewards s (exposed) | update s "
        "| prefetch s (during generation) | exposed s | exposed share | keeps up | step vs 1 chunk "
        "| judge calls (cache hits) | judge received |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    dash = "—"
    for r in report["rows"]:
        lines.append(
            f"| {r['rewards']} | {r['speed']} | {r['chunks']} | {'streamed' if r['stream'] else 'stage by stage'} | "
            f"{r['step_s']:.2f} | {r['generation_s']:.2f} | {r['rewards_s']:.2f} | {r['update_s']:.2f} | "
            f"{r['prefetch_s']:.2f} ({r['prefetch_during_generation_s']:.2f}) | "
            f"{dash if r['exposed_s'] is None else format(r['exposed_s'], '.2f')} | "
            f"{dash if r['exposed_share'] is None else format(100 * r['exposed_share'], '.0f') + '%'} | "
            f"{dash if r['keeps_up'] is None or r['speed'] == 'instant' else ('yes' if r['keeps_up'] else 'no')} | "
            f"{dash if r['vs_one_batch'] is None else format(r['vs_one_batch'], '.2f') + '×'} | "
            f"{r['judge_calls']:g} ({r['cache_hits']:g}) | {r['judge_received']} |"
        )
    lines += ["", *report["notes"]]
    return "\n".join(lines)


def setup_lines(args: argparse.Namespace) -> list[str]:
    """What every row shares, in words."""
    speeds = "; ".join(
        f"`{name}` {v['base_s'] * 1000:g} ms + {v['per_prompt_token_s'] * 1000:g} ms per prompt word + "
        f"{v['per_output_token_s'] * 1000:g} ms per output token"
        for name, v in SPEEDS.items()
        if name == "instant" or name in args.speeds
    )
    r = RECIPE
    return [
        f"Policy: a tiny random Qwen2.5-VL (tests/tiny_models.py) on the CPU; capbench-mini; "
        f"{r['per_device_train_batch_size']} rollouts per step in groups of {r['num_generations']}, "
        f"{r['max_completion_length']} tokens at most (at least 16; control characters suppressed). Rewards: "
        "BalCapRL's three (c-GDPO, length band [0.5, 2], greedy fact protocol, a text and a vision judge) and CapRL's "
        f"QA utility ({r['caprl_samples']} draws, letters): `balcaprl-qwen2.5-vl-3b` at tiny sizes. Judges: "
        f"benchmarks/_latency_judge.py in a process of its own (`schema_answers`), {JUDGE['concurrency']} requests "
        f"at once (more wait, and each takes × (1 + {args.overload:g} × excess in flight / {JUDGE['concurrency']})); "
        f"per request {speeds}. In process, capbench's `openai` engine ({ENGINE_CONCURRENCY} at once); "
        "service: `capbench serve` in a process of its own, same judges and settings. Each row is one run with a "
        f"fresh cache; figures are medians over steps 2-{args.steps}.",
    ]


NOTES = [
    "- **rewards s**: time inside TRL's `_calculate_rewards`, the reward time left after generation. **prefetch s**: "
    "the wall time the overlap's judging ran (in brackets: during generation). **exposed s**: the step minus the same "
    "row (rewards path, chunks) with instant judges; **share** of the step. **keeps up**: the rewards left after "
    "generation took at most one chunk's generation time (judges that keep up have only the last chunk left). "
    "**step vs 1 chunk**: the step against the same judges with overlap off.",
    "- **judge calls (cache hits)**: per step, as steps.jsonl counts them: with overlap, TRL's call finds the "
    "prefetch's answers in the cache. **judge received**: requests the latency judge got over the run (the first "
    "step included): the same with and without overlap means no request was sent twice.",
    "- Instant judges still cost the trainer the client's work (prompts, HTTP, parsing, the cache): the instant rows' "
    "rewards s.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=6, help="training steps per run (the first is not counted)")
    parser.add_argument("--speeds", default="keeps-up,slower", help="judge speeds besides instant, comma-separated")
    parser.add_argument("--chunks", default="1,4", help="overlap_chunks values, comma-separated (1: off)")
    parser.add_argument("--rewards", default="in-process,service", help="in-process, service, or both")
    parser.add_argument("--no-stream-compare", dest="stream_compare", action="store_false",
                        help="skip the fact pipeline's stage-by-stage runs (point 3's 'before')")  # fmt: skip
    parser.add_argument("--overload", type=float, default=JUDGE["overload_factor"],
                        help="the judge's latency growth per `concurrency` requests in excess (0: none)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="3 steps, chunks 1 and 4, in process, no stage-by-stage")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.quick:
        args.steps, args.chunks, args.rewards, args.stream_compare = 3, "1,4", "in-process", False
    args.speeds = [s for s in args.speeds.split(",") if s]
    args.chunks = [int(c) for c in str(args.chunks).split(",")]
    args.rewards = [r for r in args.rewards.split(",") if r]
    from _report import save
    from tiny_models import build_tiny_qwen25vl

    import capbench.metrics.facts as facts

    streams = hasattr(facts, "STREAM_PER_CAPTION")
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        policy = build_tiny_qwen25vl(work / "policy")
        for speed in ["instant", *args.speeds]:
            judge, judge_url = start_judge({**JUDGE, "overload_factor": args.overload, **SPEEDS[speed]}, work)
            try:
                for config in [c for c in configurations(args, streams) if c["speed"] == speed]:
                    run = work / f"run-{len(rows)}"
                    service = None
                    if config["rewards"] == "service":  # the trainer's images are written under its own home
                        images = run / "home" / "images" / "mini"
                        images.mkdir(parents=True)
                        service = start_service(judge_url, config["stream"], run / "service-home", images)
                    try:
                        rows.append(run_config(config, policy, judge_url, service[1] if service else None, run))
                    finally:
                        if service is not None:
                            service[0].terminate()
                            service[0].wait(30)
                    print(json.dumps(rows[-1]), flush=True)
            finally:
                assert judge.stdin is not None
                judge.stdin.close()
                judge.wait(10)
    derive(rows)
    notes = list(NOTES)
    if not streams:
        notes.append("- This capbench has no `capbench.metrics.facts.STREAM_PER_CAPTION`: every row is stage by stage.")
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.platform()}",
        "command": " ".join(["python benchmarks/rl_step_split.py", *sys.argv[1:]]),
        "args": {
            "steps": args.steps,
            "speeds": args.speeds,
            "chunks": args.chunks,
            "rewards": args.rewards,
            "stream_compare": args.stream_compare,
        },
        "speeds": {name: SPEEDS[name] for name in ["instant", *args.speeds]},
        "judge": {**JUDGE, "overload_factor": args.overload},
        "recipe": RECIPE,
        "seconds": round(time.perf_counter() - started, 1),
        "setup": setup_lines(args),
        "rows": rows,
        "notes": notes,
    }
    save("rl_step_split", report, markdown(report))


if __name__ == "__main__":
    main()
