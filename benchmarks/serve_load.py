"""Load test of the reward service (`capbench serve`): concurrent clients, thousands of items, a judge with latency.

Usage: python benchmarks/serve_load.py [--clients 8,32] [--max-batches 1,4] [--items 2000]
       [--per-request 16] [--caprl-samples 4] [--judge-config FILE]
Writes benchmarks/results/serve_load.json and .md.

The judge is benchmarks/_latency_judge.py in a process of its own: an OpenAI-compatible server
whose latency grows with prompt and output tokens, with a concurrency limit and slower service
when overloaded (its settings are in the report). For each number of clients and of batches
judged at once (``--max-batches``: 1 is one batch at a time, as the service judged before
batches overlapped), a fresh service (`capbench.serve.Running`, judge `openai:latency`, answer
mode letter, a fresh cache folder, the default batching window) scores ``items`` items of
capbench-mini's samples (the item carries its reference caption and questions; the caption is one
of the example captions plus a sentence of its own, so no two items share a caption) for CapRL's
QA utility. ``clients`` clients share the
requests of ``per-request`` items each and send them one after another.

Checked on every answer: status 200, one result per item, the ids echoed in order, a reward in
[0, 1] and no error; over a pass, every item answered exactly once; at the judge, exactly one
request per CapRL draw (items × questions per caption: none lost, none retried). Then the same
requests are sent again: the cache hit rate (from the answers' ``usage``), the rerun's speed,
the judge requests it sent (none expected) and whether every reward came back the same.

The ceiling is measured too: capbench's ``openai`` engine alone (no service, batching, metric or
cache), at the service's concurrency, sends the judge requests as long as the CapRL ones; the
calls/s it gets are the most the service could get from this judge on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import save  # noqa: E402

import capbench  # noqa: E402
from capbench.engines import build_engine  # noqa: E402
from capbench.engines.base import Message, Request, Sampling  # noqa: E402
from capbench.records import read_caption_file  # noqa: E402
from capbench.serve import Running, ServeConfig  # noqa: E402

REWARD = "caprl_qa_utility"
#: The figures published before batches overlapped (commit 783f88d, one batch at a time), by clients.
BEFORE = {8: {"items_per_second": 31.8, "p50_ms": 4008, "p99_ms": 5564},
          32: {"items_per_second": 39.9, "p50_ms": 12696, "p99_ms": 13005}}  # fmt: skip


def make_items(count: int, tag: str) -> list[dict[str, Any]]:
    """``count`` items of capbench-mini's samples with distinct captions; ``tag`` keeps sweep points apart."""
    bench = capbench.load_benchmark("mini")
    sets = [dict(read_caption_file(p).captions) for p in bench.example_captions.values()]
    samples = [s for s in bench.samples if s.questions]
    items = []
    for i in range(count):
        sample = samples[i % len(samples)]
        caption = sets[(i // len(samples)) % len(sets)][sample.id]
        items.append(
            {
                "id": f"{tag}-{i}",
                "caption": f"{caption} It is frame {i} of roll {tag}.",
                "reference_caption": sample.reference_caption,
                "questions": [q.to_dict() for q in sample.questions],
                "domain": sample.domain,
            }
        )
    return items


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def send_all(url: str, chunks: list[list[dict[str, Any]]], clients: int) -> dict[str, Any]:
    """Send every chunk from ``clients`` concurrent clients; time, check and gather the answers."""
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for chunk in chunks:
        queue.put_nowait(chunk)
    latencies: list[float] = []
    answered: Counter[str] = Counter()
    rewards: dict[str, float] = {}
    faults: list[str] = []
    usage = {"judge_calls": 0.0, "cache_hits": 0.0}

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            chunk = queue.get_nowait()
            started = time.perf_counter()
            reply = await http.post(f"{url}/v1/score", json={"rewards": [REWARD], "items": chunk})
            latencies.append(time.perf_counter() - started)
            if reply.status_code != 200:
                faults.append(f"HTTP {reply.status_code}: {reply.text[:200]}")
                continue
            body = reply.json()
            ids = [r["id"] for r in body["results"]]
            if ids != [item["id"] for item in chunk]:
                faults.append(f"ids not echoed in order: sent {len(chunk)}, got {len(ids)}")
            for result in body["results"]:
                answered[result["id"]] += 1
                value = result["rewards"].get(REWARD)
                if value is None or not 0 <= value <= 1 or result["errors"]:
                    faults.append(f"{result['id']}: reward {value!r}, errors {result['errors']}")
                rewards[result["id"]] = value
            for key in usage:
                usage[key] += body["usage"][key]

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - started
    sent = [item["id"] for chunk in chunks for item in chunk]
    asked = usage["judge_calls"] + usage["cache_hits"]
    return {
        "items": len(sent),
        "requests": len(chunks),
        "seconds": round(seconds, 2),
        "items_per_second": round(len(sent) / seconds, 1),
        "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "lost": sum(1 for i in sent if answered[i] == 0),
        "duplicated": sum(1 for i in sent if answered[i] > 1),
        "faults": faults[:10],
        "fault_count": len(faults),
        "judge_calls": round(usage["judge_calls"]),
        "cache_hits": round(usage["cache_hits"]),
        "cache_hit_rate": round(usage["cache_hits"] / asked, 4) if asked else None,
        "rewards": rewards,
    }


def judge_stats(base_url: str) -> dict[str, Any]:
    """The latency judge's request counts."""
    return httpx.get(base_url.removesuffix("/v1") + "/stats", timeout=10).json()


def sweep_point(judge: dict[str, Any], clients: int, batches: int, args: argparse.Namespace) -> dict[str, Any]:
    """One fresh service with a fresh cache: a cold pass, then the same requests again."""
    judge_url, slots = judge["base_url"], judge["settings"]["concurrency"]
    items = make_items(args.items, f"c{clients}b{batches}")
    chunks = [items[i : i + args.per_request] for i in range(0, len(items), args.per_request)]
    with tempfile.TemporaryDirectory() as folder:
        config = ServeConfig(
            judge="openai:latency",
            judge_options={"base_url": judge_url, "concurrency": args.engine_concurrency},
            answer_mode="letter",
            caprl_samples=args.caprl_samples,
            cache=Path(folder) / "cache.sqlite",
            port=0,
            max_batches=batches,
        )
        with Running(config, log=lambda line: None) as service:
            before = judge_stats(judge_url)
            cold = asyncio.run(send_all(service.url, chunks, clients))
            middle = judge_stats(judge_url)
            rerun = asyncio.run(send_all(service.url, chunks, clients))
            after = judge_stats(judge_url)
    same = sum(1 for k, v in cold["rewards"].items() if rerun["rewards"].get(k) == v)
    for run in (cold, rerun):
        del run["rewards"]
    cold["judge_received"] = middle["received"] - before["received"]
    cold["judge_expected"] = len(items) * args.caprl_samples
    cold["judge_same_prompt"] = middle["repeated"] - before["repeated"]
    busy = middle["busy_s"] - before["busy_s"]
    cold["judge_service_ms"] = round(1000 * busy / max(1, cold["judge_received"]), 1)
    cold["judge_busy_share"] = round(busy / (cold["seconds"] * slots), 3)
    rerun["judge_received"] = after["received"] - middle["received"]
    return {"clients": clients, "max_batches": batches, "cold": cold, "rerun": rerun, "rerun_same_rewards": same,
            "judge_max_in_flight": after["max_in_flight"]}  # fmt: skip


def judge_alone(judge: dict[str, Any], service_ms: float, concurrency: int, count: int = 1600) -> dict[str, Any]:
    """The judge's calls/s through the ``openai`` engine alone, with prompts as long as the CapRL calls'."""
    s = judge["settings"]
    words = max(1, round((service_ms / 1000 - s["base_s"] - s["per_output_token_s"]) / s["per_prompt_token_s"]))
    engine = build_engine("openai:latency", base_url=judge["base_url"], concurrency=concurrency)
    requests = [
        Request((Message.text("user", f"{i} " + "word " * (words - 1)),), Sampling(max_tokens=1)) for i in range(count)
    ]
    started = time.perf_counter()
    replies = engine.run(requests)
    seconds = time.perf_counter() - started
    return {"calls": count, "prompt_words": words, "failed": sum(not r.ok for r in replies),
            "calls_per_second": round(count / seconds, 1)}  # fmt: skip


def start_judge(config: Path | None) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start the latency judge in its own process; return it and its ready line."""
    command = [sys.executable, str(HERE / "_latency_judge.py"), *(["--config", str(config)] if config else [])]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def markdown(report: dict[str, Any]) -> str:
    j, a = report["judge"], report["args"]
    lines = [
        "# Load test of the reward service (`capbench serve`)",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`.",
        "",
        f"Judge: benchmarks/_latency_judge.py in its own process, {j['base_s'] * 1000:g} ms + "
        f"{j['per_prompt_token_s'] * 1000:g} ms per prompt word + {j['per_output_token_s'] * 1000:g} ms per output "
        f"word, {j['concurrency']} requests at once (more wait), latency × (1 + {j['overload_factor']:g} × excess "
        f"in flight / {j['concurrency']}); the service's openai engine sends at most {a['engine_concurrency']} "
        "at once. "
        f"Service: `capbench.serve.Running`, judge `openai:latency`, answer mode letter, CapRL {a['caprl_samples']} "
        f"questions per caption, a fresh cache per row, batching window {report['batch_window_ms']:g} ms (default). "
        f"Each row: {a['items']} items of capbench-mini (distinct captions) for `{REWARD}`, in requests of "
        f"{a['per_request']} items shared by the clients; then the same requests again (rerun).",
        "",
        "| clients | batches at once | items/s | judge calls/s | judge busy | p50 | p99 | judge calls (expected) "
        "| lost | duplicated | faults | rerun items/s | rerun p50 | rerun p99 | rerun cache hits | rerun judge calls "
        "| rerun same rewards |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        c, r = row["cold"], row["rerun"]
        lines.append(
            f"| {row['clients']} | {row['max_batches']} | {c['items_per_second']:.1f} | "
            f"{c['judge_received'] / c['seconds']:.0f} | {100 * c['judge_busy_share']:.0f}% | "
            f"{c['p50_ms']:.0f} ms | {c['p99_ms']:.0f} ms | "
            f"{c['judge_received']} ({c['judge_expected']}) | {c['lost']} | {c['duplicated']} | {c['fault_count']} | "
            f"{r['items_per_second']:.1f} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | "
            f"{100 * (r['cache_hit_rate'] or 0):.1f}% | {r['judge_received']} | "
            f"{row['rerun_same_rewards']}/{c['items']} |"
        )
    service_s = report["rows"][0]["cold"]["judge_service_ms"] / 1000
    alone = report["judge_alone"]
    before = "; ".join(
        f"{n} clients {b['items_per_second']:g} items/s, p50 {b['p50_ms'] / 1000:.1f} s, p99 {b['p99_ms'] / 1000:.1f} s"
        for n, b in BEFORE.items()
    )
    lines += [
        "",
        f"Before batches overlapped (one batch at a time, the figures published at commit 783f88d on this "
        f"machine): {before}. The rows with 1 batch at once measure that schedule again in the same run. Judge "
        "calls/s: what the service sent the judge; judge busy: the share of the judge's slot-seconds spent "
        f"serving. As modelled, the judge would serve {j['concurrency'] / service_s:.0f} calls/s ({j['concurrency']} "
        f"slots, {1000 * service_s:.0f} ms per CapRL call); capbench's openai engine alone, {a['engine_concurrency']} "
        f"at once, gets {alone['calls_per_second']:g} calls/s from it ({alone['calls']} calls of "
        f"{alone['prompt_words']} words, {alone['failed']} failed): the most the service could send it here. "
        f"Alone, a call takes {1000 * a['engine_concurrency'] / alone['calls_per_second']:.0f} ms of wall time "
        f"against {1000 * service_s:.0f} ms modelled: the rest is the judge server's own HTTP handling.",
        "",
        "Lost: items with no answer; duplicated: items answered more than once; faults: answers not 200, ids not "
        "echoed in order, or a reward null or outside [0, 1]. Judge calls: requests the judge received; expected: "
        "items × CapRL questions, one call per draw, so equal means no judge request was lost or retried "
        "(`judge_same_prompt` in the JSON counts identical prompts: the same question drawn twice with the same "
        "option order, distinct draws by design). Cache hits: share of the rerun's judge requests "
        "answered from the cache (the answers' `usage`). Absolute speeds on a shared 2-core machine are noisy: "
        "clients, service and judge share its cores.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="8,32", help="numbers of concurrent clients, comma-separated")
    parser.add_argument(
        "--max-batches", default=f"1,{ServeConfig().max_batches}", help="batches judged at once, comma-separated"
    )
    parser.add_argument("--items", type=int, default=2000, help="items per sweep point")
    parser.add_argument("--per-request", type=int, default=16, help="items per request")
    parser.add_argument("--caprl-samples", type=int, default=4, help="CapRL questions per caption")
    parser.add_argument("--engine-concurrency", type=int, default=16, help="the service's judge requests at once")
    parser.add_argument("--judge-config", type=Path, help="the latency judge's settings (JSON or YAML)")
    args = parser.parse_args()
    proc, ready = start_judge(args.judge_config)
    try:
        rows = [
            sweep_point(ready, int(n), int(b), args)
            for n in args.clients.split(",")
            for b in args.max_batches.split(",")
        ]
        alone = judge_alone(ready, rows[0]["cold"]["judge_service_ms"], args.engine_concurrency)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.platform()}",
        "command": " ".join(["python benchmarks/serve_load.py", *sys.argv[1:]]),
        "judge": ready["settings"],
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "reward": REWARD,
        "batch_window_ms": ServeConfig().batch_window_ms,
        "before": BEFORE,
        "judge_alone": alone,
        "rows": rows,
    }
    save("serve_load", report, markdown(report))


if __name__ == "__main__":
    main()
