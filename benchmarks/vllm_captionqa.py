"""CaptionQA judging on the vllm engine: capbench batched, one request at a time, and raw vLLM.

Usage: python benchmarks/vllm_captionqa.py [--captions detailed] [--model FOLDER]
Writes benchmarks/results/vllm_captionqa.json and benchmarks/results/vllm_captionqa.md.

The judge is SmolLM2-135M-Instruct converted from the bundled GGUF, on vLLM's CPU build (or a
GPU where vLLM has one). The work is CaptionQA's protocol (letter answers, at most 4 tokens,
temperature 0) over every question of capbench-mini for one example caption set. Three ways:

- **capbench, batched**: ``capbench.api.run`` with the captionqa metric (built by
  ``capbench.build_metrics``), every sample in one batch, so the engine gets every question in
  one ``LLM.chat`` call (no disk cache: an in-memory one). The loaded engine is handed to the
  run by name (``_instant.prebuilt``), so no run loads the model again.
- **capbench, one at a time**: the same run, but the engine is handed one request per call, as
  lmms-eval's CaptionQA task sends them.
- **raw vLLM**: the same chat prompts and sampling settings sent straight to ``LLM.chat`` in one
  call, with nothing of capbench around it (no parsing, scoring, cache or result files).

Raw and batched take turns (``--rounds``, default 2) and each figure is the median of its runs,
so drift over the run (warm-up, other load on the machine) lands on both alike; every run's time
is in the JSON. One request per call runs once, last (it is only compared with batched).

vLLM's prefix cache is cleared before each way, so none starts with another's work in it. The
model is loaded once, before timing, and one warm-up call is made.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _instant import prebuilt  # noqa: E402
from _report import save  # noqa: E402

import capbench  # noqa: E402
from capbench.api import run  # noqa: E402
from capbench.engines.base import EngineWrapper, OnResult, Request, Response  # noqa: E402
from capbench.engines.models import bundled_checkpoint  # noqa: E402
from capbench.metrics.captionqa import presented_options  # noqa: E402
from capbench.records import read_caption_file  # noqa: E402

WAYS = {
    "raw_vllm_s": "raw vLLM `LLM.chat`, one call",
    "capbench_batched_s": "capbench, batched",
    "capbench_one_at_a_time_s": "capbench, one request per call",
}
CPU_OPTIONS = {"dtype": "float32", "gpu_memory_utilization": 0.2, "max_model_len": 2048, "enforce_eager": True}
#: CaptionQA in letter mode (the protocol's), no disk cache: each run judges every question.
SETTINGS: dict[str, Any] = {"metrics": ["captionqa"], "answer_mode": "letter", "cache": False}


class OneAtATime(EngineWrapper):
    """Hand the wrapped engine one request per call, as a per-request harness does."""

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        out = []
        for index, request in enumerate(requests):
            out.append(self.engine.run([request])[0])
            if on_result is not None:
                on_result(index, out[-1])
        return out


def _capbench(judge: str, captions: Path, batch_size: int) -> tuple[float, dict[str, Any]]:
    """Score one caption file of capbench-mini with ``judge`` (a name), as `capbench eval` does; time the run."""
    with tempfile.TemporaryDirectory() as results:
        config = capbench.EvalConfig(
            captions=[captions], judge=judge, batch_size=batch_size, results_dir=results, **SETTINGS
        )
        plan = capbench.prepare(config)
        start = time.perf_counter()
        (result,) = run(plan).values()
        seconds = time.perf_counter() - start
    return seconds, result.summary["captionqa"]


def _raw(engine: Any, requests: Sequence[Request]) -> tuple[float, int]:
    from vllm import SamplingParams

    conversations = [[{"role": m.role, "content": m.joined_text()} for m in r.messages] for r in requests]
    sampling = requests[0].sampling
    params = SamplingParams(
        n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, max_tokens=sampling.max_tokens,
        seed=sampling.seed,
    )  # fmt: skip
    start = time.perf_counter()
    outputs = engine.llm.chat(conversations, params, use_tqdm=False)
    return time.perf_counter() - start, len(outputs)


def _device() -> str:
    """'cpu' on vLLM's CPU build or a machine without CUDA, else the GPU's name."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", default="detailed", help="capbench-mini example caption set")
    parser.add_argument("--rounds", type=int, default=2, help="turns of raw and batched runs (median counts)")
    parser.add_argument("--model", type=Path, help="transformers folder of the judge [default: SmolLM2 from GGUF]")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    folder = args.model or bundled_checkpoint("smollm2")
    benchmark = capbench.load_benchmark("mini")
    path = benchmark.example_captions[args.captions]
    captions = read_caption_file(path)
    config = capbench.EvalConfig(judge=f"vllm:{folder}", judge_options=CPU_OPTIONS, **SETTINGS)
    engine = capbench.build_judges(config)["text"].engine  # the vllm engine itself, for the raw calls
    (metric,), _ = capbench.build_metrics(config)
    batched, one_at_a_time = prebuilt(engine, "batched"), prebuilt(OneAtATime(engine), "one-at-a-time")
    requests = [
        metric.build_request(captions.captions[s.id], q, presented_options(q, 0, s.id)[0])
        for s in benchmark.samples
        for q in s.questions
    ]
    engine.run(requests[:8])  # load and warm up
    runs: dict[str, list[float]] = {"raw_vllm_s": [], "capbench_batched_s": [], "capbench_one_at_a_time_s": []}
    # Raw and batched take turns, ``--rounds`` times: drift over the run (warm-up, other load on the
    # machine) then lands on both ways alike, and the spread of each way's runs is its noise.
    for _ in range(args.rounds):
        engine.llm.reset_prefix_cache()
        seconds, answered = _raw(engine, requests)
        runs["raw_vllm_s"].append(seconds)
        engine.llm.reset_prefix_cache()
        seconds, summary = _capbench(batched, path, len(benchmark.samples))
        runs["capbench_batched_s"].append(seconds)
    engine.llm.reset_prefix_cache()
    seconds, single = _capbench(one_at_a_time, path, 1)
    runs["capbench_one_at_a_time_s"].append(seconds)
    figures = {key: statistics.median(values) for key, values in runs.items()}
    assert answered == len(requests) == summary["questions"]
    n = len(benchmark.samples)
    per_minute = {k.removesuffix("_s"): round(60 * n / v, 2) for k, v in figures.items()}
    report = {
        "requests": len(requests),
        "captions": n,
        "caption_set": args.captions,
        "captions_per_minute": per_minute,
        "runs_s": {key: [round(v, 2) for v in values] for key, values in runs.items()},
        "run_spread": spread(runs),
        "judge": engine.fingerprint(),
        "device": _device(),
        **{k: round(v, 2) for k, v in figures.items()},
        "batched_over_raw": round(figures["capbench_batched_s"] / figures["raw_vllm_s"], 3),
        "one_at_a_time_over_batched": round(figures["capbench_one_at_a_time_s"] / figures["capbench_batched_s"], 2),
        "same_scores": summary["score"] == single["score"],
        "score": summary["score"],
    }
    save("vllm_captionqa", report, markdown(report))


def spread(runs: dict[str, list[float]]) -> float:
    """The largest ratio of slowest to fastest run of one way (1.0 when no way ran twice)."""
    return round(max((max(v) / min(v) for v in runs.values() if len(v) > 1), default=1.0), 3)


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table, with each way's runs and their spread."""
    runs = report["runs_s"]
    raw = report["raw_vllm_s"]
    return "\n".join(
        [
            f"# CaptionQA judging of capbench-mini on the vllm engine ({report['requests']} questions, "
            f"`{report['caption_set']}` captions, {report['judge']['model']}, {report['device']})",
            "",
            "| way | wall s (median) | runs, s | captions per minute | time vs raw vLLM |",
            "|---|---|---|---|---|",
            *(
                f"| {label} | {report[key]:.2f} | {', '.join(f'{v:.2f}' for v in runs[key])} | "
                f"{report['captions_per_minute'][key.removesuffix('_s')]:.2f} | {report[key] / raw:.2f} |"
                for key, label in WAYS.items()
            ),
            "",
            "Raw and batched took turns. The same way's runs differ by up to "
            f"{100 * (report['run_spread'] - 1):.0f}% (slowest over fastest): a ratio between ways inside that "
            "spread is the engine's noise on this machine, not capbench's cost. "
            f"Batched is {report['one_at_a_time_over_batched']:.1f}x faster than one at a time; "
            f"the scores are {'identical' if report['same_scores'] else 'DIFFERENT'} ({report['score']:.1f}).",
        ]
    )


if __name__ == "__main__":
    main()
