"""Caption metrics, registered by name and imported only when used."""

from __future__ import annotations

import importlib
from typing import Any

from capbench.errors import ConfigError
from capbench.metrics.base import Judges, Metric

#: Metric name -> (module, class, config class, one-line description).
METRICS: dict[str, tuple[str, str, str, str]] = {
    "captionqa": (
        "capbench.metrics.captionqa",
        "CaptionQA",
        "CaptionQAConfig",
        "multiple-choice questions answered from the caption alone (CaptionQA)",
    ),
}


def build_metric(name: str, **options: Any) -> Metric:
    """Build metric ``name``; ``options`` are fields of its config dataclass."""
    if name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}; choose from: {', '.join(sorted(METRICS))}")
    module_name, class_name, config_name, _ = METRICS[name]
    module = importlib.import_module(module_name)
    config_cls = getattr(module, config_name)
    known = set(config_cls.__dataclass_fields__)
    config = config_cls(**{k: v for k, v in options.items() if k in known and v is not None})
    return getattr(module, class_name)(config)


__all__ = ["METRICS", "Judges", "Metric", "build_metric"]
