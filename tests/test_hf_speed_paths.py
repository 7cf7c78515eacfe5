"""The hf engine's fast paths give what the slow ones gave (issue 19, point 3).

Batched log-likelihood scoring (every option of several prompts in one right-padded forward
pass) against the computation it replaced, one pass per option of one prompt; generation with
the encoding of the next batch overlapped against plain ``model.generate`` on each request
alone. Tiny random models, built offline; like tests/test_hf_engine.py, these run in the
engine's resolved device and dtype (CUDA and bfloat16 where there is a GPU, ``pytest -m gpu``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from test_hf_engine import logprob_tolerance

from capbench.data import load_benchmark
from capbench.engines import hf
from capbench.engines.base import Choice, ImagePart, Message, Request, Sampling, TextPart
from capbench.engines.images import load_rgb
from capbench.records import ImageRef

pytestmark = [pytest.mark.engine, pytest.mark.gpu, pytest.mark.usefixtures("one_thread")]

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

#: Options of 1 to 8 tokens, so the rows of one pass have different lengths.
OPTIONS = ("yes", "no", "a red car sits on the table", "maybe not")


@pytest.fixture(scope="module")
def images() -> list[ImageRef]:
    return [s.image for s in load_benchmark("mini", with_images=True).samples[:6]]


def ask(text: str, image: ImageRef | None = None, options: tuple[str, ...] = OPTIONS) -> Request:
    parts = ((ImagePart(image),) if image else ()) + (TextPart(text),)
    return Request((Message("user", parts),), Sampling(max_tokens=1), Choice(options, loglik=True))


def one_pass_per_option(engine: hf.HFEngine, request: Request) -> list[float]:
    """Score each option as the engine did before batching: the prompt alone, one forward pass per option."""
    structured = engine.accepts_images
    chat = [hf._chat_message(m, structured) for m in request.messages]
    text = engine._processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    pictures = [load_rgb(p.image.path) for m in request.messages for p in m.parts if isinstance(p, ImagePart)]
    if structured:
        encoded = engine._processor(text=[text], images=pictures or None, return_tensors="pt", add_special_tokens=False)
    else:
        encoded = engine._tokenizer([text], return_tensors="pt", add_special_tokens=False)
    inputs = engine._on_device(dict(encoded))
    width = inputs["input_ids"].shape[1]
    scores = []
    for option in request.constraint.options:
        ids = engine._tokenizer(option, add_special_tokens=False).input_ids
        extended = {}
        for key, value in inputs.items():
            if value.dim() == 2 and value.shape == (1, width):
                tail = torch.tensor([ids], device=value.device, dtype=value.dtype)
                tail = tail if key == "input_ids" else torch.full_like(tail, int(key == "attention_mask"))
                value = torch.cat([value, tail], dim=1)
            extended[key] = value
        with torch.inference_mode():
            logits = engine._model(**extended).logits[0, width - 1 : width - 1 + len(ids)]
        picked = torch.log_softmax(logits.double(), dim=-1)[torch.arange(len(ids)), torch.tensor(ids)]
        scores.append(float(picked.sum()))
    return scores


def count_passes(engine: hf.HFEngine) -> list[int]:
    """Count the rows of each forward pass of the engine's model from now on."""
    rows: list[int] = []
    engine._model.register_forward_hook(
        lambda module, args, kwargs, out: rows.append(len(out.logits)), with_kwargs=True
    )
    return rows


def test_batched_scores_equal_one_pass_per_option_with_images(models, images):
    engine = hf.HFEngine(str(models["vlm"]), batch_size=12)  # 3 prompts of 4 options a pass
    requests = [ask("Is there a person?", image) for image in images[:4]]
    requests += [ask("Is there a person? Answer with care, and look at every corner of it.", images[4])]
    requests += [ask("Is a cat sitting on the table?")]  # no image: its own rope positions
    engine.run(requests[:1])  # load
    passes = count_passes(engine)
    scored = engine.run(requests)
    assert passes == [12, 12]  # 24 rows in two passes, where one pass per option took 24
    tolerance = logprob_tolerance(engine.resolved()[1])
    for request, response in zip(requests, scored, strict=True):
        assert response.ok and response.option_tokens == tuple(
            len(engine._tokenizer(o, add_special_tokens=False).input_ids) for o in OPTIONS
        )
        assert len(set(response.option_tokens)) > 1
        assert response.option_logprobs == pytest.approx(one_pass_per_option(engine, request), **tolerance)
        best = max(range(len(OPTIONS)), key=lambda i: response.option_logprobs[i] / response.option_tokens[i])
        assert response.texts == (OPTIONS[best],)
    # Prompts of other lengths in one pass: the longer image and the text-only prompt differ in length.
    assert len({r.prompt_tokens - sum(r.option_tokens) for r in scored}) > 2


def test_batched_scores_equal_one_pass_per_option_on_a_text_model(models):
    engine = hf.HFEngine(str(models["text"]), batch_size=64)
    assert engine.run([]) == [] and engine._model is None  # nothing to do: nothing loads
    requests = [ask("Is a cat sitting on the table? " * (1 + i), options=OPTIONS[: 2 + i % 3]) for i in range(5)]
    engine.run(requests[:1])
    passes = count_passes(engine)
    scored = engine.run(requests)
    assert passes == [sum(len(r.constraint.options) for r in requests)]  # one pass for all
    for request, response in zip(requests, scored, strict=True):
        expected = one_pass_per_option(engine, request)
        assert response.option_logprobs == pytest.approx(expected, **logprob_tolerance(engine.resolved()[1]))


def test_a_prompt_with_more_options_than_the_batch_is_scored_alone(models):
    engine = hf.HFEngine(str(models["text"]), batch_size=2)
    engine.run([ask("Warm up.")])
    passes = count_passes(engine)
    scored = engine.run([ask("Which?"), ask("Which one?", options=("yes", "no"))])
    assert sorted(passes) == [2, 4] and all(r.ok for r in scored)


def test_prompts_far_apart_in_length_are_scored_in_separate_passes(models):
    # Every row of a pass gets logits from the shortest prompt's end on: a long prompt beside a
    # short one would multiply them, so prompts more than SCORE_SPREAD tokens apart go apart.
    engine = hf.HFEngine(str(models["text"]), batch_size=64)
    engine.run([ask("Warm up.")])
    passes = count_passes(engine)
    near = [ask("Is a cat sitting on the table? " * n) for n in (1, 2)]
    far = ask("Is a cat sitting on the table? " * (hf.SCORE_SPREAD // 4))
    assert all(r.ok for r in engine.run([*near, far])) and passes == [8, 4]


def test_a_bad_image_fails_alone_in_a_scoring_pass(models, images, tmp_path):
    engine = hf.HFEngine(str(models["vlm"]), batch_size=12)
    broken = tmp_path / "broken.png"
    broken.write_bytes(Path(images[1].path).read_bytes()[:200])  # a readable header, no pixels
    requests = [ask("Is there a person?", images[0]), ask("Is there a person?", ImageRef(str(broken), "1" * 64))]
    requests.append(ask("Is there a person?", images[2]))
    scored = engine.run(requests)
    assert scored[1].error is not None and scored[1].error.startswith("hf: ")
    alone = [engine.run([requests[0]])[0], engine.run([requests[2]])[0]]
    tolerance = logprob_tolerance(engine.resolved()[1])
    for got, want in zip([scored[0], scored[2]], alone, strict=True):
        assert got.ok and got.option_logprobs == pytest.approx(want.option_logprobs, **tolerance)


def test_greedy_texts_equal_plain_generate_on_each_request_alone(models, images):
    # Greedy outputs do not depend on the batch (test_hf_engine.py), so plain ``generate`` on each
    # request alone is what the engine gave before and must give now, over several batches.
    engine = hf.HFEngine(str(models["vlm"]), batch_size=2)
    sampling = Sampling(max_tokens=8)
    requests = [Request((Message("user", (ImagePart(i), TextPart("Describe this image."))),), sampling) for i in images]
    responses = engine.run(requests)
    eos, pad = engine._stops
    for request, response in zip(requests, responses, strict=True):
        chat = [hf._chat_message(m, True) for m in request.messages]
        text = engine._processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        image = load_rgb(request.messages[0].parts[0].image.path)
        inputs = engine._processor(text=[text], images=[image], return_tensors="pt", add_special_tokens=False)
        inputs = engine._on_device(dict(inputs))
        with torch.inference_mode():
            output = engine._model.generate(
                **inputs, max_new_tokens=8, do_sample=False, repetition_penalty=1.0, eos_token_id=eos, pad_token_id=pad
            )
        new = hf._until(output[0, inputs["input_ids"].shape[1] :].tolist(), {*eos, pad})
        assert response.texts == (engine._tokenizer.decode(new, skip_special_tokens=True).strip(),)
        assert (response.prompt_tokens, response.completion_tokens) == (inputs["input_ids"].shape[1], len(new))


@pytest.mark.parametrize("spare_core", [True, False], ids=["worker", "in-turn"])
def test_the_processor_and_tokenizer_run_on_one_thread_beside_the_model(models, images, monkeypatch, spare_core):
    # With a core to spare, one worker does all the CPU work (never two tokenizer calls at once)
    # while the model runs on the calling thread; without, everything runs in turn on the latter.
    monkeypatch.setattr(hf, "_spare_core", lambda device: spare_core)
    engine = hf.HFEngine(str(models["vlm"]), batch_size=2)
    engine.run([ask("Warm up.")])
    threads: dict[str, set[str]] = {"processor": set(), "decode": set(), "model": set()}

    def recording(name, function):
        def call(*args, **kwargs):
            threads[name].add(threading.current_thread().name)
            return function(*args, **kwargs)

        return call

    processor = type(engine._processor)
    monkeypatch.setattr(processor, "__call__", recording("processor", processor.__call__))
    monkeypatch.setattr(engine._tokenizer, "batch_decode", recording("decode", engine._tokenizer.batch_decode))
    monkeypatch.setattr(engine._model, "generate", recording("model", engine._model.generate))
    sampling = Sampling(max_tokens=4)
    describe = [Request((Message("user", (ImagePart(i), TextPart("Describe."))),), sampling) for i in images[:5]]
    responses = engine.run([*describe, ask("Is there a person?", images[0])])
    assert all(r.ok for r in responses)
    (worker,) = threads["processor"] | threads["decode"]
    here = threading.current_thread().name
    assert threads["model"] == {here} and (worker.startswith("capbench-hf") if spare_core else worker == here)
    monkeypatch.undo()
    assert [r.texts for r in responses] == [
        r.texts for r in engine.run([*describe, ask("Is there a person?", images[0])])
    ]
