"""Prefix routing against real vLLM servers (vLLM's CPU build): prefix-cache hits and wall time, routing off and on.

Usage: python benchmarks/prefix_routing_vllm.py [--servers 2] [--rounds 2] [--captions detailed] [--model FOLDER]
Writes benchmarks/results/prefix_routing_vllm.json and benchmarks/results/prefix_routing_vllm.md.

``--servers`` ``vllm serve`` processes of SmolLM2-135M-Instruct (converted from the bundled GGUF,
float32, eager), each pinned to a CPU core of its own (``VLLM_CPU_OMP_THREADS_BIND``), serve as one
judge fleet for the ``openai`` engine (``concurrency`` 8 per server). The work is CaptionQA (letter
answers) on capbench-mini for one example caption set, through ``capbench.evaluate`` with no disk
cache, once with ``prefix_routing=false`` (before: the least busy server) and once with it on
(after), the two taking turns ``--rounds`` times, the first mode alternating between rounds.
Before each run every server's prefix cache is emptied (``POST /reset_prefix_cache``, a
development endpoint: ``VLLM_SERVER_DEV_MODE=1``). Measured per run: the wall time, and from each
server's Prometheus counters (``vllm:prefix_cache_queries`` and ``vllm:prefix_cache_hits``, tokens)
the share of prompt tokens its prefix cache answered. Every run is kept in the JSON; the figures
are medians, and the spread says whether the time difference can be told from the noise.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import save  # noqa: E402

import capbench  # noqa: E402
from capbench.engines.models import bundled_checkpoint  # noqa: E402

COUNTER = re.compile(r"^(vllm:prefix_cache_(?:queries|hits))_total\{[^}]*\}\s+([0-9.e+]+)$", re.MULTILINE)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, core: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """One ``vllm serve`` on 127.0.0.1, pinned to ``core``; returns it and its base URL once it answers."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": str(core), "VLLM_SERVER_DEV_MODE": "1",
           "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    # The API server's own module: `vllm serve` asks for the distribution "vllm", which vLLM's CPU build is not.
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", "judge", "--dtype", "float32", "--max-model-len", "2048",
            "--enforce-eager", "--enable-prefix-caching"]  # fmt: skip
    process = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(2)
    process.kill()
    raise RuntimeError(f"vllm serve did not answer in 600 s; see {log}")


def counters(url: str) -> dict[str, float]:
    """The server's prefix-cache counters (tokens queried, tokens found), summed over its engines."""
    out = {"vllm:prefix_cache_queries": 0.0, "vllm:prefix_cache_hits": 0.0}
    for name, value in COUNTER.findall(httpx.get(f"{url}/metrics", timeout=10).text):
        out[name] += float(value)
    return out


def one_run(urls: list[str], routing: bool, captions: Path) -> dict[str, Any]:
    for url in urls:
        httpx.post(f"{url}/reset_prefix_cache", timeout=30).raise_for_status()
    before = [counters(u) for u in urls]
    options = {"base_url": ",".join(f"{u}/v1" for u in urls), "concurrency": 8, "prefix_routing": routing,
               "max_retries": 2}  # fmt: skip
    with tempfile.TemporaryDirectory() as results:
        start = time.perf_counter()
        evaluation = capbench.evaluate(
            benchmark="mini", captions=[captions], metrics=["captionqa"], judge="openai:judge",
            judge_options=options, answer_mode="letter", cache=False, results_dir=results,
        )  # fmt: skip
        seconds = time.perf_counter() - start
    after = [counters(u) for u in urls]
    moved = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
    queries = sum(m["vllm:prefix_cache_queries"] for m in moved)
    hits = sum(m["vllm:prefix_cache_hits"] for m in moved)
    [result] = evaluation.sets.values()
    return {
        "routing": routing,
        "seconds": round(seconds, 2),
        "prompt_tokens_queried": int(queries),
        "prompt_tokens_hit": int(hits),
        "hit_share": round(hits / queries, 4) if queries else None,
        "score": result.summary["captionqa"]["score"],
        "unscored_samples": sum(result.unscored.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--captions", default="detailed", help="capbench-mini example caption set")
    parser.add_argument("--model", type=Path, help="transformers folder of the judge [default: SmolLM2 from GGUF]")
    args = parser.parse_args()
    folder = args.model or bundled_checkpoint("smollm2")
    captions = capbench.load_benchmark("mini").example_captions[args.captions]
    logs = Path(tempfile.mkdtemp(prefix="vllm-fleet-"))
    cores = os.cpu_count() or 1
    servers = [start_server(folder, i % cores, logs / f"server-{i}.log") for i in range(args.servers)]
    runs: list[dict[str, Any]] = []
    try:
        urls = [url for _, url in servers]
        one_run(urls, True, captions)  # warm-up, not kept
        for round_ in range(args.rounds):
            for routing in (False, True) if round_ % 2 == 0 else (True, False):
                runs.append(one_run(urls, routing, captions))
                print(runs[-1], flush=True)
    finally:
        for process, _ in servers:
            process.terminate()
        for process, _ in servers:
            process.wait(60)
    by_mode = {mode: [r for r in runs if r["routing"] is mode] for mode in (False, True)}
    median = {mode: statistics.median(r["seconds"] for r in rows) for mode, rows in by_mode.items()}
    spread = {mode: round(max(r["seconds"] for r in rows) / min(r["seconds"] for r in rows) - 1, 3)
              for mode, rows in by_mode.items()}  # fmt: skip
    hits = {mode: statistics.median(r["hit_share"] or 0.0 for r in rows) for mode, rows in by_mode.items()}
    report = {
        "servers": args.servers,
        "captions": args.captions,
        "model": str(folder.name),
        "runs": runs,
        "median_s": {"no_routing": median[False], "routing": median[True]},
        "run_spread": {"no_routing": spread[False], "routing": spread[True]},
        "hit_share": {"no_routing": hits[False], "routing": hits[True]},
        "time_routing_over_no_routing": round(median[True] / median[False], 3),
        "same_scores": len({r["score"] for r in runs}) == 1,
    }
    resolved = abs(1 - report["time_routing_over_no_routing"]) > max(spread.values())
    lines = [
        f"CaptionQA (letter answers) on capbench-mini's `{args.captions}` captions through `capbench.evaluate`, "
        f"the `openai` engine over {args.servers} `vllm serve` processes of vLLM's CPU build (SmolLM2-135M, float32, "
        f"one core each, prefix caching on, emptied before each run), {args.rounds} round(s) per mode, taking turns.",
        "",
        "| mode | median wall | spread of its runs | prompt tokens from the prefix cache (vLLM's counters) |",
        "|---|---|---|---|",
        f"| no routing (before) | {median[False]:.1f} s | {100 * spread[False]:.0f}% | {100 * hits[False]:.0f}% |",
        f"| prefix routing (after) | {median[True]:.1f} s | {100 * spread[True]:.0f}% | {100 * hits[True]:.0f}% |",
        "",
        f"Time with routing / without: {report['time_routing_over_no_routing']:.3f}; "
        + ("outside the spread of either mode's runs." if resolved else "inside the spread of the runs: not resolved "
           "from the noise.")
        + f" Same scores in every run: {'yes' if report['same_scores'] else 'no'}.",
    ]  # fmt: skip
    report["resolved_from_noise"] = resolved
    save("prefix_routing_vllm", report, "\n".join(lines))


if __name__ == "__main__":
    main()
