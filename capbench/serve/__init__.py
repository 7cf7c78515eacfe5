"""capbench's scorers as an HTTP reward service (``capbench serve``), for any trainer.

``POST /v1/score`` computes capbench rewards and metrics for a batch of items (a caption, its
image and references, or a benchmark sample id); ``POST /openrlhf/{reward}`` answers OpenRLHF's
``--remote_rm_url``; ``GET /health`` and ``GET /metrics`` (Prometheus) are for operations.
Behind it are the metrics, engines, judge cache and settings of ``capbench eval``, built through
the public API. docs/serve.md describes the contract.

FastAPI and uvicorn (the ``serve`` extra) are imported only when a service starts::

    from capbench.serve import Running, ServeConfig

    with Running(ServeConfig(judge="openai:Qwen/Qwen2.5-72B-Instruct",
                             judge_options={"base_url": "http://localhost:8000/v1"}, port=0)) as service:
        print(service.url)   # http://127.0.0.1:<port>
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ServeConfig": "capbench.serve.config",
    "config_from_options": "capbench.serve.config",
    "prepare": "capbench.serve.service",
    "Service": "capbench.serve.service",
    "create_app": "capbench.serve.app",
    "serve": "capbench.serve.server",
    "Running": "capbench.serve.server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'capbench.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
