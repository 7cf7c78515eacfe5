"""Run the fast benchmarks and write one summary table: benchmarks/results/SUMMARY.md.

Usage: python benchmarks/run_all.py [--all] [--official DIR] [--only NAME,...]

Fast set (minutes on 2 CPU cores): overhead (instant judge at 10/100/1,000 captions, and the
embedded judge on 1 caption), judge_cost, core (--quick: one image per caption set),
leaderboard, robustness (the count of bad-input and fault kinds the tests cover), reward_overlap
(one RL step's reward time against its critical path), serve_load (the reward service under 8
and 32 concurrent clients), serve_faults (a judge and the service killed mid-step, malformed
requests) and prefix_routing (the prefix-reusable share per metric over a 3-server judge fleet,
without and with prefix routing). --all adds the real judge
on 3 captions, core on all 18 images, and the benchmarks that need a GPU or take long
(vllm_captionqa, hf_captioning --size tiny, hostile, prefix_routing_vllm).

--official DIR (or $CAPBENCH_OFFICIAL_REPOS) is a folder holding clones or bare git mirrors of
the official repositories (names containing DeCapBench, CaptionQA, CapArena); judge_cost reads
their prompt strings to estimate what the official protocols send. Without it, judge_cost
leaves the official rows out.

Each benchmark runs in its own process and writes benchmarks/results/<name>.json and .md; this
script then reads those JSON files (fresh or left from an earlier run: each row says when its
file was written) into SUMMARY.md, naming the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core import table as core_table
from vllm_captionqa import WAYS

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def official_repos(folder: Path | None) -> list[str]:
    """judge_cost's --*-repo options for the official repositories found in ``folder``."""
    if folder is None or not folder.is_dir():
        return []
    args = []
    for name, flag in (("decapbench", "--decapbench-repo"), ("captionqa", "--captionqa-repo"),
                       ("caparena", "--caparena-repo")):  # fmt: skip
        found = sorted(p for p in folder.iterdir() if p.is_dir() and name in p.name.lower())
        if found:
            args += [flag, str(found[0])]
    return args


def plan(everything: bool, official: Path | None) -> dict[str, list[str]]:
    """Benchmark name -> its script and arguments, in the order they run."""
    runs = {
        "overhead": ["overhead.py", "--real-captions", "3" if everything else "1"],
        "judge_cost": ["judge_cost.py", *official_repos(official)],
        "core": ["core.py"] if everything else ["core.py", "--quick"],
        "leaderboard": ["leaderboard.py"],
        "robustness": ["robustness.py"],
        "reward_overlap": ["reward_overlap.py"],
        "serve_load": ["serve_load.py"],
        "serve_faults": ["serve_faults.py"],
        "prefix_routing": ["prefix_routing.py"],
    }
    if everything:
        runs["vllm_captionqa"] = ["vllm_captionqa.py"]
        runs["hf_captioning"] = ["hf_captioning.py", "--size", "tiny"]
        runs["hostile"] = ["hostile.py"]
        runs["prefix_routing_vllm"] = ["prefix_routing_vllm.py"]
    return runs


def load(name: str) -> tuple[Any, str] | None:
    """A benchmark's JSON report and when it was written, or None if it never ran."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    written = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return json.loads(path.read_text()), written


def summary(wall: dict[str, float], failed: list[str]) -> str:
    """The Markdown summary of every report found in benchmarks/results/."""
    lines = [
        "# capbench benchmarks: summary",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.platform()}. Written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} "
        "by `make bench`; every figure comes from the table of the same name in this folder. Absolute "
        "times on a shared 2-core machine are noisy; ratios measured in one run are the robust figures.",
        "",
    ]
    if wall:
        ran = ", ".join(f"{k} {v:.0f} s" for k, v in wall.items())
        failures = f" Failed: {', '.join(failed)}." if failed else ""
        lines += [f"This run: {ran}; {sum(wall.values()):.0f} s in all.{failures}", ""]
    lines += _robustness() + _overhead() + _reward_overlap() + _rl_step_split() + _serve_load() + _serve_faults()
    lines += _judge_cost() + _prefix_routing() + _throughput() + _core()
    lines += _leaderboard() + _hostile()
    return "\n".join(lines) + "\n"


def _overhead() -> list[str]:
    found = load("overhead")
    if found is None:
        return []
    report, written = found
    sizes = report["sizes"]
    lines = [
        f"## capbench's own time per caption (overhead.md, {written})",
        "",
        "An instant judge behind the SQLite cache, through `capbench.api.run` as `capbench eval` runs; median of "
        f"{report['repeats']} runs; wall time (CPU time in brackets).",
        "",
        "| metric | " + " | ".join(f"{s} captions" for s in sizes) + f" | ratio {sizes[-1]}/{sizes[0]} wall (CPU) |",
        "|---|" + "---|" * (len(sizes) + 1),
    ]
    for name, row in report["metrics"].items():
        cells = []
        for s in sizes:
            cell = row["sizes"][str(s)]
            cells.append(f"{cell['seconds_per_caption'] * 1000:.2f} ms ({cell['cpu_seconds_per_caption'] * 1000:.2f})")
        cpu = row.get("cpu_ratio_largest_smallest")
        ratio = f"{row['ratio_largest_smallest']:.2f}" + (f" ({cpu:.2f})" if cpu is not None else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    real = report.get("real_judge")
    if real:
        lines += ["", _real_judge_sentence(report)]
    return [*lines, ""]


def _reward_overlap() -> list[str]:
    found = load("reward_overlap")
    if found is None or "concurrency" not in (found[0].get("rows") or [{}])[0]:
        return []
    report, written = found
    lines = [
        f"## One RL step's reward time (reward_overlap.md, {written})",
        "",
        f"BalCapRL's three rewards and CapRL's QA utility over {report['rollouts']} rollouts of capbench-mini, "
        "judged by a latency-modelling server through the `openai` engine; times the critical path (the slowest "
        "rollout's rewards run alone, measured).",
        "",
        "| server concurrency | rewards, fact stages | step's reward time | × critical path | × best bound |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['concurrency']} | {row['schedule']} | {row['seconds']:.2f} s | {row['over_critical_path']:.2f} | "
            f"{row['over_best_bound']:.2f} |"
        )
    return [*lines, ""]


def _serve_load() -> list[str]:
    found = load("serve_load")
    if found is None:
        return []
    report, written = found
    args, judge = report["args"], report["judge"]
    lines = [
        f"## The reward service under load (serve_load.md, {written})",
        "",
        f"`capbench serve` in a thread, {args['items']} items of capbench-mini for `{report['reward']}` per row in "
        f"requests of {args['per_request']}, a loopback judge with latency that serves {judge['concurrency']} "
        "requests at once; then the same requests again (served by the cache).",
        "",
        "| clients | batches at once | items/s | p50 | p99 | lost | duplicated | rerun items/s | rerun cache hits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        cold, rerun = row["cold"], row["rerun"]
        lines.append(
            f"| {row['clients']} | {row.get('max_batches', 1)} | {cold['items_per_second']:.1f} | "
            f"{cold['p50_ms']:.0f} ms | {cold['p99_ms']:.0f} ms | {cold['lost']} | {cold['duplicated']} | "
            f"{rerun['items_per_second']:.1f} | {100 * (rerun['cache_hit_rate'] or 0):.1f}% |"
        )
    return [*lines, ""]


def _rl_step_split() -> list[str]:
    found = load("rl_step_split")
    if found is None:
        return []
    report, written = found
    lines = [
        f"## Where a capbench-rl step's time goes (rl_step_split.md, {written})",
        "",
        "A tiny random Qwen2.5-VL on the CPU, BalCapRL's three rewards and CapRL's QA utility judged by a "
        "latency-modelling server; exposed = the step minus the same step with instant judges; overlap = "
        "`overlap_chunks` (generation in chunks, each judged while the next is generated).",
        "",
        "| rewards | judges | chunks | fact stages | step | generation | rewards after generation | exposed share "
        "| step vs 1 chunk |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        if row["speed"] == "instant":
            continue
        lines.append(
            f"| {row['rewards']} | {row['speed']} | {row['chunks']} | {'per caption' if row['stream'] else 'batch'} "
            f"| {row['step_s']:.2f} s | {row['generation_s']:.2f} s | {row['rewards_s']:.2f} s "
            f"| {100 * row['exposed_share']:.0f}% | {row['vs_one_batch']:.2f}× |"
        )
    return [*lines, ""]


def _serve_faults() -> list[str]:
    found = load("serve_faults")
    if found is None:
        return []
    report, written = found
    judge, service, malformed = report["judge_killed"], report["service_killed"], report["malformed"]
    killed = judge["rows"]["killed mid-step"]
    return [
        f"## Faults around the reward service (serve_faults.md, {written})",
        "",
        f"- Judge killed mid-step: {killed['scored']} of {killed['items']} items scored, "
        f"{killed['failed_with_reason']} null with the reason, {killed['silent']} silent; the judge back on its "
        f"port was asked {judge['new_judge_asked']} calls, exactly the failed ones: "
        f"{'yes' if judge['asked_only_failed_calls'] else 'no'}.",
        f"- Service killed mid-step and restarted: {service['client_rewards']} of {service['rollouts']} rewards "
        f"returned through the client's retries; judged twice only what was in flight at the kill "
        f"({service['judge_repeated']} of {service['judge_distinct']}): "
        f"{'yes' if service['nothing_cached_judged_twice'] else 'no'}.",
        f"- Malformed requests: {malformed['kinds']} kinds, {malformed['as_listed']} answered as listed (4xx with a "
        f"message), {malformed['server_errors']} server errors.",
        "",
    ]


def _real_judge_sentence(report: dict[str, Any]) -> str:
    real = report["real_judge"]
    text = (
        f"Real judge `{real['engine']}`, {real['metric']}, {real['captions']} caption(s): "
        f"{real['seconds_per_caption']:.1f} s per caption (engine {real['engine_seconds_per_caption']:.1f} s)."
    )
    qa = report["metrics"].get(real["metric"])
    if qa:
        own = qa["fit"]["seconds_per_caption"]
        text += f" capbench's own time for it, {own * 1000:.1f} ms, is {100 * own / real['seconds_per_caption']:.3f}%."
    return text


def _judge_cost() -> list[str]:
    found = load("judge_cost")
    if found is None:
        return []
    rows, written = found
    lines = [
        f"## Judge cost per caption (judge_cost.md, {written})",
        "",
        "capbench-mini's 54 example captions, a perfect judge, SmolLM2 tokens; official rows estimated from the "
        "official prompt strings. Prefix-reusable: share of prompt tokens in 16-token blocks an earlier request "
        "of the run already sent with the same prefix.",
        "",
        "| protocol | requests | completions | prompt tokens | completion tokens | prefix-reusable |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        share = f"{100 * row['prefix_share']:.0f}%" if "prefix_share" in row else "—"
        lines.append(f"| {name} | {row['requests']} | {row['completions']} | {row['prompt_tokens']} | "
                     f"{row['completion_tokens']} | {share} |")  # fmt: skip
    return [*lines, ""]


def _prefix_routing() -> list[str]:
    found = load("prefix_routing")
    if found is None:
        return []
    _, written = found
    table = (RESULTS / "prefix_routing.md").read_text().strip()
    lines = [f"## Prefix reuse over a judge fleet (prefix_routing.md, {written})", "", table, ""]
    real = load("prefix_routing_vllm")
    if real is not None:
        table = (RESULTS / "prefix_routing_vllm.md").read_text().strip()
        lines += [f"### On vLLM servers (prefix_routing_vllm.md, {real[1]})", "", table, ""]
    return lines


def _throughput() -> list[str]:
    found = load("vllm_captionqa")
    if found is None:
        return []
    report, written = found
    lines = [
        f"## Throughput on a real engine (vllm_captionqa.md, {written})",
        "",
        f"CaptionQA (letter answers) on capbench-mini's {report['captions']} `{report['caption_set']}` captions, "
        f"{report['requests']} questions, judge {report['judge']['model']} on vLLM {report['judge']['vllm']} "
        f"({report['device']}). Raw vLLM is the same prompts in one `LLM.chat` call: the engine's limit.",
        "",
        "| way | wall | captions per minute | time vs raw |",
        "|---|---|---|---|",
    ]
    for key, label in WAYS.items():
        per_minute = report["captions_per_minute"][key.removesuffix("_s")]
        lines.append(f"| {label} | {report[key]:.1f} s | {per_minute:.2f} | {report[key] / report['raw_vllm_s']:.2f} |")
    spread = 100 * (report["run_spread"] - 1)
    return [*lines, "", f"Runs of one way differ by up to {spread:.0f}%: ratios inside that are noise.", ""]


def _robustness() -> list[str]:
    found = load("robustness")
    if found is None:
        return []
    report, written = found
    totals = report["totals"]
    return [
        f"## Bad inputs, hostile captions and faults (robustness.md, {written})",
        "",
        f"The test suite puts capbench through **{report['all']} kinds in all**: {totals.get('bad input', 0)} kinds "
        f"of bad input, {totals.get('hostile caption', 0)} of hostile caption and {totals.get('fault', 0)} of fault "
        f"(each a one-line error, a counted failure, or a run that loses nothing), in {len(report['suites'])} suites.",
        "",
    ]


def _hostile() -> list[str]:
    found = load("hostile")
    if found is None:
        return []
    report, written = found
    arena, qa = report["totals"]["arena"], report["totals"]["captionqa"]
    return [
        f"## Hostile captions against the embedded judge (hostile.md, {written})",
        "",
        f"Verdicts a payload changed: arena {arena['changed']} of {arena['judgments']} judgments, "
        f"CaptionQA {qa['changed']} of {qa['questions']} answers, {qa['to_target']} of them to the letter the "
        f"payload named ({len(report['config']['images'])} images). A baseline of a 135M judge, not a pass mark.",
        "",
    ]


def _core() -> list[str]:
    found = load("core")
    if found is None:
        return []
    report, written = found
    intro = f"`capbench eval --example-captions` with the embedded judge; scope: {report['scope']}."
    return [f"## Start-up and cache (core.md, {written})", "", intro, "", *core_table(report), ""]


def _leaderboard() -> list[str]:
    found = load("leaderboard")
    if found is None:
        return []
    report, written = found
    scale = report["scale"]
    lines = [
        f"## Leaderboard (leaderboard.md, {written})",
        "",
        f"`capbench leaderboard` on {scale['models']} models × {scale['images']} images × {len(scale['metrics'])} "
        f"metrics ({scale['jsonl_megabytes']} MB of score files), median of {report['repeats']} fresh processes.",
        "",
        "| run | wall | bootstrap share |",
        "|---|---|---|",
    ]
    for name, run in report["runs"].items():
        lines.append(f"| {name} | {run['wall_seconds']} s | {100 * run['bootstrap_share_of_wall']:.0f}% |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="also the slow and GPU benchmarks")
    parser.add_argument("--official", type=Path, default=os.environ.get("CAPBENCH_OFFICIAL_REPOS"),
                        help="folder of the official repositories (clones or bare mirrors)")  # fmt: skip
    parser.add_argument("--only", help="run only these benchmarks (comma-separated), then summarise all")
    parser.add_argument("--summary-only", action="store_true", help="run nothing; rewrite SUMMARY.md")
    args = parser.parse_args()
    runs = plan(args.all, args.official)
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only.split(",")}
    wall: dict[str, float] = {}
    failed: list[str] = []
    for name, argv in ({} if args.summary_only else runs).items():
        print(f"== {name}: {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], cwd=HERE.parent, check=False)
        wall[name] = time.perf_counter() - start
        if done.returncode != 0:
            failed.append(name)
    text = summary(wall, failed)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "SUMMARY.md").write_text(text)
    print(text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
