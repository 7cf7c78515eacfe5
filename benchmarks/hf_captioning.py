"""Captions per second of the hf engine, on a randomly initialised Qwen2.5-VL.

Usage: python benchmarks/hf_captioning.py [--size tiny|3b] [--batch-size 8] [--max-tokens 128]
Writes benchmarks/results/hf_captioning_<size>_<device>.json and .md.

The model is built from a config (tests/tiny_models.py), with random weights: "3b" has
Qwen2.5-VL-3B-Instruct's exact shape (3.75B parameters, bfloat16), meant for a GPU; "tiny" runs
anywhere. Random weights rarely write an end-of-turn token, so nearly every caption runs to
``--max-tokens``: the figure is the engine's throughput at that length, not a real model's
captioning speed (a real model stops earlier). The images are capbench-mini's 18 photographs,
at the processor's default resolution limits. The model is loaded and warmed up on one batch
before timing; the time covers image loading, preprocessing, generation and decoding.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _report import save  # noqa: E402
from tiny_models import build_tiny_qwen25vl  # noqa: E402

import capbench  # noqa: E402
from capbench.captioning import CaptionConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "3b"], default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    samples = capbench.load_benchmark("mini", with_images=True).samples
    config = CaptionConfig(max_tokens=args.max_tokens)
    requests = [config.request(s) for s in samples]
    with tempfile.TemporaryDirectory() as folder:
        built = time.perf_counter()
        model = build_tiny_qwen25vl(Path(folder) / f"qwen2.5-vl-{args.size}-random", size=args.size)
        built = time.perf_counter() - built
        engine = capbench.build_engine(f"hf:{model}", device=args.device, batch_size=args.batch_size)
        engine.run(requests[: args.batch_size])  # load the model and warm up
        start = time.perf_counter()
        responses = engine.run(requests)
        seconds = time.perf_counter() - start
    failed = [s.id for s, r in zip(samples, responses, strict=True) if not r.ok]
    tokens = sum(r.completion_tokens for r in responses)
    report = {
        "size": args.size,
        "device": engine.resolved()[0],
        "batch_size": args.batch_size,
        "max_tokens": args.max_tokens,
        "captions": len(requests),
        "failed": failed,
        "seconds": round(seconds, 2),
        "captions_per_second": round(len(requests) / seconds, 3),
        "generated_tokens_per_second": round(tokens / seconds, 1),
        "mean_prompt_tokens": round(sum(r.prompt_tokens for r in responses) / len(responses), 1),
        "build_seconds": round(built, 2),
    }
    markdown = "\n".join(
        [
            f"# hf engine captioning, random Qwen2.5-VL ({args.size} shape) on {report['device']}",
            "",
            "| captions | batch | max tokens | wall s | captions/s | generated tok/s | prompt tok/caption |",
            "|---|---|---|---|---|---|---|",
            f"| {len(requests)} | {args.batch_size} | {args.max_tokens} | {seconds:.2f} | "
            f"{report['captions_per_second']:.3f} | {report['generated_tokens_per_second']:.1f} | "
            f"{report['mean_prompt_tokens']:.0f} |",
            "",
            "Random weights: nearly every caption runs to max tokens (see the script's docstring).",
        ]
    )
    save(f"hf_captioning_{args.size}_{report['device'].split(':')[0]}", report, markdown)


if __name__ == "__main__":
    main()
