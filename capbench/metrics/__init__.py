"""Caption metrics, registered by name and imported only when used."""

from __future__ import annotations

import importlib
from typing import Any

from capbench.errors import ConfigError
from capbench.metrics.base import Judges, Metric
from capbench.records import RESERVED_METRIC_NAMES, MetricInfo

#: capbench's own metrics: name -> (module, class, config class ('' = the class's ``Config``, or none),
#: one-line description). An entry added at run time is a metric like these; installed packages
#: add metrics through the ``capbench.metrics`` entry-point group (:mod:`capbench.registry`).
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


def metric_names() -> list[str]:
    """Return every metric this install offers: capbench's own, then those of installed plugins."""
    from capbench import registry

    return registry.metrics.names()


def metric_class(name: str) -> type:
    """Return the class of metric ``name`` (a plugin's is imported here).

    Raises:
        ConfigError: no such metric (the message lists those there are).
        PluginError: the plugin that provides it failed to import.
    """
    from capbench import registry

    cls = registry.metrics.load(name)
    if not isinstance(cls, type) or not callable(getattr(cls, "score", None)):
        raise registry.PluginError(
            f"metric {name!r} from {registry.metrics.entry(name).origin} is not a metric class "
            "(it needs score(), summarize() and units() methods)"
        )
    return cls


def config_type(name: str) -> type | None:
    """Return the config dataclass of metric ``name`` (None when it takes no config)."""
    if name in METRICS and METRICS[name][2]:
        module = importlib.import_module(METRICS[name][0])
        return getattr(module, METRICS[name][2])
    return getattr(metric_class(name), "Config", None)


def config_fields(name: str) -> list[str]:
    """Return the names of the settings metric ``name`` takes."""
    config_cls = config_type(name)
    return list(getattr(config_cls, "__dataclass_fields__", {})) if config_cls is not None else []


def build_metric(name: str, config: Any = None, strict: bool = False, **options: Any) -> Metric:
    """Build metric ``name`` from a config object, or from ``options`` (fields of its config class).

    Options set to None are left at their defaults. Options that are not fields of the metric's
    config are ignored, so one set of command-line options can configure several metrics;
    with ``strict`` they are an error naming the fields there are.

    Raises:
        ConfigError: unknown metric, an unknown option (``strict``), or a value the config refuses.
    """
    cls = metric_class(name)
    config_cls = config_type(name)
    if config is None and config_cls is not None:
        known = set(getattr(config_cls, "__dataclass_fields__", {}))
        unknown = sorted(k for k in options if k not in known)
        if strict and unknown:
            raise ConfigError(
                f"metric {name!r} has no setting {', '.join(map(repr, unknown))}; its settings: "
                f"{', '.join(sorted(known)) or 'none'}"
            )
        try:
            config = config_cls(**{k: v for k, v in options.items() if k in known and v is not None})
        except TypeError as exc:
            raise ConfigError(f"metric {name!r}: {exc}") from None
    elif config is None and strict and options:
        raise ConfigError(f"metric {name!r} takes no settings (given: {', '.join(sorted(options))})")
    return cls(config) if config is not None else cls()


def config_class(name: str) -> str:
    """Return the name of the config class of metric ``name`` ('' when it takes none)."""
    config_cls = config_type(name)
    return config_cls.__name__ if config_cls is not None else ""


def describe(metric: Any) -> MetricInfo:
    """Return what ``metric`` (an instance or class) declares about its results, with defaults.

    A metric may declare ``title``, ``description``, ``columns``, ``unit``, ``breakdowns``,
    ``note`` and ``rewards`` (see :class:`~capbench.records.MetricInfo`); only ``name``,
    ``higher_is_better``, ``value_range``, ``needs`` and ``judge_roles`` are required.

    Raises:
        PluginError: the declaration is malformed (named with the metric).
    """
    from capbench.registry import PluginError

    name = getattr(metric, "name", None)
    try:
        low, high = (float(x) for x in metric.value_range)
        columns = tuple((str(label), str(key)) for label, key in getattr(metric, "columns", (("score", "score"),)))
        info = MetricInfo(
            name=str(name),
            title=str(getattr(metric, "title", "") or name),
            description=str(getattr(metric, "description", "") or _doc_line(metric)),
            columns=columns or (("score", "score"),),
            unit=str(getattr(metric, "unit", "")),
            value_range=(low, high),
            higher_is_better=bool(metric.higher_is_better),
            needs=tuple(sorted(metric.needs)),
            judge_roles=tuple(metric.judge_roles),
            breakdowns=tuple((str(a), str(b), str(c)) for a, b, c in getattr(metric, "breakdowns", ())),
            note=str(getattr(metric, "note", "")),
            rewards=tuple((str(a), str(b), float(c)) for a, b, c in getattr(metric, "rewards", ())),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise PluginError(f"metric {name!r} declares itself incompletely ({exc})") from None
    if not isinstance(name, str) or name in RESERVED_METRIC_NAMES or not name:
        raise PluginError(f"metric name {name!r} is empty or reserved ({', '.join(sorted(RESERVED_METRIC_NAMES))})")
    return info


def _doc_line(metric: Any) -> str:
    doc = (getattr(metric, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def reward_table() -> dict[str, tuple[str, str, float]]:
    """Every RL reward the installed metrics declare: reward name -> (metric, value key, divisor into [0, 1]).

    A metric whose plugin fails to import is left out here (it is reported where it is used).
    """
    from capbench.registry import PluginError

    table: dict[str, tuple[str, str, float]] = {}
    for name in metric_names():
        try:
            info = describe(metric_class(name))
        except PluginError:
            continue
        for reward, key, scale in info.rewards:
            table.setdefault(reward, (name, key, scale))
    return table


__all__ = [
    "METRICS",
    "Judges",
    "Metric",
    "MetricInfo",
    "build_metric",
    "config_fields",
    "describe",
    "metric_class",
    "metric_names",
    "reward_table",
]
