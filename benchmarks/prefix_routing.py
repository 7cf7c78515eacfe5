"""How much of each metric's prompt tokens a judge fleet's prefix caches can reuse, with and without prefix routing.

Usage: python benchmarks/prefix_routing.py [--servers 3] [--image-tokens 256] [--tokenizer GGUF]
Writes benchmarks/results/prefix_routing.json and benchmarks/results/prefix_routing.md.

Each metric scores capbench-mini's three example caption sets in one ``capbench`` evaluation
(``capbench.evaluate``: 54 captions, 18 images) with the ``openai`` engine as its text and vision
judge, against loopback judges (``_latency_judge.LatencyJudge``: JSON answers for the fact stages,
a letter otherwise). Each judge server keeps its own prefix cache and counts, over the prompts it
receives, the tokens in 16-token blocks whose whole prefix it had already received: vLLM's
automatic prefix caching with a cache that never evicts (``judge_cost.prefix_reuse``'s rule).
Prompts are rendered with SmolLM2's chat template and tokenizer (``judge_cost.Tokenizer``); an
image counts as ``--image-tokens`` tokens (256: Qwen2.5-VL at 448x448) identified by its content
(its ``uuid`` when the engine sends one, else a hash of its data URL: the same tokens either way).

Three fleets per metric, each with fresh servers:

- ``1 server``: every request on one server, the most any fleet can reuse;
- ``N servers, no routing``: before: calls go to the least busy server (``prefix_routing=false``);
- ``N servers, prefix routing``: after: requests that share a prefix key go to the key's server.

With an unbounded cache the count depends only on which server each request reaches, not on the
order it arrives in. What it leaves out: requests sharing a prefix that a server prefills at the
same moment each compute it (vLLM reuses only blocks already computed), a cache that evicts, and
time. The engine's per-server counts of requests sent to their key's first choice (``affine``)
and elsewhere (``spilled``) come from the run's manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _latency_judge import LatencyJudge  # noqa: E402
from _report import save  # noqa: E402
from judge_cost import BLOCK, Tokenizer  # noqa: E402

import capbench  # noqa: E402

METRICS = ("captionqa", "caprl", "dcscore", "balcap", "arena")
IMAGE = "\x00image\x00"


class CachingJudge(LatencyJudge):
    """A loopback judge that keeps a prefix cache of its own and counts what it could reuse."""

    def __init__(self, settings: Mapping[str, Any], tok: Tokenizer, image_tokens: int, lock: threading.Lock) -> None:
        super().__init__(settings)
        self.tok, self.image_tokens, self.tok_lock = tok, image_tokens, lock
        self.blocks: set[bytes] = set()
        self.reused = self.total = self.requests = 0

    def reply(self, messages: list[dict[str, Any]], schema: Mapping[str, Any] | None = None) -> tuple[str, float]:
        tokens = self.prompt(messages)
        with self.lock:
            self.requests += 1
            self.total += len(tokens)
            chain, hit = b"", True
            for start in range(0, len(tokens) - len(tokens) % BLOCK, BLOCK):
                chain = hashlib.blake2b(chain + repr(tokens[start : start + BLOCK]).encode(), digest_size=16).digest()
                if hit and chain in self.blocks:
                    self.reused += BLOCK
                else:
                    hit = False
                    self.blocks.add(chain)
        return super().reply(messages, schema)

    def prompt(self, messages: list[dict[str, Any]]) -> list[Any]:
        """The prompt's tokens: the chat template and tokenizer, each image as ``image_tokens`` of its own."""
        chat, images = [], []
        for message in messages:
            content = message["content"]
            if isinstance(content, str):
                chat.append((message["role"], content))
                continue
            text = ""
            for part in content:
                if part["type"] == "text":
                    text += part["text"]
                else:
                    identity = part.get("uuid") or hashlib.sha256(part["image_url"]["url"].encode()).hexdigest()
                    images.append(identity)
                    text += IMAGE
            chat.append((message["role"], text))
        formatted = self.tok.formatter(messages=[{"role": r, "content": t} for r, t in chat]).prompt
        tokens: list[Any] = []
        with self.tok_lock:
            for index, piece in enumerate(formatted.split(IMAGE)):
                if index:
                    tokens += [("image", images[index - 1], i) for i in range(self.image_tokens)]
                tokens += self.tok.llm.tokenize(piece.encode("utf-8"), add_bos=index == 0, special=True)
        return tokens


def run_fleet(metric: str, servers: int, routing: bool, tok: Tokenizer, image_tokens: int) -> dict[str, Any]:
    """Score the example sets with ``metric`` against a fresh fleet; what each server could reuse."""
    settings = {"base_s": 0.002, "per_prompt_token_s": 0.0, "per_output_token_s": 0.0, "concurrency": 64,
                "schema_answers": True}  # fmt: skip
    lock = threading.Lock()
    fleet = [CachingJudge(settings, tok, image_tokens, lock) for _ in range(servers)]
    for judge in fleet:
        judge.__enter__()
    try:
        options = {
            "base_url": ",".join(j.base_url for j in fleet),
            "concurrency": 8,
            "max_retries": 0,
            "prefix_routing": routing,
        }
        with tempfile.TemporaryDirectory() as results:
            start = time.perf_counter()
            evaluation = capbench.evaluate(
                benchmark="mini",
                example_captions=True,
                metrics=[metric],
                judge="openai:latency",
                judge_options=options,
                vision_judge="openai:latency",
                vision_judge_options=options,
                answer_mode="letter",
                cache=False,
                results_dir=results,
            )
            seconds = time.perf_counter() - start
            routed = _routed(Path(results))
        failed = sum(sum(r.unscored.values()) for r in evaluation.sets.values())
    finally:
        for judge in fleet:
            judge.__exit__(None, None, None)
    total, reused = sum(j.total for j in fleet), sum(j.reused for j in fleet)
    return {
        "servers": servers,
        "routing": routing,
        "requests": sum(j.requests for j in fleet),
        "requests_per_server": [j.requests for j in fleet],
        "prompt_tokens": total,
        "reused_tokens": reused,
        "reusable_share": round(reused / total, 4) if total else 0.0,
        "failed": failed,
        "affine": routed["affine"],
        "spilled": routed["spilled"],
        "seconds": round(seconds, 2),
    }


def _routed(results: Path) -> dict[str, int]:
    """Requests the engine sent to their key's first choice, and elsewhere, from every manifest's sessions."""
    out = {"affine": 0, "spilled": 0}
    for manifest in results.rglob("manifest.json"):
        for session in json.loads(manifest.read_text()).get("sessions", []):
            for per_url in (session.get("servers") or {}).values():
                for figures in per_url.values():
                    for key in out:
                        out[key] += int(figures.get(key) or 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--image-tokens", type=int, default=256)
    parser.add_argument("--tokenizer", help="a GGUF file whose vocabulary and chat template count tokens")
    parser.add_argument("--metrics", default=",".join(METRICS))
    args = parser.parse_args()
    tok = Tokenizer(args.tokenizer)
    rows = []
    for metric in args.metrics.split(","):
        fleets = [(1, True), (args.servers, False), (args.servers, True)]
        row = {"metric": metric, "fleets": [run_fleet(metric, n, r, tok, args.image_tokens) for n, r in fleets]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"servers": args.servers, "image_tokens": args.image_tokens, "block": BLOCK, "rows": rows}
    n = args.servers
    lines = [
        f"capbench-mini's 3 example caption sets (54 captions, 18 images) in one evaluation per metric, the `openai` "
        f"engine over loopback judges; share of prompt tokens in {BLOCK}-token blocks a server had already received "
        f"with their whole prefix (an unbounded prefix cache per server); SmolLM2 tokens, an image "
        f"{args.image_tokens}.",
        "",
        f"| metric | requests | prompt tokens | 1 server | {n} servers, no routing (before) "
        f"| {n} servers, prefix routing (after) | requests spilled |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        one, before, after = row["fleets"]
        lines.append(
            f"| {row['metric']} | {after['requests']} | {after['prompt_tokens']} | {100 * one['reusable_share']:.0f}% "
            f"| {100 * before['reusable_share']:.0f}% | {100 * after['reusable_share']:.0f}% "
            f"| {after['spilled']} of {after['affine'] + after['spilled']} |"
        )
    lines += [
        "",
        "Requests spilled: sent off their key's first-choice server because it held its `concurrency` (8) calls.",
        "Not measured here: time (a served model's speedup from these shares), concurrent prefills of one prefix.",
    ]
    save("prefix_routing", report, "\n".join(lines))


if __name__ == "__main__":
    main()
