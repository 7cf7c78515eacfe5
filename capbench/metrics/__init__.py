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
    "dcscore": (
        "capbench.metrics.dcscore",
        "DCScore",
        "FactConfig",
        "precision and recall of the caption's atomic facts against human facts (DeCapBench)",
    ),
    "balcap": (
        "capbench.metrics.balcap",
        "BalCap",
        "FactConfig",
        "BalCapRL rewards: pointable precision, reference recall, linguistic quality; b-CapScore",
    ),
    "caprl": (
        "capbench.metrics.caprl",
        "CapRL",
        "CapRLConfig",
        "CapRL QA utility: share of N drawn questions a text LLM answers right from the caption",
    ),
    "arena": (
        "capbench.metrics.arena",
        "Arena",
        "ArenaConfig",
        "CapArena-Auto: pairwise judgments against fixed baseline captions, 100 × (wins − losses) / pairs",
    ),
}


def build_metric(name: str, config: Any = None, **options: Any) -> Metric:
    """Build metric ``name`` from a config object, or from ``options`` (fields of its config class).

    Options that are not fields of the metric's config are ignored, so one set of command-line
    options can configure several metrics.
    """
    if name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}; choose from: {', '.join(sorted(METRICS))}")
    module_name, class_name, config_name, _ = METRICS[name]
    module = importlib.import_module(module_name)
    if config is None:
        config_cls = getattr(module, config_name)
        known = set(config_cls.__dataclass_fields__)
        config = config_cls(**{k: v for k, v in options.items() if k in known and v is not None})
    return getattr(module, class_name)(config)


def config_class(name: str) -> str:
    """Return the name of the config class of metric ``name``."""
    return METRICS[name][2]


__all__ = ["METRICS", "Judges", "Metric", "build_metric"]
