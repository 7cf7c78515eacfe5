"""The engine protocol: one batched call from judge requests to responses.

A :class:`Request` holds chat messages (text and images), sampling settings and an optional
constraint. A :class:`Response` holds the sampled texts (or, for a log-likelihood choice, the
score of every option), token usage, and an error if the call failed. Every engine has a
fingerprint: what, besides the request, changes its outputs. The cache key is the pair.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from capbench.hashing import canonical_json, content_hash
from capbench.records import ImageRef

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class TextPart:
    """A piece of text inside a message."""

    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image inside a message; only its content hash enters the cache key."""

    image: ImageRef


Part = TextPart | ImagePart


@dataclass(frozen=True)
class Message:
    """One chat message: a role and its parts, in order."""

    role: Role
    parts: tuple[Part, ...]

    @classmethod
    def text(cls, role: Role, text: str) -> Message:
        """Build a text-only message."""
        return cls(role, (TextPart(text),))

    @property
    def has_image(self) -> bool:
        """Whether any part is an image."""
        return any(isinstance(p, ImagePart) for p in self.parts)

    def joined_text(self) -> str:
        """Return the message's text parts joined (images dropped)."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True)
class Sampling:
    """Sampling settings, always explicit: engines never use a model's own defaults."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    n: int = 1

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


@dataclass(frozen=True)
class Choice:
    """Constrain the answer to one of ``options``.

    With ``loglik=False`` the engine samples text restricted to the options (a grammar, or
    structured outputs). With ``loglik=True`` it samples nothing and instead scores every
    option's log-likelihood as the assistant's reply; the response's ``option_logprobs`` and
    ``option_tokens`` carry the scores, and ``texts`` the best option.
    """

    options: tuple[str, ...]
    loglik: bool = False

    def __post_init__(self) -> None:
        if len(self.options) < 2:
            raise ValueError("a Choice needs at least two options")
        if len(set(self.options)) != len(self.options):
            raise ValueError(f"Choice options must be distinct: {self.options}")


@dataclass(frozen=True)
class JsonSchema:
    """Constrain the answer to JSON matching ``schema`` (stored as canonical JSON text)."""

    schema_json: str

    @classmethod
    def of(cls, schema: Mapping[str, Any]) -> JsonSchema:
        """Build from a schema dict."""
        return cls(canonical_json(schema))


Constraint = Choice | JsonSchema


@dataclass(frozen=True)
class Request:
    """One judge request: messages, sampling settings, and an optional constraint."""

    messages: tuple[Message, ...]
    sampling: Sampling = field(default_factory=Sampling)
    constraint: Constraint | None = None
    #: Requests with the same key share a long prompt prefix (one caption's questions, one image's
    #: judgments): an engine with several servers sends them to the same one, whose prefix cache
    #: then holds it (:func:`affinity_key`). Where a request goes, not what it asks: it is not part
    #: of the cache key, nor of equality.
    affinity: str | None = field(default=None, compare=False)

    @property
    def has_image(self) -> bool:
        """Whether any message holds an image."""
        return any(m.has_image for m in self.messages)

    def affinity_key(self) -> str | None:
        """The request's :attr:`affinity`, else its images' content hashes, else None (no preference)."""
        if self.affinity is not None:
            return self.affinity
        shas = [p.image.sha256 for m in self.messages for p in m.parts if isinstance(p, ImagePart)]
        return affinity(*shas) if shas else None

    def canonical(self) -> dict[str, Any]:
        """Return exactly what changes the output, as a JSON-ready dict (images by hash)."""
        return {
            "messages": [{"role": m.role, "parts": [_canonical_part(p) for p in m.parts]} for m in self.messages],
            "sampling": {
                "max_tokens": self.sampling.max_tokens,
                "temperature": self.sampling.temperature,
                "top_p": self.sampling.top_p,
                "seed": self.sampling.seed,
                "n": self.sampling.n,
            },
            "constraint": _canonical_constraint(self.constraint),
        }


def affinity(*parts: str) -> str:
    """A :attr:`Request.affinity` key from the strings that make a prompt's shared prefix."""
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _canonical_part(part: Part) -> dict[str, str]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    return {"type": "image", "sha256": part.image.sha256}


def _canonical_constraint(constraint: Constraint | None) -> dict[str, Any] | None:
    if constraint is None:
        return None
    if isinstance(constraint, Choice):
        return {"type": "choice", "options": list(constraint.options), "loglik": constraint.loglik}
    return {"type": "json", "schema": constraint.schema_json}


@dataclass(frozen=True)
class Response:
    """What an engine returned for one request.

    A failed call has ``error`` set and is never cached. ``option_logprobs`` (sum of token
    log-probabilities per option) and ``option_tokens`` (tokens per option) are set only for
    log-likelihood choices.
    """

    texts: tuple[str, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    option_logprobs: tuple[float, ...] | None = None
    option_tokens: tuple[int, ...] | None = None
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        """Whether the call succeeded and returned something."""
        return self.error is None and (bool(self.texts) or self.option_logprobs is not None)

    @property
    def text(self) -> str:
        """The first sampled text, or '' if none."""
        return self.texts[0] if self.texts else ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (without the ``cached`` flag, which is per lookup)."""
        data: dict[str, Any] = {
            "texts": list(self.texts),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        if self.option_logprobs is not None:
            data["option_logprobs"] = list(self.option_logprobs)
            data["option_tokens"] = list(self.option_tokens or ())
        if self.error is not None:
            data["error"] = self.error
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], cached: bool = False) -> Response:
        """Build from :meth:`to_dict` output."""
        logprobs = data.get("option_logprobs")
        tokens = data.get("option_tokens")
        return cls(
            texts=tuple(data.get("texts", ())),
            prompt_tokens=int(data.get("prompt_tokens", 0)),
            completion_tokens=int(data.get("completion_tokens", 0)),
            option_logprobs=None if logprobs is None else tuple(float(x) for x in logprobs),
            option_tokens=None if tokens is None else tuple(int(x) for x in tokens),
            error=data.get("error"),
            cached=cached,
        )


OnResult = Callable[[int, Response], None]
"""Called by an engine as each request of a batch completes: (index in the batch, response)."""


@runtime_checkable
class Engine(Protocol):
    """A model backend: a batched call, a fingerprint and capability flags."""

    backend: str
    accepts_images: bool
    supports_loglik: bool

    def fingerprint(self) -> dict[str, Any]:
        """Return what, besides the request, changes outputs (backend, model, revision, options)."""
        ...

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        """Answer a batch of requests, in order; call ``on_result`` as each one completes."""
        ...


class EngineWrapper:
    """An engine around another: the same capabilities and fingerprint; subclasses change ``run``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backend = engine.backend
        self.accepts_images = engine.accepts_images
        self.supports_loglik = engine.supports_loglik

    def fingerprint(self) -> dict[str, Any]:
        """Return the wrapped engine's fingerprint: wrapping does not change outputs."""
        return self.engine.fingerprint()

    def check(self) -> None:
        """Run the wrapped engine's preflight check."""
        preflight(self.engine)

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        """Run the wrapped engine unchanged."""
        return self.engine.run(requests, on_result)


def preflight(engine: Engine) -> None:
    """Check, before any work, that ``engine`` can answer at all (an engine without ``check`` can).

    Raises:
        EngineError: the engine cannot be reached or is misconfigured; the message says how to fix it.
    """
    check = getattr(engine, "check", None)
    if callable(check):
        check()


def request_key(fingerprint: Mapping[str, Any], request: Request) -> str:
    """Return the cache key of ``request`` sent to an engine with ``fingerprint``."""
    return content_hash({"engine": dict(fingerprint), "request": request.canonical()})


def describe(fingerprint: Mapping[str, Any]) -> str:
    """Return a short human label of an engine, e.g. 'llamacpp:SmolLM2-135M-Instruct.Q4_1'."""
    return f"{fingerprint.get('backend', '?')}:{fingerprint.get('model', '?')}"
