"""The transformers engine: ``model.generate`` over batches, for vision-language or text models.

``hf:MODEL`` names a hub id or a local checkpoint folder. A config with a ``vision_config`` is
loaded as a vision-language model (``AutoProcessor`` + ``AutoModelForImageTextToText``); any
other as a text model (``AutoTokenizer`` + ``AutoModelForCausalLM``), which refuses images per
request. Nothing is imported or loaded until the first request, so a fully cached run never
loads the model.

Requests are grouped by sampling settings (one ``generate`` call cannot mix them), sorted by
prompt length within a group to cut padding, and run ``batch_size`` at a time, left-padded.
The model runs on the calling thread. Where a core is free for it (the model on a GPU, or torch
set to fewer threads than there are cores), one worker thread does the CPU work around it
(decoding images, the processor, decoding tokens), encoding the next batch while the model runs.
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
assistant's reply and its tokens' log-probabilities are summed. Every option is one row, padded
on the right (so its positions are those it has alone), and one forward pass scores the rows of
several prompts: whole prompts, at most ``batch_size`` rows a pass (more only when one prompt
has more options), with logits computed only over the positions the options take. A score
depends on the other rows of its pass by rounding alone (in float32 on the CPU, the tiny test
models' sums came within 5e-6 of one pass per option), as a greedy text does on a GPU.

A request that fails (an unreadable image, say) gets a response with ``error`` set: a failed
batch is retried one request at a time to find the culprit.

Without torchvision, transformers cannot build video processors, so ``AutoProcessor`` fails for
processors that take one (all Qwen-VL models); ``hf_checkpoint.load_processor`` then builds
the same processor class without its video processor, on the PIL image processor.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
#: Most prompt tokens by which the prompts scored in one forward pass may differ: every row gets
#: logits from the shortest prompt's end to the longest option's end, so this bounds their span.
SCORE_SPREAD = 256


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


class _Host:
    """A run's CPU side: decoding images, the processor and the tokenizer, on one worker thread.

    With ``overlap``, the worker encodes the next batch while the model runs this one on the
    calling thread, so image decoding and preprocessing do not hold the model up. Every processor
    and tokenizer call goes through the worker, so no two overlap (a fast tokenizer called from
    two threads at once can fail with "Already borrowed"). Without ``overlap`` (no core to spare
    for it) there is no worker: each call runs in turn on the calling thread.
    """

    def __init__(self, prompts: Sequence[_Prompt], encode: Callable[..., Any], overlap: bool) -> None:
        self.images = _Images(prompts)
        self.encode = encode
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capbench-hf") if overlap else None

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queue ``function(*args)`` on the worker behind what is queued, or run it now without one."""
        if self.pool is not None:
            return self.pool.submit(function, *args)
        done: Future[Any] = Future()
        try:
            done.set_result(function(*args))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def prepare(self, batch: Sequence[_Prompt], sampling: Sampling | None) -> Future[Any]:
        """Encode a batch (``HFEngine._inputs``), on the worker."""
        return self.submit(self.encode, batch, sampling, self.images)

    def __enter__(self) -> _Host:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Rows:
    """The options of a batch of prompts to score, one row each: inputs, prompt lengths, option ids."""

    inputs: dict[str, Any]
    starts: list[int]
    options: list[list[int]]


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
        self._keeps_logits = False  # whether the model's forward takes ``logits_to_keep``
        self._stops: tuple[list[int], int] = ([], 0)  # end-of-sequence ids and the padding id

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
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._stops = self._stop_ids()  # read once: a run's calling thread never touches the tokenizer

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
        batches = [(batch, sampling) for sampling, group in groups.items() for batch in self._batches(group, sampling)]
        with _Host(prompts, self._inputs, overlap=bool(batches) and _spare_core(self._model.device)) as host:
            ahead = None
            for number, (batch, sampling) in enumerate(batches):
                ready = ahead or host.prepare(batch, sampling)
                ahead = host.prepare(*batches[number + 1]) if host.pool and number + 1 < len(batches) else None
                finish(batch, self._run_batch(batch, sampling, ready, host))
                host.submit(host.images.done, batch)
        return [r if r is not None else Response(error="hf: no response") for r in out]

    def _batches(self, group: list[_Prompt], sampling: Sampling | None) -> list[list[_Prompt]]:
        """Cut a group into batches, shortest prompts first.

        To generate, ``batch_size`` prompts a batch; to score, whole prompts with at most
        ``batch_size`` option rows in all (no more rows than a generating batch's first forward
        pass) and lengths within ``SCORE_SPREAD``, or one prompt alone when it has more options.
        """
        group.sort(key=lambda p: p.length)
        if sampling is not None:
            return [group[start : start + self.batch_size] for start in range(0, len(group), self.batch_size)]
        batches: list[list[_Prompt]] = []
        rows = 0
        for prompt in group:
            options = len(prompt.constraint.options) if prompt.constraint else 0
            if batches and rows + options <= self.batch_size and prompt.length - batches[-1][0].length <= SCORE_SPREAD:
                batches[-1].append(prompt)
                rows += options
            else:
                batches.append([prompt])
                rows = options
        return batches

    def _run_batch(
        self, batch: list[_Prompt], sampling: Sampling | None, ready: Future[Any], host: _Host
    ) -> list[Response]:
        """Generate (or score) for a batch whose inputs ``ready`` holds; if it fails, go one by one."""
        try:
            inputs = ready.result()
            if sampling is None:
                return self._score(batch, inputs)
            return self._generate(batch, sampling, inputs, host)
        except Exception as exc:  # one bad request must not sink the batch
            if len(batch) > 1:
                return [self._run_batch([p], sampling, host.prepare([p], sampling), host)[0] for p in batch]
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

    def _inputs(self, batch: Sequence[_Prompt], sampling: Sampling | None, images: _Images) -> Any:
        """Encode a batch on the CPU (on the host's worker, if any): prompts to generate from, or rows to score."""
        return self._option_rows(batch, images) if sampling is None else self._encode(batch, images)

    def _encode(self, batch: Sequence[_Prompt], images: _Images) -> dict[str, Any]:
        """Tokenize a batch, left-padded, with its images; return CPU tensors."""
        texts = [p.text for p in batch]
        pictures = [image for p in batch for image in images.get(p)]
        if self.accepts_images:
            return dict(
                self._processor(
                    text=texts, images=pictures or None, padding=True, return_tensors="pt", add_special_tokens=False
                )
            )
        return dict(self._tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False))

    def _on_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Move encoded inputs to the model's device, floating-point ones in its dtype."""
        dtype = self._model.dtype
        return {
            k: v.to(self._model.device, dtype=dtype if v.is_floating_point() else None) if hasattr(v, "to") else v
            for k, v in inputs.items()
        }

    def _generate(
        self, batch: list[_Prompt], sampling: Sampling, inputs: dict[str, Any], host: _Host
    ) -> list[Response]:
        """Run one ``generate`` for the batch; the host thread decodes each request's new tokens."""
        import torch

        inputs = self._on_device(inputs)
        eos, pad = self._stops
        config = _generation_config(sampling, eos, pad)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            output = self._model.generate(**inputs, generation_config=config)
        draws = config.num_return_sequences or 1  # greedy draws are all the same: one is computed
        new = output[:, inputs["input_ids"].shape[1] :].tolist()
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return host.submit(self._decode, new, lengths, draws, sampling.n // draws, {*eos, pad}).result()

    def _decode(
        self, rows: list[list[int]], lengths: list[int], draws: int, repeat: int, stop: set[int]
    ) -> list[Response]:
        """Turn generated rows (``draws`` per request) into responses, each draw repeated ``repeat`` times."""
        kept = [_until(row, stop) for row in rows]
        texts = [t.strip() for t in self._tokenizer.batch_decode(kept, skip_special_tokens=True)]
        responses = []
        for number, length in enumerate(lengths):
            mine = slice(number * draws, (number + 1) * draws)
            responses.append(
                Response(
                    texts=tuple(texts[mine] * repeat),
                    prompt_tokens=int(length),
                    completion_tokens=repeat * sum(len(k) for k in kept[mine]),
                )
            )
        return responses

    def _option_rows(self, batch: Sequence[_Prompt], images: _Images) -> _Rows:
        """Lay out each option of each prompt as one row: the prompt's tokens, the option's, padding.

        The prompt's per-token tensors (shape (1, length): ids, mask, token types) are extended by
        the option's tokens and padded on the right, so a row's positions are those it has alone;
        its other tensors (pixels, image grids) are repeated for each of its rows, in row order.
        """
        import torch

        tokens: dict[str, list[Any]] = defaultdict(list)
        repeated: dict[str, list[Any]] = defaultdict(list)
        plain: dict[str, Any] = {}
        starts, options = [], []
        for prompt in batch:
            assert prompt.constraint is not None
            encoded = self._encode([prompt], images)
            width = encoded["input_ids"].shape[1]
            for option in prompt.constraint.options:
                ids = self._tokenizer(option, add_special_tokens=False).input_ids
                starts.append(width)
                options.append(ids)
                for key, value in encoded.items():
                    if hasattr(value, "shape") and value.dim() == 2 and value.shape == (1, width):
                        tail = ids if key == "input_ids" else [int(key == "attention_mask")] * len(ids)
                        tokens[key].append(torch.cat([value[0], torch.tensor(tail, dtype=value.dtype)]))
                    elif hasattr(value, "shape"):
                        repeated[key].append(value)
                    elif plain.setdefault(key, value) != value:
                        raise ValueError(f"cannot score prompts with different {key!r} in one pass")
        pad = {"input_ids": self._stops[1]}
        inputs = {
            k: torch.nn.utils.rnn.pad_sequence(v, batch_first=True, padding_value=pad.get(k, 0))
            for k, v in tokens.items()
        }
        return _Rows({**plain, **inputs, **{k: torch.cat(v) for k, v in repeated.items()}}, starts, options)

    def _score(self, batch: list[_Prompt], rows: _Rows) -> list[Response]:
        """Score every option row of the batch in one forward pass; pick each prompt's best mean."""
        import torch

        counts = [len(ids) for ids in rows.options]
        first = min(rows.starts) - 1  # logits are computed from here on only: the options' positions
        last = max(first, max(s + n for s, n in zip(rows.starts, counts, strict=True)) - 1)
        keep = {"logits_to_keep": torch.arange(first, last, device=self._model.device)} if self._keeps_logits else {}
        offset = first if keep else 0
        with torch.inference_mode():
            logits = self._model(**self._on_device(rows.inputs), use_cache=False, **keep).logits
        row = [r for r, n in enumerate(counts) for _ in range(n)]
        at = [s - 1 + t - offset for s, n in zip(rows.starts, counts, strict=True) for t in range(n)]
        token = [t for ids in rows.options for t in ids]
        picked = torch.log_softmax(logits[row, at].double(), dim=-1)[torch.arange(len(token)), torch.tensor(token)]
        sums = [float(part.sum()) for part in picked.cpu().split(counts)]
        responses, start = [], 0
        for prompt in batch:
            assert prompt.constraint is not None
            options = prompt.constraint.options
            mine = slice(start, start + len(options))
            logprobs, tokens = sums[mine], counts[mine]
            best = max(range(len(options)), key=lambda i: logprobs[i] / max(1, tokens[i]))
            responses.append(
                Response(
                    texts=(options[best],),
                    prompt_tokens=rows.starts[start] + sum(tokens),
                    option_logprobs=tuple(logprobs),
                    option_tokens=tuple(tokens),
                )
            )
            start += len(options)
        return responses


def _spare_core(device: Any) -> bool:
    """Whether a core is free for the CPU work beside the model (see ``_Host``).

    On an accelerator the model's thread mostly launches kernels. On the CPU torch's threads take
    every core unless set lower, and a worker beside them would take cores from the model (and
    start its own torch thread pool) rather than use idle ones.
    """
    import torch

    if device.type != "cpu":
        return True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return torch.get_num_threads() < cores


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
