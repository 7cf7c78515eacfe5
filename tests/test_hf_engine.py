"""The transformers engine on tiny random checkpoints (Qwen2.5-VL and Llama) built offline.

Engines here mostly take device="auto" and dtype="auto": float32 on the CPU, bfloat16 on CUDA
where there is one. Every comparison is made in the device and dtype the engine resolved, with
a tolerance fit for that dtype; tests marked ``gpu`` are the ones that move to CUDA when it is
there (``pytest -m gpu`` on a GPU machine), and the ``needs_cuda`` ones run only there.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from tiny_models import build_tiny_qwen25vl

from capbench.data import load_benchmark
from capbench.engines import build_engine, hf
from capbench.engines.base import Choice, ImagePart, JsonSchema, Message, Request, Response, Sampling, TextPart
from capbench.engines.hf_checkpoint import load_processor
from capbench.engines.models import folder_digest
from capbench.records import ImageRef

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("one_thread")]

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

GREEDY = Sampling(max_tokens=8, temperature=0.0)

#: Runs on CUDA when the machine has it (device "auto"), else on the CPU.
gpu = pytest.mark.gpu
#: Runs only on a machine with CUDA.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def logprob_tolerance(dtype: str) -> dict[str, float]:
    """Return ``pytest.approx`` bounds for log-probabilities that two routes computed in ``dtype``.

    float32: 1e-4 absolute, as the CPU tests always had: the two routes round differently only
    in float32's 24-bit mantissa (relative 6e-8), far below it. bfloat16 and float16 keep 8 and
    11 significant bits (machine epsilon 2^-7 and 2^-10); activations are rounded to that after
    every layer, and a route with other kernels (a mask, another shape) rounds elsewhere.
    Four epsilons relative (bfloat16 3.1%, float16 0.4%) bound that, and stay far below what
    a real fault gives (an option scored at the wrong position is off by whole units). Measured
    on the tiny Llama (24 options of 2-7 tokens, sums of -11 to -58): the engine and a direct
    pass agree to 1e-16 on the CPU in either dtype; even bfloat16 against float32 differs by at
    most 0.66% (0.17 on a sum of -26), float16 against float32 by 0.06%.
    """
    if dtype == "float32":
        return {"abs": 1e-4}
    return {"rel": 4 * torch.finfo(getattr(torch, dtype)).eps, "abs": 1e-4}


#: bfloat16 against float32 (other weights, rounded): the bfloat16 bound, 4.7 times the worst measured.
BF16_VS_F32 = logprob_tolerance("bfloat16")


@pytest.fixture(scope="module")
def images() -> list[ImageRef]:
    return [s.image for s in load_benchmark("mini", with_images=True).samples[:4]]


@pytest.fixture(scope="module")
def vlm(models: dict[str, Path]) -> hf.HFEngine:
    return hf.HFEngine(str(models["vlm"]), batch_size=4)


@pytest.fixture(scope="module")
def text_model(models: dict[str, Path]) -> hf.HFEngine:
    return hf.HFEngine(str(models["text"]), batch_size=4)


def describe(image: ImageRef, sampling: Sampling = GREEDY) -> Request:
    return Request((Message("user", (ImagePart(image), TextPart("Describe this image in detail."))),), sampling)


def image_tokens(folder: Path, image: ImageRef) -> int:
    """Count the <|image_pad|> tokens the processor puts in a prompt for ``image``."""
    from PIL import Image
    from transformers import AutoImageProcessor

    grid = AutoImageProcessor.from_pretrained(folder)(images=[Image.open(image.path).convert("RGB")])["image_grid_thw"]
    return int(grid.prod()) // 4  # 2x2 patches merge into one token


def test_the_processor_loads_with_or_without_torchvision(models):
    processor = load_processor(str(models["vlm"]))
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == processor.image_token_id
    if importlib.util.find_spec("torchvision") is None:
        assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    else:  # the folder is a standard checkpoint: the plain loader takes it too
        from transformers import AutoProcessor

        assert type(AutoProcessor.from_pretrained(models["vlm"])).__name__ == "Qwen2_5_VLProcessor"


@gpu
def test_captions_images_in_a_batch(vlm, models, images):
    seen: list[int] = []
    responses = vlm.run([describe(i) for i in images], on_result=lambda index, _: seen.append(index))
    assert sorted(seen) == [0, 1, 2, 3]
    for response, image in zip(responses, images, strict=True):
        assert response.ok and response.text, response
        assert response.prompt_tokens > image_tokens(models["vlm"], image)
        assert 0 < response.completion_tokens <= 8
    assert len({r.text for r in responses}) > 1  # the image matters
    assert [r.texts for r in vlm.run([describe(i) for i in images])] == [r.texts for r in responses]


@gpu
def test_greedy_outputs_do_not_depend_on_the_batch(vlm, models, images):
    # Left padding is masked out and Qwen2.5-VL's rope positions start after the padding, so in
    # float32 on the CPU one request alone gives exactly what it gives among four. On CUDA in
    # bfloat16 the kernels differ with the batch's shape and only near-ties could flip; this
    # model's margins are wide, and on an H200 the texts were the same.
    alone = hf.HFEngine(str(models["vlm"]), batch_size=1).run([describe(i) for i in images])
    assert [r.texts for r in alone] == [r.texts for r in vlm.run([describe(i) for i in images])]


@gpu
def test_max_pixels_shrinks_the_images(vlm, models, images):
    small = hf.HFEngine(str(models["vlm"]), max_pixels=56 * 56)
    assert small.fingerprint()["max_pixels"] == 56 * 56 and "max_pixels" not in vlm.fingerprint()
    few, many = small.run([describe(images[0])])[0], vlm.run([describe(images[0])])[0]
    assert few.ok and few.prompt_tokens < many.prompt_tokens


@gpu
def test_a_repeated_image_is_decoded_once_per_run(models, images, monkeypatch):
    opened: Counter[str] = Counter()
    real = hf.load_image

    def counting(path: str):
        opened[path] += 1
        return real(path)

    monkeypatch.setattr(hf, "load_image", counting)
    engine = hf.HFEngine(str(models["vlm"]), batch_size=2)  # the repeats span batches
    first, second = images[0], images[1]
    responses = engine.run([describe(first), describe(second), describe(first), describe(first)])
    assert all(r.ok for r in responses)
    assert opened == Counter({first.path: 1, second.path: 1})
    assert responses[0].texts == responses[2].texts == responses[3].texts


@gpu
def test_text_model_answers_text_and_refuses_images(text_model, images):
    ask = Request((Message.text("system", "Answer briefly."), Message.text("user", "What colour is the sky?")), GREEDY)
    text, picture = text_model.run([ask, describe(images[0])])
    assert text.ok and text.prompt_tokens > 0 and 0 < text.completion_tokens <= 8
    assert not text_model.accepts_images
    assert picture.error is not None and "text-only" in picture.error


@gpu
@pytest.mark.parametrize(
    "options",
    [{}, {"device": "cpu", "dtype": "bfloat16"}],
    ids=["auto", "cpu-bfloat16"],  # auto: float32 on the CPU, bfloat16 on CUDA
)
def test_loglik_choice_matches_a_direct_forward_pass(text_model, models, options):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = hf.HFEngine(str(models["text"]), **options) if options else text_model
    device, dtype = engine.resolved()
    choices = ("yes", "no", "a red car")
    messages = (Message.text("user", "Is a cat sitting on the table?"),)
    scored, sampled = engine.run([Request(messages, GREEDY, Choice(choices, loglik=True)), Request(messages, GREEDY)])
    assert sampled.ok and scored.ok and scored.option_logprobs is not None

    # The same weights, loaded on the device and in the dtype the engine resolved.
    tokenizer = AutoTokenizer.from_pretrained(models["text"])
    model = AutoModelForCausalLM.from_pretrained(models["text"], dtype=getattr(torch, dtype)).to(device).eval()
    assert next(engine._model.parameters()).dtype == getattr(torch, dtype)
    assert next(engine._model.parameters()).device == next(model.parameters()).device
    chat = [{"role": "user", "content": "Is a cat sitting on the table?"}]
    prompt = tokenizer(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)).input_ids
    expected, counts = [], []
    for option in choices:
        ids = tokenizer(option, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids], device=device)).logits[0].double()
        logprobs = torch.log_softmax(logits, dim=-1)
        expected.append(sum(float(logprobs[len(prompt) - 1 + k, t]) for k, t in enumerate(ids)))
        counts.append(len(ids))
    assert scored.option_logprobs == pytest.approx(expected, **logprob_tolerance(dtype))
    assert scored.option_tokens == tuple(counts)
    # The pick is the best mean per token of the engine's own scores (in bfloat16 a near-tie of
    # the direct pass could go either way within the tolerance).
    best = max(range(len(choices)), key=lambda i: scored.option_logprobs[i] / counts[i])
    assert scored.texts == (choices[best],)


@gpu
def test_vlm_scores_choices_and_ignores_json_schemas(vlm, images):
    messages = (Message("user", (ImagePart(images[0]), TextPart("Is there a person?"))),)
    scored, free = vlm.run(
        [
            Request(messages, GREEDY, Choice(("yes", "no"), loglik=True)),
            Request(messages, GREEDY, JsonSchema.of({"type": "object"})),
        ]
    )
    assert scored.ok and len(scored.option_logprobs) == 2 and all(lp < 0 for lp in scored.option_logprobs)
    assert scored.text in ("yes", "no")
    assert free.ok  # sent unconstrained: plain transformers has no constrained decoding


@gpu
def test_sampling_n_with_a_seed_is_reproducible(vlm, images):
    sampling = Sampling(max_tokens=8, temperature=1.0, seed=7, n=2)
    first = vlm.run([describe(images[0], sampling)])[0]
    again = vlm.run([describe(images[0], sampling)])[0]
    assert first.ok and len(first.texts) == 2
    assert again.texts == first.texts
    # Distinct draws: the checkpoint's generation config (top_k=1, temperature 0.1) did not leak in.
    assert first.texts[0] != first.texts[1]


@gpu
def test_a_bad_image_fails_alone(vlm, images, tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(images[1].path).read_bytes()[:200])  # a readable header, no pixels
    missing = ImageRef(path=str(tmp_path / "missing.png"), sha256="0" * 64)
    broken = ImageRef(path=str(truncated), sha256="1" * 64)
    requests = [describe(images[0]), describe(missing), describe(broken), describe(images[2])]
    responses = vlm.run(requests)
    assert responses[1].error is not None and "missing.png" in responses[1].error
    assert responses[2].error is not None and responses[2].error.startswith("hf: ")
    good = vlm.run([describe(images[0]), describe(images[2])])
    assert [responses[0].texts, responses[3].texts] == [r.texts for r in good]
    assert isinstance(responses[1], Response) and not responses[1].ok


@gpu
def test_fingerprint_names_weights_dtype_and_device_type_not_the_batch(models, tmp_path):
    folder = build_tiny_qwen25vl(tmp_path / "tiny-qwen25vl", seed=0)
    engine = build_engine(f"hf:{folder}", device="cpu", batch_size=2)
    assert isinstance(engine, hf.HFEngine)
    fingerprint = engine.fingerprint()
    assert engine._model is None  # fingerprinting never loads the model
    assert fingerprint["backend"] == "hf" and fingerprint["model"] == "tiny-qwen25vl" and fingerprint["transformers"]
    assert (fingerprint["device"], fingerprint["dtype"]) == engine.resolved() == ("cpu", "float32")
    # Greedy outputs do not depend on the batch (and sampled ones on more than its size).
    assert "batch_size" not in fingerprint
    assert hf.HFEngine(str(folder), device="cpu", batch_size=8).fingerprint() == fingerprint
    assert hf.HFEngine(str(models["vlm"]), device="cpu").fingerprint() == fingerprint  # same content elsewhere
    # "auto" is keyed as what it stands for here: cuda and bfloat16 on a GPU machine, else cpu and float32.
    auto = hf.HFEngine(str(folder), batch_size=8)
    device, dtype = auto.resolved()
    assert (auto.fingerprint()["device"], auto.fingerprint()["dtype"]) == (device.split(":")[0], dtype)
    assert auto.fingerprint() == hf.HFEngine(str(folder), device=device, dtype=dtype).fingerprint()
    if (device, dtype) == engine.resolved():  # a machine without CUDA
        assert auto.fingerprint() == fingerprint
    # The device type runs other kernels, so it is keyed; its index is not. Nothing loads: no GPU needed.
    on_cuda = hf.HFEngine(str(folder), device="cuda:1", dtype="float32").fingerprint()
    assert on_cuda == {**fingerprint, "device": "cuda"}
    assert hf.HFEngine(str(folder), device="cuda", dtype="float32").fingerprint() == on_cuda
    assert hf.HFEngine(str(folder), device="cuda:0").fingerprint() == {**on_cuda, "dtype": "bfloat16"}
    # So are the dtype, another attention kernel and the checkpoint's own code.
    assert hf.HFEngine(str(folder), device="cpu", dtype="bfloat16").fingerprint() == {
        **fingerprint,
        "dtype": "bfloat16",
    }
    eager = hf.HFEngine(str(folder), device="cpu", attn_implementation="eager").fingerprint()
    assert eager == {**fingerprint, "attn_implementation": "eager"}
    remote = hf.HFEngine(str(folder), device="cpu", trust_remote_code=True).fingerprint()
    assert remote == {**fingerprint, "trust_remote_code": True}
    shutil.rmtree(folder)
    build_tiny_qwen25vl(folder, seed=1)  # same files and sizes, other weights
    assert hf.HFEngine(str(folder)).fingerprint()["digest"] != fingerprint["digest"]


@gpu
def test_bfloat16_scores_are_close_to_float32_but_not_equal(models, text_model):
    # Why the dtype and the device type are keyed: the same weights score otherwise in bfloat16 on
    # CUDA (what "auto" runs there) or on the CPU (elsewhere) than in float32 on the CPU.
    low = text_model if text_model.resolved()[1] == "bfloat16" else hf.HFEngine(str(models["text"]), dtype="bfloat16")
    request = Request(
        (Message.text("user", "Is a cat sitting on the table?"),),
        GREEDY,
        Choice(("yes", "no", "a red car"), loglik=True),
    )
    reference = hf.HFEngine(str(models["text"]), device="cpu", dtype="float32").run([request])[0]
    scored = low.run([request])[0]
    assert scored.ok and reference.ok and scored.option_tokens == reference.option_tokens
    assert scored.option_logprobs != reference.option_logprobs
    assert scored.option_logprobs == pytest.approx(reference.option_logprobs, **BF16_VS_F32)


@gpu
@needs_cuda
def test_auto_runs_on_cuda_in_bfloat16(vlm, models, images):
    assert vlm.resolved() == ("cuda", "bfloat16")
    assert vlm.run([describe(images[0])])[0].ok
    weights = next(vlm._model.parameters())
    assert weights.device.type == "cuda" and weights.dtype == torch.bfloat16
    assert (vlm.fingerprint()["device"], vlm.fingerprint()["dtype"]) == ("cuda", "bfloat16")
    assert hf.HFEngine(str(models["vlm"]), device="cuda:0").fingerprint() == vlm.fingerprint()
    assert hf.HFEngine(str(models["vlm"]), device="cpu").fingerprint() != vlm.fingerprint()


def test_folder_digest_samples_large_files_and_skips_hidden_folders(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(bytes(17 << 20))  # over the whole-file limit: sampled
    digest = folder_digest(folder)
    assert folder_digest(shutil.copytree(folder, tmp_path / "copy")) == digest
    (folder / ".cache").mkdir()
    (folder / ".cache" / "download.lock").write_text("metadata")
    assert folder_digest(folder) == digest
    weights.write_bytes(os.urandom(17 << 20))  # retrained in place: same name and size
    retrained = folder_digest(folder)
    assert retrained != digest
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    assert folder_digest(folder) != retrained


def test_the_3b_builder_has_qwen25vl_3b_shape():
    import torch
    from tiny_models import qwen25vl_config, train_tokenizer
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2TokenizerFast

    config = qwen25vl_config(Qwen2TokenizerFast(tokenizer_object=train_tokenizer()), size="3b")
    config.text_config.vocab_size = 151936  # the real vocabulary; the trained test tokenizer is smaller
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    assert round(total / 1e9, 2) == 3.75 and round(vision / 1e6) == 669
