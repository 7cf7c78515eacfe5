"""The hf engine against raw ``model.generate`` on identical inputs, on a random Qwen2.5-VL.

Usage: python benchmarks/hf_vs_raw.py [--size tiny|3b] [--rounds N] [--max-tokens 64] [--label TEXT]
Writes benchmarks/results/hf_vs_raw_<size>_<device>[_<label>].json and .md.

On a lent GPU machine (about 4 minutes with the default 3 rounds, machine start apart), where
the repository is not installed and capbench-mini's images must come along already converted
(copy ``$CAPBENCH_HOME/images/mini`` to the ignored ``build/capbench-home/images/mini`` here and
carry ``build/capbench-home``)::

    CAPBENCH_HOME=$PWD/build/capbench-home PYTHONPATH=$PWD /opt/torch/.venv/bin/python \
        benchmarks/hf_vs_raw.py --size 3b && cp benchmarks/results/hf_vs_raw_3b_cuda.* "$OUT"/

Three ways caption the same requests with the same weights (tests/tiny_models.py: "tiny" on any
machine, float32 on the CPU; "3b" with Qwen2.5-VL-3B-Instruct's exact shape, bfloat16, built on
the GPU): **capbench**, ``HFEngine.run`` on capbench-mini's captioning requests as it runs on this
machine (with its worker thread encoding the next batch during generation where a core is free
for it); **capbench in turn**, the same with the worker turned off (everything on one thread, as
before issue 19); and **raw**, what a competent user writes by hand: load each distinct image
once, render the prompts through the processor's chat template, call the processor on the batch
(left-padded), ``model.generate``, ``batch_decode`` of the new tokens. Each is timed from the
requests to the decoded texts (image loading, the chat template, preprocessing, generation,
decoding); model loading is not.

Identical inputs: the same images and prompt texts, greedy, no repetition penalty (the
checkpoint's generation config asks for one; raw turns it off, as the engine does), and every
row forced to ``--max-tokens`` new tokens (``min_new_tokens``, patched into the engine's
generation config here only), so both generate exactly as many tokens. The requests are put in
prompt-length order beforehand, so the engine's own sort keeps them there and both ways form
the same batches, with the same padding: the ratio is capbench's own path against the loop, its
overhead and the CPU work it overlaps with generation, not its batching. In float32 the two
ways' texts must then be equal, which the report checks (``same_texts``, in the last round).

Batch 8 runs capbench-mini's 18 requests, batch 32 runs 64 (the 18 images reused). Each round
runs every way, rotating which goes first; each figure is the median of the rounds, and every
round is kept in the JSON. One short batch warms up first. On the CPU each run takes well under
a second, so the default there is 8 rounds, and 3 on a GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _report import save  # noqa: E402
from tiny_models import build_tiny_qwen25vl  # noqa: E402

import capbench  # noqa: E402
from capbench.captioning import CaptionConfig  # noqa: E402
from capbench.engines import hf  # noqa: E402
from capbench.engines.base import ImagePart, Request  # noqa: E402
from capbench.engines.hf_checkpoint import load_processor  # noqa: E402

#: (batch size, requests) pairs, as issue 19 measured them.
CONFIGS = ((8, 18), (32, 64))
#: The engine's own test of whether a core is free for its worker thread (replaced to turn the worker off).
SPARE_CORE = hf._spare_core


class Raw:
    """The hand-written loop: processor on the batch, ``model.generate``, ``batch_decode``."""

    def __init__(self, folder: Path, device: str, dtype: str) -> None:
        import torch
        from transformers import AutoModelForImageTextToText

        self.processor = load_processor(str(folder))  # AutoProcessor, or its image-only twin without torchvision
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=getattr(torch, dtype)).to(device).eval()

    def run(self, requests: Sequence[Request], batch_size: int) -> list[str]:
        """Caption the requests, ``batch_size`` at a time, in order; return the texts."""
        import torch

        from capbench.engines.images import load_rgb

        paths = {p.image.path for r in requests for m in r.messages for p in m.parts if isinstance(p, ImagePart)}
        pictures = {path: load_rgb(path) for path in paths}
        max_tokens = requests[0].sampling.max_tokens
        texts: list[str] = []
        for start in range(0, len(requests), batch_size):
            batch = requests[start : start + batch_size]
            chats = [[_chat(m) for m in r.messages] for r in batch]
            prompts = self.processor.apply_chat_template(chats, tokenize=False, add_generation_prompt=True)
            images = [
                pictures[p.image.path] for r in batch for m in r.messages for p in m.parts if isinstance(p, ImagePart)
            ]
            inputs = self.processor(text=prompts, images=images, padding=True, return_tensors="pt").to(
                self.model.device
            )
            with torch.inference_mode():
                output = self.model.generate(
                    **inputs,
                    do_sample=False,
                    repetition_penalty=1.0,
                    max_new_tokens=max_tokens,
                    min_new_tokens=max_tokens,
                )
            new = output[:, inputs["input_ids"].shape[1] :]
            assert new.shape[1] == max_tokens, new.shape
            texts += self.processor.batch_decode(new, skip_special_tokens=True)
        return [t.strip() for t in texts]


def _chat(message: Any) -> dict[str, Any]:
    """A capbench message in transformers' chat format."""
    parts = [{"type": "image"} if isinstance(p, ImagePart) else {"type": "text", "text": p.text} for p in message.parts]
    return {"role": message.role, "content": parts}


def force_length() -> None:
    """Make the engine generate exactly ``max_tokens`` tokens per row, as raw does (this script only)."""
    make = hf._generation_config

    def forced(*args: Any, **kwargs: Any) -> Any:
        config = make(*args, **kwargs)
        config.min_new_tokens = config.max_new_tokens
        return config

    hf._generation_config = forced


def by_length(requests: list[Request], raw: Raw) -> list[Request]:
    """Return the requests in order of prompt tokens (stable), so both ways batch them alike."""
    from capbench.engines.images import load_rgb

    def tokens(request: Request) -> int:
        prompt = raw.processor.apply_chat_template(
            [_chat(m) for m in request.messages], add_generation_prompt=True, tokenize=False
        )
        images = [load_rgb(p.image.path) for m in request.messages for p in m.parts if isinstance(p, ImagePart)]
        return int(raw.processor(text=[prompt], images=images, return_tensors="pt")["input_ids"].shape[1])

    lengths = {id(r): tokens(r) for r in requests}
    return sorted(requests, key=lambda r: lengths[id(r)])


def timed(call: Callable[[], list[str]]) -> tuple[float, list[str]]:
    """Run ``call`` and return (seconds, its texts)."""
    start = time.perf_counter()
    texts = call()
    return time.perf_counter() - start, texts


def measure(engine: hf.HFEngine, raw: Raw, requests: list[Request], batch: int, rounds: int) -> dict[str, Any]:
    """Run every way ``rounds`` times, rotating which goes first; return medians and every round."""
    max_tokens = requests[0].sampling.max_tokens

    def capbench(worker: bool) -> list[str]:
        hf._spare_core = (lambda device: False) if not worker else SPARE_CORE
        try:
            return [r.text for r in _checked(engine.run(requests), max_tokens)]
        finally:
            hf._spare_core = SPARE_CORE

    ways: dict[str, Callable[[], list[str]]] = {
        "capbench": lambda: capbench(worker=True),
        "capbench_in_turn": lambda: capbench(worker=False),
        "raw": lambda: raw.run(requests, batch),
    }
    names = list(ways)
    kept, texts = [], {}
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        row: dict[str, Any] = {"first": order[0]}
        for way in order:
            seconds, texts[way] = timed(ways[way])
            row[f"{way}_s"] = round(seconds, 3)
        kept.append(row)
    tokens = len(requests) * max_tokens
    median = {way: statistics.median(r[f"{way}_s"] for r in kept) for way in ways}
    return {
        "batch_size": batch,
        "requests": len(requests),
        "new_tokens_per_request": max_tokens,
        **{f"{way}_tok_s": round(tokens / median[way], 1) for way in ways},
        "capbench_over_raw": round(median["raw"] / median["capbench"], 3),
        "in_turn_over_raw": round(median["raw"] / median["capbench_in_turn"], 3),
        "round_ratios": [round(r["raw_s"] / r["capbench_s"], 3) for r in kept],
        "same_texts": sum(a == b for a, b in zip(texts["capbench"], texts["raw"], strict=True)),
        "rounds": kept,
    }


def _checked(responses: Sequence[Any], max_tokens: int) -> Sequence[Any]:
    """Fail loudly if a request failed or did not run to the forced length."""
    for response in responses:
        assert response.ok and response.completion_tokens == max_tokens, response
    return responses


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table with every round."""
    rows = [
        f"| {c['batch_size']} | {c['requests']} | {c['capbench_tok_s']:.1f} | {c['capbench_in_turn_tok_s']:.1f} | "
        f"{c['raw_tok_s']:.1f} | **{c['capbench_over_raw']:.3f}** | {c['in_turn_over_raw']:.3f} | "
        f"{', '.join(f'{r:.3f}' for r in c['round_ratios'])} | {c['same_texts']}/{c['requests']} |"
        for c in report["configs"]
    ]
    return "\n".join(
        [
            f"# hf engine vs raw `model.generate`, random Qwen2.5-VL ({report['size']} shape, {report['dtype']}) "
            f"on {report['device_name']}{' (' + report['label'] + ')' if report['label'] else ''}",
            "",
            f"{report['new_tokens_per_request']} new tokens forced on every row, greedy, identical inputs and batches; "
            f"{report['rounds']} rounds rotating which way goes first; tok/s from the median round. "
            f"capbench as it runs here (worker thread: {'yes' if report['worker'] else 'no'}) and with none, in turn.",
            "",
            "| batch | requests | capbench tok/s | in turn tok/s | raw `generate` tok/s | capbench / raw "
            "| in turn / raw | capbench / raw per round | same texts |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Machine: {report['machine']}. {report['note']}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "3b"], default="tiny")
    parser.add_argument("--rounds", type=int, help="rounds of every way, the median counts [8 tiny, 3 3b]")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens forced on every row")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--label", default="", help="appended to the result file names (e.g. 'before')")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 8 if args.size == "tiny" else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    import torch
    import transformers

    if args.size == "tiny":
        torch.set_num_threads(1)  # tiny matmuls: more threads only add contention on a small CPU
    force_length()
    samples = capbench.load_benchmark("mini", with_images=True).samples
    captioning, warm = CaptionConfig(max_tokens=args.max_tokens), CaptionConfig(max_tokens=4)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_qwen25vl(Path(folder) / f"qwen2.5-vl-{args.size}-random", size=args.size)
        engine = hf.HFEngine(str(model), device=args.device)
        device, dtype = engine.resolved()
        raw = Raw(model, device, dtype)
        configs = []
        for batch, count in CONFIGS:
            requests = by_length([captioning.request(samples[i % len(samples)]) for i in range(count)], raw)
            engine.batch_size = batch
            warmup = [warm.request(samples[i % len(samples)]) for i in range(batch)]
            engine.run(warmup)
            raw.run(warmup, batch)
            configs.append(measure(engine, raw, requests, batch, args.rounds))
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} thread)"
    report = {
        "size": args.size,
        "device": device,
        "device_name": name,
        "dtype": dtype,
        "label": args.label,
        "rounds": args.rounds,
        "worker": bool(SPARE_CORE(engine._model.device)),
        "new_tokens_per_request": args.max_tokens,
        "configs": configs,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "total_seconds": round(time.perf_counter() - started, 1),
        "note": "On a CPU, absolute times move with other work on the machine; the ratios between ways, "
        "round by round, is the figure to read."
        if device == "cpu"
        else "",
    }
    suffix = f"_{args.label}" if args.label else ""
    save(f"hf_vs_raw_{args.size}_{device.split(':')[0]}{suffix}", report, markdown(report))


if __name__ == "__main__":
    main()
