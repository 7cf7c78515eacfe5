"""Building blocks of an evaluation: engine specs, judges, metrics, caption sets, from an :class:`EvalConfig`.

``capbench eval`` and ``capbench arena``, capbench-rl's rewards, the reward service and
``benchmarks/`` build judges and metrics through these functions (via :mod:`capbench.api`),
never by copying the wiring.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from capbench.config import EvalConfig
from capbench.data import Benchmark, load_benchmark
from capbench.engines import DEFAULT_JUDGE, EngineSpec, build_engine, engine_class, parse_engine
from capbench.engines.cache import CachedEngine, ResponseCache
from capbench.engines.spec import check_options, parse_options
from capbench.errors import ConfigError, InputError
from capbench.metrics import Metric, build_metric, config_fields, describe, metric_names
from capbench.records import CaptionSet, read_caption_file


def resolve_answer_mode(mode: str, judge: str) -> str:
    """Resolve 'auto': the embedded 135M judge cannot write one letter reliably, so rank options."""
    if mode != "auto":
        return mode
    return "loglik" if judge == DEFAULT_JUDGE else "letter"


def resolve_fact_protocol(protocol: str, judge: str) -> str:
    """Resolve 'auto': the embedded judge gets its own bounded settings, every other the official ones."""
    if protocol != "auto":
        return protocol
    return "embedded" if judge == DEFAULT_JUDGE else "official"


def engine_options(options: Mapping[str, Any] | Sequence[str]) -> tuple[dict[str, Any], str | None]:
    """Split engine options (a mapping or ``KEY=VALUE`` strings) into the rest and a base URL.

    A list of base URLs is joined by commas, as the command line writes several servers.
    """
    pairs = dict(options) if isinstance(options, Mapping) else parse_options(list(options))
    base_url = pairs.pop("base_url", None)
    if isinstance(base_url, (list, tuple)):
        base_url = ",".join(str(u) for u in base_url)
    return pairs, None if base_url is None else str(base_url)


def judge_spec(config: EvalConfig, role: str = "judge") -> EngineSpec | None:
    """The engine spec of a judge role ('judge' or 'vision_judge'), checked against its engine's options."""
    text = getattr(config, role)
    if not text:
        return None
    options, base_url = engine_options(getattr(config, f"{role}_options"))
    spec = parse_engine(text, options, base_url)
    check_options(engine_class(spec.backend), spec)
    return spec


def model_spec(config: EvalConfig) -> EngineSpec | None:
    """The engine spec of the captioning model, or None when the config generates no captions."""
    if not config.model:
        return None
    from capbench import registry

    backend, sep, _ = config.model.partition(":")
    text = config.model if sep and backend in registry.engines.entries() else f"{config.engine}:{config.model}"
    options, base_url = engine_options(config.model_options)
    spec = parse_engine(text, options, base_url)
    check_options(engine_class(spec.backend), spec)
    return spec


def build_judge(spec: EngineSpec, cache: ResponseCache, record: str | os.PathLike[str] | None = None) -> CachedEngine:
    """Build a judge engine behind the cache; with ``record``, every reply also goes to that cassette."""
    engine = build_engine(spec)
    recorder = None
    if record:
        from capbench.engines.replay import CassetteWriter

        recorder = CassetteWriter(engine, Path(record))
    return CachedEngine(engine, cache, recorder, spec.to_dict())


def cached_judge(engine: Any, cache: bool | str | os.PathLike[str] = True) -> CachedEngine:
    """Put an engine object you built yourself (a test double, a custom client) behind capbench's judge cache.

    ``cache`` as in :attr:`EvalConfig.cache`: True = the shared cache, False = this process only, or a path.
    """
    return CachedEngine(engine, open_cache(EvalConfig(cache=cache)))


def open_cache(config: EvalConfig) -> ResponseCache:
    """The judge-call cache the config names."""
    if config.cache is True:
        return ResponseCache(None)
    if config.cache is False:
        return ResponseCache(":memory:")
    return ResponseCache(str(config.cache))


def build_judges(config: EvalConfig, cache: ResponseCache | None = None) -> dict[str, CachedEngine]:
    """Build the text judge and, if the config names one, the vision judge (this loads their models)."""
    cache = open_cache(config) if cache is None else cache
    text = judge_spec(config, "judge")
    assert text is not None
    judges = {"text": judge_for("text", text, config, cache)}
    vision = judge_spec(config, "vision_judge")
    if vision is not None:
        judges["vision"] = judge_for("vision", vision, config, cache)
    return judges


def build_metrics(config: EvalConfig) -> tuple[list[Metric], dict[str, str]]:
    """Build the config's metrics; return them and the resolved 'auto' settings.

    Shared settings (``seed``, ``answer_mode``, ``fact_protocol``, ``arena_order``, ``caprl_samples``,
    ``prompt_dir``) reach each metric whose config has them; per-metric settings override them and
    must be fields of that metric's config.

    Raises:
        ConfigError: an unknown metric (listing those there are), or a setting the metric does not have.
    """
    from capbench.metrics.facts import FactConfig

    judge = config.judge
    modes = {
        "answer_mode": resolve_answer_mode(config.answer_mode, judge),
        "fact_protocol": resolve_fact_protocol(config.fact_protocol, judge),
        "arena_order": config.arena_order,
    }
    prompt_dir = str(config.prompt_dir) if config.prompt_dir else None
    shared = {
        "seed": config.seed,
        "prompt_dir": prompt_dir,
        "order": config.arena_order,
        "samples": config.caprl_samples,
    }
    metrics: list[Metric] = []
    for name in config.metric_names:
        if name not in metric_names():
            from capbench import registry

            raise ConfigError(f"unknown metric {name!r}; {registry.metrics.available()}")
        own = config.metric_settings(name)
        known = set(config_fields(name))
        unknown = sorted(k for k in own if k not in known)
        if unknown:
            raise ConfigError(
                f"metric {name!r} has no setting {', '.join(map(repr, unknown))}; its settings: "
                f"{', '.join(sorted(known)) or 'none'}"
            )
        check_settings(name, own)
        if _config_name(name) == "FactConfig":
            preset = FactConfig.preset(modes["fact_protocol"], seed=config.seed, prompt_dir=prompt_dir)
            try:
                metric = build_metric(name, dataclasses.replace(preset, **own) if own else preset)
            except TypeError as exc:
                raise ConfigError(f"metric {name!r}: {exc}") from None
        else:
            answer_mode = modes["answer_mode"]
            if name == "arena":
                answer_mode = "loglik" if answer_mode == "loglik" else "generate"
            base = {**shared, "answer_mode": answer_mode}
            metric = build_metric(name, **{**{k: v for k, v in base.items() if k in known}, **own})
        describe(metric)  # a plugin's malformed declaration is named now, not after scoring
        metrics.append(metric)
    return metrics, modes


def check_settings(name: str, settings: Mapping[str, Any]) -> None:
    """Check each of a metric's settings against its config field's type.

    Raises:
        ConfigError: a value of the wrong type, naming the metric, the setting and the type.
    """
    import typing

    from capbench.config import _describe, _is_instance
    from capbench.metrics import config_type

    config_cls = config_type(name)
    if config_cls is None or not settings:
        return
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # a plugin's annotations that cannot be resolved: its own checks apply
        return
    for key, value in settings.items():
        hint = hints.get(key)
        if hint is not None and not _is_instance(value, hint):
            raise ConfigError(
                f"metric {name!r}: setting {key!r} must be {_describe(hint)}, "
                f"not {type(value).__name__} ({value!r:.40})"
            )


def _config_name(name: str) -> str:
    from capbench.metrics import config_class

    return config_class(name)


def load_benchmark_of(config: EvalConfig) -> Benchmark:
    """Load the config's benchmark, with images when a vision judge or a captioning model will look at them."""
    return load_benchmark(
        config.benchmark, with_images=bool(config.vision_judge or config.model), **dict(config.benchmark_options)
    )


def caption_sets(config: EvalConfig, benchmark: Benchmark, generated: str | None = None) -> list[CaptionSet]:
    """Read the caption sets the config names (files, mappings, the benchmark's examples).

    ``generated`` is the name the model's caption set will take, checked for clashes now.

    Raises:
        InputError: a file cannot be read or holds bad captions.
        ConfigError: nothing to score, or two sets of one name.
    """
    sets: list[CaptionSet] = []
    if isinstance(config.captions, Mapping):
        for name, value in config.captions.items():
            if isinstance(value, Mapping):
                sets.append(_mapping_set(str(name), value))
            elif isinstance(value, (str, os.PathLike)):
                sets.append(read_caption_file(value, str(name)))
            else:
                raise ConfigError(f"EvalConfig.captions[{name!r}] must be a file path or an {{id: caption}} mapping")
    else:
        files = list(config.captions)
        if config.name and len(files) + int(generated is not None) != 1:
            raise ConfigError(
                "name (--name) names one caption set; give exactly one --captions file (or --model) with it"
            )
        name = config.name if generated is None else None
        sets += [read_caption_file(path, name) for path in files]
    if config.example_captions:
        if not benchmark.example_captions:
            raise ConfigError(f"benchmark {benchmark.name!r} ships no example captions; pass caption files")
        sets += [read_caption_file(path, name) for name, path in benchmark.example_captions.items()]
    names = ([generated] if generated is not None else []) + [s.name for s in sets]
    if not names:
        raise ConfigError(
            "nothing to score: pass --captions FILE, --model MODEL or --example-captions "
            "(captions=, model=, example_captions= in Python)"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"two caption sets are named {duplicates[0]!r}; copy or rename one of the files "
            "(--name names a set only when you score one)"
        )
    return sets


def _mapping_set(name: str, captions: Mapping[Any, Any]) -> CaptionSet:
    bad = [k for k, v in captions.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise InputError(f"caption set {name!r}: id {bad[0]!r} has no caption (an empty or non-text value)")
    if not captions:
        raise InputError(f"caption set {name!r} is empty")
    return CaptionSet(name, {str(k): v for k, v in captions.items()}, source=f"(captions given in code: {name})")


def judge_for(role: str, spec: EngineSpec, config: EvalConfig, cache: ResponseCache) -> CachedEngine:
    """Build the judge of a role ('text' records to the config's cassette, if any)."""
    return build_judge(spec, cache, config.record_judge if role == "text" else None)
