"""Engine backends, registered by name and imported only when used.

A judge or model is named ``ENGINE:MODEL``: ``llamacpp:smollm2`` (the embedded CPU judge),
``llamacpp:/path/to/model.gguf``, ``replay:/path/to/cassette.jsonl``.
"""

from __future__ import annotations

import importlib
from typing import Any

from capbench.engines.base import (
    Choice,
    Engine,
    ImagePart,
    JsonSchema,
    Message,
    Request,
    Response,
    Sampling,
    TextPart,
)
from capbench.errors import ConfigError

#: Backend name -> (module, class, one-line description).
ENGINES: dict[str, tuple[str, str, str]] = {
    "llamacpp": ("capbench.engines.llamacpp", "LlamaCppEngine", "embedded llama.cpp on the CPU (GGUF models)"),
    "replay": ("capbench.engines.replay", "ReplayEngine", "answers from a recorded cassette (tests)"),
}

DEFAULT_JUDGE = "llamacpp:smollm2"


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``ENGINE:MODEL`` into its two parts, checking the engine name."""
    backend, sep, model = spec.partition(":")
    if not sep or not model:
        raise ConfigError(f"engine spec {spec!r} is not ENGINE:MODEL (e.g. {DEFAULT_JUDGE})")
    if backend not in ENGINES:
        raise ConfigError(f"unknown engine {backend!r} in {spec!r}; choose one of: {', '.join(sorted(ENGINES))}")
    return backend, model


def build_engine(spec: str, **options: Any) -> Engine:
    """Build the engine named by ``spec``; ``options`` go to its constructor."""
    backend, model = parse_spec(spec)
    module_name, class_name, _ = ENGINES[backend]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(model, **options)


__all__ = [
    "DEFAULT_JUDGE",
    "ENGINES",
    "Choice",
    "Engine",
    "ImagePart",
    "JsonSchema",
    "Message",
    "Request",
    "Response",
    "Sampling",
    "TextPart",
    "build_engine",
    "parse_spec",
]
