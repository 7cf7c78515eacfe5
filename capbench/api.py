"""capbench's public API: evaluate caption sets, read results back, build judges and metrics.

``capbench eval``, ``capbench arena``, capbench-rl's rewards and checkpoint evaluation, the
reward service and ``benchmarks/`` all build judges, metrics and runs through these functions.
Every check (names, settings, files, what a metric needs from the benchmark) happens in
:func:`prepare`, before any model loads or caption is generated. The building blocks live in
:mod:`capbench.build`, the results objects in :mod:`capbench.results`; both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capbench import build
from capbench.build import (
    build_judge,
    build_judges,
    build_metrics,
    cached_judge,
    caption_sets,
    check_settings,
    engine_options,
    judge_spec,
    load_benchmark_of,
    model_spec,
    open_cache,
    resolve_answer_mode,
    resolve_fact_protocol,
)
from capbench.config import EvalConfig
from capbench.data import Benchmark, benchmark_names, load_benchmark
from capbench.engines import EngineSpec, engine_class
from capbench.engines.base import preflight
from capbench.engines.cache import CachedEngine, ResponseCache
from capbench.errors import ConfigError, InputError
from capbench.evaluation import Evaluator, Progress, RunResult, check_needs, select_samples, shard_block
from capbench.metrics import Metric, build_metric, describe
from capbench.records import CaptionSet, Sample
from capbench.results import Evaluation, SampleRecord, SetResult, read_results, read_run
from capbench.shards import merge_shards, scoring_settings

__all__ = [
    "Evaluation", "Plan", "Reporter", "SampleRecord", "SetResult", "build_judge", "build_judges", "build_metrics",
    "cached_judge", "caption_sets", "catalogue", "check_settings", "engine_options", "evaluate", "judge_spec",
    "load_benchmark_of", "merge_shards", "model_spec", "open_cache", "prepare", "read_results", "read_run",
    "resolve_answer_mode", "resolve_fact_protocol", "run",
]  # fmt: skip

# ---------------------------------------------------------------- evaluation


class Reporter:
    """Receives what an evaluation is doing (the CLI draws bars from it; the default shows nothing)."""

    #: Judge-call progress (see :class:`capbench.evaluation.Progress`), or None.
    progress: Progress | None = None

    def loading(self, what: str) -> AbstractContextManager[Any]:
        """Wraps loading a model: ``what`` is e.g. 'judge llamacpp:smollm2'."""
        return nullcontext()

    def captioning(self, name: str, total: int) -> AbstractContextManager[Callable[[int], None]]:
        """Wraps generating ``total`` captions; yields a function told how many more are done."""
        return nullcontext(lambda n: None)


@dataclass
class Plan:
    """An evaluation checked and ready to run: nothing has loaded yet."""

    config: EvalConfig
    benchmark: Benchmark
    metrics: list[Metric]
    modes: dict[str, str]
    sets: list[CaptionSet]
    judges: dict[str, EngineSpec]
    model: EngineSpec | None
    generated_name: str | None


def prepare(config: EvalConfig | None = None, /, **settings: Any) -> Plan:
    """Check everything an evaluation needs, before any model loads or caption is generated.

    Raises:
        ConfigError: an unknown name or setting, a wrong type or value, a metric the benchmark cannot feed.
        InputError: a caption file or benchmark file that cannot be used.
        PluginError: a plugin the config names fails to import.
    """
    config = _config(config, settings)
    metrics, modes = build_metrics(config)
    judges = {"text": judge_spec(config, "judge")}
    vision = judge_spec(config, "vision_judge")
    if vision is not None:
        judges["vision"] = vision
    model = model_spec(config)
    if not metrics and model is None:
        raise ConfigError("metrics=[] only generates captions: give a model")
    if config.benchmark not in benchmark_names():
        from capbench import registry

        raise ConfigError(f"unknown benchmark {config.benchmark!r}; {registry.benchmarks.available()}")
    benchmark = load_benchmark_of(config)
    check_needs(benchmark, metrics)
    from capbench.captioning import default_name

    generated = (config.name or default_name(model.model)) if model is not None else None
    sets = caption_sets(config, benchmark, generated) if metrics else []
    for caption_set in sets:  # ids the benchmark lacks are named now, not after a judge loads
        select_samples(benchmark, caption_set, config.limit)
    return Plan(config, benchmark, metrics, modes, sets, judges, model, generated)  # type: ignore[arg-type]


def evaluate(config: EvalConfig | None = None, /, *, reporter: Reporter | None = None, **settings: Any) -> Evaluation:
    """Generate captions if a model is given, then score every caption set; resume earlier work.

    Takes an :class:`EvalConfig`, or its fields as keyword arguments (or both: the keywords
    replace the config's fields). Every setting is checked before any model loads. Returns the
    results by caption set name, the same objects :func:`read_run` gives for the run folders.

    Example::

        results = capbench.evaluate(benchmark="mini", captions={"mine": "my_captions.jsonl"},
                                    metrics=["captionqa"], judge="openai:Qwen/Qwen2.5-72B-Instruct",
                                    judge_options={"base_url": "http://localhost:8000/v1"})
        results["mine"].summary["captionqa"]["score"]
    """
    plan = prepare(_config(config, settings))
    return run(plan, reporter)


def run(plan: Plan, reporter: Reporter | None = None) -> Evaluation:
    """Carry out a prepared evaluation (this loads the models).

    A served judge (the ``openai`` engine) is built and checked before any caption is generated,
    so an unreachable or misconfigured server is named before hours of captioning; judges that
    load a model in this process load after captioning, when the captioning model is done.
    """
    reporter = reporter or Reporter()
    config = plan.config
    cache = open_cache(config)
    needs_judges = bool(plan.metrics) and any(m.judge_roles for m in plan.metrics)  # judge-free metrics load none
    judges: dict[str, CachedEngine] = {}
    if needs_judges and plan.model is not None:
        for role, spec in plan.judges.items():
            if spec.backend == "openai":
                judges[role] = build.judge_for(role, spec, config, cache)
                preflight(judges[role])
    shard = config.shard_spec
    generation = _generate(plan, cache, reporter) if plan.model is not None else None
    sets = list(plan.sets)
    # a shard's manifest is written even when none of its captions could be made, so the merge names it
    if generation is not None and (generation.caption_set.captions or shard) and plan.metrics:
        sets.insert(0, generation.caption_set)
    results: dict[str, SetResult] = {}
    if plan.metrics and sets:
        if needs_judges and len(judges) < len(plan.judges):
            with reporter.loading(f"judge {plan.judges['text'].label}"):
                if judges:
                    judges.update(
                        {r: build.judge_for(r, s, config, cache) for r, s in plan.judges.items() if r not in judges}
                    )
                else:
                    judges = build.build_judges(config, cache)
        evaluator = Evaluator(
            plan.benchmark,
            plan.metrics,
            judges,
            Path(config.results_dir),
            config.batch_size,
            reporter.progress,
            settings=scoring_settings(config),
        )
        for caption_set in sets:
            # generated captions are split as generation split them: over the images asked for, not those captioned
            selection = _to_caption(plan) if generation is not None and caption_set is generation.caption_set else None
            done = evaluator.evaluate(caption_set, config.limit, config.overwrite, shard, selection)
            results[caption_set.name] = _set_result(done, plan.benchmark.name)
    judges_used = {role: judge.fingerprint() for role, judge in judges.items()}
    return Evaluation(plan.benchmark.name, results, judges_used, plan.modes, config, generation)


def _set_result(done: RunResult, benchmark: str) -> SetResult:
    result = read_run(done.path)
    result.summary = dict(done.summaries)
    result.stats, result.unscored = dict(done.stats), dict(done.unscored)
    result.resumed, result.retried, result.first_error = dict(done.resumed), dict(done.retried), done.first_error
    result.name, result.benchmark = done.caption_set, benchmark
    return result


def _generate(plan: Plan, cache: ResponseCache, reporter: Reporter) -> Any:
    from capbench.captioning import CaptionConfig, Captioner
    from capbench.runs import RunDir

    config, spec = plan.config, plan.model
    assert spec is not None and plan.generated_name is not None
    caption = CaptionConfig(
        prompt=config.caption_prompt,
        max_tokens=config.caption_max_tokens,
        temperature=config.caption_temperature,
        seed=config.seed,
    )
    shard, chosen = config.shard_spec, _to_caption(plan)
    samples = shard.part(chosen) if shard else chosen
    with reporter.loading(f"model {spec.label}"):
        engine = CachedEngine(build.build_engine(spec), cache, spec=spec.to_dict())
    captioner = Captioner(engine, spec.to_dict(), caption, config.batch_size)
    folder = RunDir(Path(config.results_dir), plan.benchmark.name, plan.generated_name, shard).path
    with reporter.captioning(plan.generated_name, len(samples)) as advance:
        block = shard_block(shard, chosen) if shard else None
        return captioner.generate(samples, folder, plan.generated_name, config.regenerate, advance, block)


def _to_caption(plan: Plan) -> list[Sample]:
    """The images the model captions (before a shard takes its part): the benchmark's first ``limit``."""
    limit = plan.config.limit
    return list(plan.benchmark.samples[:limit] if limit else plan.benchmark.samples)


def _config(config: EvalConfig | None, settings: Mapping[str, Any]) -> EvalConfig:
    if config is None:
        return EvalConfig.from_dict(settings)
    if not isinstance(config, EvalConfig):
        raise ConfigError(f"evaluate() takes an EvalConfig or keyword settings, not {type(config).__name__}")
    return config.replace(**settings) if settings else config


# ---------------------------------------------------------------- what is installed


def catalogue(load_data: bool = True) -> dict[str, Any]:
    """Describe the benchmarks, metrics and engines this install offers, plugins included.

    A plugin that fails to import is listed with its error; it breaks nothing else.
    """
    import importlib.util

    from capbench import registry
    from capbench.data import benchmark_loader

    benchmarks: list[dict[str, Any]] = []
    for name, entry in registry.benchmarks.entries().items():
        row: dict[str, Any] = {"name": name, "description": entry.description, "origin": entry.origin}
        try:
            load = benchmark_loader(name)
            row["description"] = row["description"] or registry.first_line(load)
            download = getattr(load, "DOWNLOAD", None) or getattr(
                importlib.import_module(entry.target.partition(":")[0]), "DOWNLOAD", None
            )
            if download or not load_data:
                row["needs"] = download or "not loaded"
            else:
                bench = load_benchmark(name)
                row.update(
                    samples=len(bench.samples),
                    questions=sum(len(s.questions) for s in bench.samples),
                    domains=bench.domains,
                    example_captions={k: str(v) for k, v in bench.example_captions.items()},
                )
        except registry.PluginError as exc:
            row["error"] = str(exc)
        except (ConfigError, InputError) as exc:  # its data is a download, or a file to pass
            row["needs"] = str(exc)
        except Exception as exc:  # a plugin's loader that fails is listed as broken
            if entry.package is None:
                raise
            row["error"] = (
                f"benchmark {name!r} from package {entry.package} failed to load ({type(exc).__name__}: {exc})"
            )
        benchmarks.append(row)
    metrics: list[dict[str, Any]] = []
    for name, entry in registry.metrics.entries().items():
        row = {"name": name, "origin": entry.origin}
        try:
            info = describe(build_metric(name))
            row.update(
                description=entry.description or info.description,
                judges=list(info.judge_roles),
                needs=list(info.needs),
                range=list(info.value_range),
                higher_is_better=info.higher_is_better,
                unit=info.unit,
                headline=info.headline,
                rewards=[r[0] for r in info.rewards],
            )
        except registry.PluginError as exc:
            row["error"] = str(exc)
        except Exception as exc:  # a plugin's metric that fails to build is listed as broken
            if entry.package is None:
                raise
            row["error"] = f"metric {name!r} from package {entry.package} failed to build ({type(exc).__name__}: {exc})"
        metrics.append(row)
    engines: list[dict[str, Any]] = []
    for name, entry in registry.engines.entries().items():
        row = {"name": name, "description": entry.description, "origin": entry.origin}
        if entry.package is None:
            package = _ENGINE_PACKAGES.get(entry.target.partition(":")[0])
            row["available"] = package is None or importlib.util.find_spec(package) is not None
        else:
            try:
                row["description"] = registry.first_line(engine_class(name))
                row["available"] = True
            except registry.PluginError as exc:
                row.update(available=False, error=str(exc))
        engines.append(row)
    problems = [*registry.metrics.problems(), *registry.benchmarks.problems(), *registry.engines.problems()]
    return {"benchmarks": benchmarks, "metrics": metrics, "engines": engines, "problems": problems}


_ENGINE_PACKAGES = {
    "capbench.engines.llamacpp": "llama_cpp",
    "capbench.engines.vllm": "vllm",
    "capbench.engines.hf": "transformers",
    "capbench.engines.openai": "httpx",
}
