"""The transformers engine: ``model.generate`` over batches, for vision-language or text models.

``hf:MODEL`` names a hub id or a local checkpoint folder. A config with a ``vision_config`` is
loaded as a vision-language model (``AutoProcessor`` + ``AutoModelForImageTextToText``); any
other as a text model (``AutoTokenizer`` + ``AutoModelForCausalLM``), which refuses images per
request. Nothing is imported or loaded until the first request, so a fully cached run never
loads the model.

Requests are grouped by sampling settings (one ``generate`` call cannot mix them), sorted by
prompt length within a group to cut padding, and run ``batch_size`` at a time, left-padded.
Sampling is always explicit: each call gets a fresh ``GenerationConfig`` (greedy, or
temperature / top-p with top-k off and no repetition penalty), and the model's own
``generation_config.json`` (Qwen's sets top-k 1 and a repetition penalty) is dropped at load,
but for its token ids. Greedy outputs do not depend on the batch: padding is masked and
positions start after it, so in float32 on the CPU a request alone gives exactly what it gives
in a batch, and the tests find the same in bfloat16 on CUDA (an H200). GPU kernels are picked
by shape, though, so a batch rounds differently from one row there, and a token at a near-tie
(two logits within the dtype's rounding) could come out otherwise. Sampled outputs do depend on
the batch: ``torch.manual_seed(seed)`` is set before each ``generate``, whose random draws are
then shared by every row of that batch, so a sampled text depends on what it was batched with.

Constraints: plain transformers has no constrained decoding, so a JSON schema or a
``Choice(loglik=False)`` is sent unconstrained and the callers parse tolerantly. A
``Choice(loglik=True)`` is scored: each option is appended to the chat-templated prompt as the
assistant's reply and its tokens' log-probabilities are summed (one forward pass per option).

A request that fails (an unreadable image, say) gets a response with ``error`` set: a failed
batch is retried one request at a time to find the culprit.

Without torchvision, transformers cannot build video processors, so ``AutoProcessor`` fails for
processors that take one (all Qwen-VL models); ``hf_checkpoint.load_processor`` then builds
the same processor class without its video processor, on the PIL image processor.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from capbench.engines.base import Choice, ImagePart, Message, OnResult, Request, Response, Sampling
from capbench.engines.hf_checkpoint import limit_pixels, load_processor
from capbench.engines.images import load_rgb as load_image
from capbench.engines.models import folder_digest, local_model_folder
from capbench.errors import ConfigError, EngineError, MissingDependencyError
from capbench.records import ImageRef

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _image_size(path: str) -> tuple[int, int]:
    """Return (width, height) from the image's header, without decoding it."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size


@dataclass
class _Prompt:
    """One request made ready: its index in the run, templated text, images and length estimate."""

    index: int
    text: str
    images: tuple[ImageRef, ...]
    length: int
    constraint: Choice | None = None


class _Images:
    """The run's decoded images by content hash: each decoded once, dropped after its last use."""

    def __init__(self, prompts: Sequence[_Prompt]) -> None:
        self.left = Counter(ref.sha256 for p in prompts for ref in p.images)
        self.decoded: dict[str, Any] = {}

    def get(self, prompt: _Prompt) -> list[Any]:
        """Return the prompt's images, decoding those not yet held."""
        for ref in prompt.images:
            if ref.sha256 not in self.decoded:
                self.decoded[ref.sha256] = load_image(ref.path)
        return [self.decoded[ref.sha256] for ref in prompt.images]

    def done(self, prompts: Sequence[_Prompt]) -> None:
        """Forget the images these prompts were the last to use."""
        for ref in (r for p in prompts for r in p.images):
            self.left[ref.sha256] -= 1
            if self.left[ref.sha256] <= 0:
                self.decoded.pop(ref.sha256, None)


class HFEngine:
    """transformers ``generate`` in batches, on a vision-language or text model, on CPU or GPU.

    Args:
        model: A hub id or a local checkpoint folder.
        device: "auto" (cuda if available, else cpu), or a torch device such as "cuda:1".
        dtype: "auto" (bfloat16 on cuda, float32 on cpu), "float32", "bfloat16" or "float16".
        batch_size: Requests per ``generate`` call.
        revision: The hub revision (branch, tag or commit) to load.
        trust_remote_code: Allow the checkpoint's own Python code (needed by some models).
        attn_implementation: "sdpa", "eager", "flash_attention_2", ...; None keeps transformers' choice.
        max_pixels: Pixel budget per image for Qwen-VL style processors (fewer image tokens).
    """

    backend = "hf"
    supports_loglik = True

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        revision: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        max_pixels: int | None = None,
    ) -> None:
        # A mistyped path is named here, before transformers reads it as a hub id.
        self.folder = local_model_folder(model, "hf engine")
        if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
            raise MissingDependencyError("transformers", "hf", "the hf engine")
        if dtype not in DTYPES:
            raise ConfigError(f"hf engine: dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        if batch_size < 1:
            raise ConfigError(f"hf engine: batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.device, self.dtype, self.batch_size, self.revision = device, dtype, batch_size, revision
        self.trust_remote_code = trust_remote_code
        self.attn_implementation = attn_implementation
        self.max_pixels = max_pixels
        config, self._commit = self._read_config()
        self.accepts_images = "vision_config" in config
        self._fingerprint: dict[str, Any] | None = None
        self._model: Any = None  # loaded on the first request
        self._processor: Any = None
        self._tokenizer: Any = None

    def _read_config(self) -> tuple[dict[str, Any], str | None]:
        """Return the model's config.json as a dict, and its hub commit hash (None for a folder)."""
        if self.folder is not None:
            path = self.folder / "config.json"
            if not path.is_file():
                raise ConfigError(f"hf engine: {self.folder} has no config.json; give a checkpoint folder or hub id")
            return json.loads(path.read_text()), None
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            self.model, revision=self.revision, trust_remote_code=self.trust_remote_code
        )
        return config.to_dict(), getattr(config, "_commit_hash", None)

    def resolved(self) -> tuple[str, str]:
        """Return the (device, dtype) names that "auto" stands for here."""
        import torch

        device = self.device if self.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = self.dtype if self.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
        return device, dtype

    def fingerprint(self) -> dict[str, Any]:
        """Return what, besides the request, decides the outputs; computed without loading the model.

        In: the backend; the model's name with its content digest (a folder) or hub commit, and
        the revision; the transformers version (its model code); the dtype as resolved here
        (what "auto" stands for); the device *type* (cpu, cuda, mps), because each type runs its
        own kernels, which round and reduce in their own order, so the same weights in the same
        dtype give other logits and at times another token; ``attn_implementation`` when set
        (another attention kernel, for the same reason); ``trust_remote_code`` when true (the
        checkpoint's own model code runs instead of transformers'); ``max_pixels`` when set
        (fewer image tokens).

        Out: the device index (cuda:0 and cuda:1 run the same kernels), so "auto" and the device
        it resolves to share their key. ``batch_size``: greedy outputs do not depend on the
        batch (see the module docstring); sampled ones depend on which requests shared the
        batch, which ``batch_size`` alone does not say, so no engine-wide field could pin them:
        a cached sampled reply is one draw with the request's seed.
        """
        if self._fingerprint is None:
            name = self.folder.resolve().name if self.folder is not None else self.model
            device, dtype = self.resolved()
            self._fingerprint = {
                "backend": self.backend,
                "model": name,
                "digest": folder_digest(self.folder) if self.folder is not None else self._commit,
                "revision": self.revision,
                "device": device.split(":")[0],
                "dtype": dtype,
                "transformers": metadata.version("transformers"),
            }
            optional = {
                "attn_implementation": self.attn_implementation,
                "trust_remote_code": self.trust_remote_code or None,
                "max_pixels": self.max_pixels,
            }
            self._fingerprint.update({k: v for k, v in optional.items() if v is not None})
        return self._fingerprint

    def _load(self) -> None:
        """Load the processor or tokenizer and the model, on the device, in the dtype."""
        import torch
        import transformers as tf

        device, dtype = self.resolved()
        common = {"revision": self.revision, "trust_remote_code": self.trust_remote_code}
        if self.accepts_images:
            self._processor = load_processor(self.model, **common)
            self._tokenizer = self._processor.tokenizer
            if self.max_pixels is not None:
                limit_pixels(self._processor.image_processor, self.max_pixels)
            auto: Any = tf.AutoModelForImageTextToText
        else:
            self._tokenizer = self._processor = tf.AutoTokenizer.from_pretrained(self.model, **common)
            auto = tf.AutoModelForCausalLM
        self._tokenizer.padding_side = "left"
        attn = {} if self.attn_implementation is None else {"attn_implementation": self.attn_implementation}
        model = auto.from_pretrained(self.model, dtype=getattr(torch, dtype), **common, **attn).to(device).eval()
        # Keep the checkpoint's token ids, drop its sampling defaults: sampling is set per request.
        ids = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
        model.generation_config = tf.GenerationConfig(**{k: getattr(model.generation_config, k, None) for k in ids})
        self._model = model

    def _stop_ids(self) -> tuple[list[int], int]:
        """Return the end-of-sequence ids (tokenizer's and model's) and the padding id."""
        ids = self._model.generation_config.eos_token_id
        eos = [ids] if isinstance(ids, int) else list(ids or [])
        if self._tokenizer.eos_token_id is not None and self._tokenizer.eos_token_id not in eos:
            eos.insert(0, self._tokenizer.eos_token_id)
        pad = self._tokenizer.pad_token_id
        pad = pad if pad is not None else self._model.generation_config.pad_token_id
        return eos, pad if pad is not None else eos[0]

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        """Answer the requests in order, batched; a failure becomes a response with ``error`` set."""
        out: list[Response | None] = [None] * len(requests)

        def finish(prompts: Sequence[_Prompt], responses: Sequence[Response]) -> None:
            for prompt, response in zip(prompts, responses, strict=True):
                out[prompt.index] = response
                if on_result is not None:
                    on_result(prompt.index, response)

        if requests and self._model is None:
            try:
                self._load()
            except ConfigError:
                raise
            except Exception as exc:
                raise EngineError(f"hf engine: cannot load {self.model}: {type(exc).__name__}: {exc}") from exc
        prompts, groups = [], defaultdict(list)
        for index, request in enumerate(requests):
            prompt = self._prepare(index, request)
            if isinstance(prompt, Response):
                finish([_Prompt(index, "", (), 0)], [prompt])
                continue
            prompts.append(prompt)
            groups[None if prompt.constraint else request.sampling].append(prompt)
        images = _Images(prompts)
        for sampling, group in groups.items():
            group.sort(key=lambda p: p.length)
            size = 1 if sampling is None else self.batch_size
            for start in range(0, len(group), size):
                batch = group[start : start + size]
                finish(batch, self._run_batch(batch, sampling, images))
                images.done(batch)
        return [r if r is not None else Response(error="hf: no response") for r in out]

    def _run_batch(self, batch: list[_Prompt], sampling: Sampling | None, images: _Images) -> list[Response]:
        """Generate (or score) for a batch; if it fails, go one by one to isolate the failure."""
        try:
            if sampling is None:
                return [self._score(p, images) for p in batch]
            return self._generate(batch, sampling, images)
        except Exception as exc:  # one bad request must not sink the batch
            if len(batch) > 1:
                return [self._run_batch([p], sampling, images)[0] for p in batch]
            return [Response(error=f"hf: {type(exc).__name__}: {exc}")]

    def _prepare(self, index: int, request: Request) -> _Prompt | Response:
        """Template the request's messages and estimate its prompt length; refuse what cannot run."""
        refs = tuple(p.image for m in request.messages for p in m.parts if isinstance(p, ImagePart))
        if refs and not self.accepts_images:
            return Response(error=f"hf: {self.model} is a text-only model and cannot read images")
        try:
            text = self._processor.apply_chat_template(
                [_chat_message(m, self.accepts_images) for m in request.messages],
                tokenize=False,
                add_generation_prompt=True,
            )
            length = len(self._tokenizer(text, add_special_tokens=False).input_ids)
            sizes = [_image_size(ref.path) for ref in refs]  # also fails early on a missing file
        except Exception as exc:
            return Response(error=f"hf: {type(exc).__name__}: {exc}")
        if sizes:
            try:
                tokens = self._processor._get_num_multimodal_tokens(image_sizes=[(h, w) for w, h in sizes])
                length += sum(tokens["num_image_tokens"])
            except Exception:  # only a sort key: processors without the helper sort by text length
                pass
        choice = request.constraint if isinstance(request.constraint, Choice) and request.constraint.loglik else None
        return _Prompt(index, text, refs, length, choice)

    def _encode(self, batch: Sequence[_Prompt], images: _Images) -> Any:
        """Tokenize a batch, left-padded, with its images; return tensors on the model's device."""
        texts = [p.text for p in batch]
        pictures = [image for p in batch for image in images.get(p)]
        if self.accepts_images:
            inputs = self._processor(
                text=texts, images=pictures or None, padding=True, return_tensors="pt", add_special_tokens=False
            )
        else:
            inputs = self._tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        dtype = self._model.dtype
        return {
            k: v.to(self._model.device, dtype=dtype if v.is_floating_point() else None) if hasattr(v, "to") else v
            for k, v in inputs.items()
        }

    def _generate(self, batch: list[_Prompt], sampling: Sampling, images: _Images) -> list[Response]:
        """Run one ``generate`` for the batch and decode each request's new tokens."""
        import torch

        inputs = self._encode(batch, images)
        eos, pad = self._stop_ids()
        config = _generation_config(sampling, eos, pad)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            output = self._model.generate(**inputs, generation_config=config)
        width = inputs["input_ids"].shape[1]
        draws = config.num_return_sequences or 1  # greedy draws are all the same: one is computed
        new = output[:, width:].reshape(len(batch), draws, -1).tolist()
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        responses = []
        for rows, length in zip(new, lengths, strict=True):
            kept = [_until(row, {*eos, pad}) for row in rows] * (sampling.n // draws)
            texts = self._tokenizer.batch_decode(kept, skip_special_tokens=True)
            responses.append(
                Response(
                    texts=tuple(t.strip() for t in texts),
                    prompt_tokens=int(length),
                    completion_tokens=sum(len(k) for k in kept),
                )
            )
        return responses

    def _score(self, prompt: _Prompt, images: _Images) -> Response:
        """Score each option of a log-likelihood choice as the assistant's reply to the prompt."""
        import torch

        assert prompt.constraint is not None
        options = prompt.constraint.options
        inputs = self._encode([prompt], images)
        prompt_len = inputs["input_ids"].shape[1]
        logprobs, counts = [], []
        for option in options:
            ids = self._tokenizer(option, add_special_tokens=False).input_ids
            extended = _append_tokens(inputs, ids)
            with torch.inference_mode():
                logits = self._model(**extended).logits[0, prompt_len - 1 : prompt_len - 1 + len(ids)]
            picked = torch.log_softmax(logits.double(), dim=-1)[torch.arange(len(ids)), torch.tensor(ids)]
            logprobs.append(float(picked.sum()))
            counts.append(len(ids))
        best = max(range(len(options)), key=lambda i: logprobs[i] / max(1, counts[i]))
        return Response(
            texts=(options[best],),
            prompt_tokens=prompt_len + sum(counts),
            option_logprobs=tuple(logprobs),
            option_tokens=tuple(counts),
        )


def _chat_message(message: Message, structured: bool) -> dict[str, Any]:
    """Convert a message to transformers' chat format: parts for processors, a string for tokenizers."""
    if not structured:
        return {"role": message.role, "content": message.joined_text()}
    parts = [{"type": "image"} if isinstance(p, ImagePart) else {"type": "text", "text": p.text} for p in message.parts]
    return {"role": message.role, "content": parts}


def _generation_config(sampling: Sampling, eos: list[int], pad: int) -> Any:
    """Build a fresh generation config from the request's sampling settings alone."""
    from transformers import GenerationConfig

    # Fields left unset take transformers' global defaults (the model's own were dropped at load);
    # greedy leaves the sampling knobs unset, since setting them draws a warning.
    knobs = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": 0,
        "num_return_sequences": sampling.n,
    }
    return GenerationConfig(
        max_new_tokens=sampling.max_tokens,
        min_new_tokens=0,
        do_sample=sampling.temperature > 0,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=eos,
        pad_token_id=pad,
        **(knobs if sampling.temperature > 0 else {}),
    )


def _until(row: list[int], stop: set[int]) -> list[int]:
    """Return the tokens of ``row`` before the first stop or padding token."""
    for i, token in enumerate(row):
        if token in stop:
            return row[:i]
    return row


def _append_tokens(inputs: dict[str, Any], ids: list[int]) -> dict[str, Any]:
    """Append ``ids`` to a one-row encoded prompt, extending its per-token tensors to match."""
    import torch

    width = inputs["input_ids"].shape[1]
    extended = dict(inputs)
    for key, value in inputs.items():
        if not hasattr(value, "shape") or value.dim() != 2 or value.shape != (1, width):
            continue
        tail = torch.tensor([ids], device=value.device, dtype=value.dtype)
        if key == "attention_mask":
            tail = torch.ones_like(tail)
        elif key != "input_ids":
            tail = torch.zeros_like(tail)
        extended[key] = torch.cat([value, tail], dim=1)
    return extended
