"""capbench's public API: evaluate caption sets, read results back, build judges and metrics.

``capbench eval``, ``capbench arena``, capbench-rl's rewards and checkpoint evaluation, the
reward service and ``benchmarks/`` all build judges, metrics and runs through these functions.
Every check (names, settings, files, what a metric needs from the benchmark) happens in
:func:`prepare`, before any model loads or caption is generated.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capbench.config import EvalConfig
from capbench.data import Benchmark, benchmark_names, load_benchmark
from capbench.engines import DEFAULT_JUDGE, EngineSpec, build_engine, engine_class, parse_engine
from capbench.engines.cache import CachedEngine, ResponseCache
from capbench.engines.spec import check_options, parse_options
from capbench.errors import CapbenchError, ConfigError, InputError
from capbench.evaluation import Evaluator, Progress, RunResult, check_needs
from capbench.metrics import Metric, build_metric, config_fields, describe, metric_names
from capbench.records import CaptionSet, MetricInfo, SampleScore, check_format, read_caption_file
from capbench.runs import ScoreLog, safe_name

# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class SampleRecord:
    """One sample of a run: its caption and each metric's score of it."""

    sample_id: str
    caption: str
    scores: Mapping[str, SampleScore]


@dataclass
class SetResult:
    """One caption set's results on one benchmark, computed now or read from its run folder.

    ``summary`` maps each metric to its headline numbers (``summary["balcap"]["score"]``);
    ``samples`` holds the per-sample records; ``info`` what each metric declares about its numbers.
    """

    name: str
    benchmark: str
    path: Path
    summary: dict[str, dict[str, Any]]
    samples: list[SampleRecord]
    info: dict[str, MetricInfo]
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)
    #: Judge usage of the session that produced it (calls, failures, cache hits, tokens).
    stats: dict[str, Any] = field(default_factory=dict)
    unscored: dict[str, int] = field(default_factory=dict)
    resumed: dict[str, int] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None

    @property
    def failed_share(self) -> float:
        """The share of the session's judge calls that failed (0 when none was made)."""
        calls = self.stats.get("judge_calls", 0)
        return self.stats.get("failures", 0) / calls if calls else 0.0

    def headline(self, metric: str) -> float | None:
        """The metric's headline number (``info[metric].headline`` of its summary)."""
        key = self.info[metric].headline if metric in self.info else "score"
        value = self.summary.get(metric, {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (one entry of ``capbench eval --json``'s ``runs``)."""
        return {
            "caption_set": self.name,
            "results_dir": str(self.path),
            "samples": len(self.samples),
            "metrics": self.summary,
            "unscored": self.unscored,
            "resumed_samples": self.resumed,
            "retried_samples": self.retried,
            **self.stats,
            "first_error": self.first_error,
        }


@dataclass
class Evaluation(Mapping[str, SetResult]):
    """What :func:`evaluate` returns: each caption set's :class:`SetResult` by name, and the run's settings."""

    benchmark: str
    sets: dict[str, SetResult]
    judges: dict[str, Any]
    modes: dict[str, str]
    config: EvalConfig
    generation: Any = None

    def __getitem__(self, name: str) -> SetResult:
        if name not in self.sets:
            raise KeyError(f"no caption set {name!r}; the sets: {', '.join(self.sets)}")
        return self.sets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.sets)

    def __len__(self) -> int:
        return len(self.sets)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report ``capbench eval --json`` prints."""
        report: dict[str, Any] = {
            "benchmark": self.benchmark,
            "judges": self.judges,
            **self.modes,
            "runs": [s.to_dict() for s in self.sets.values()],
        }
        if self.generation is not None:
            report["generation"] = self.generation.to_dict()
        return report


def read_run(path: str | os.PathLike[str]) -> SetResult:
    """Read one run folder (``<results>/<benchmark>/<caption set>/``) back as a :class:`SetResult`.

    Only the samples in its ``captions.jsonl`` are read (what its manifest summarises); a metric's
    description comes from the manifest (results format 2) or, for older results, from the
    installed metric.

    Raises:
        InputError: no manifest, an unreadable or newer-format manifest, or a damaged score file.
    """
    folder = Path(path)
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder}: no manifest.json; not a capbench run folder (or a run killed early)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{manifest_path}: unreadable ({exc}); rerun `capbench eval --overwrite` for it") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("metrics"), dict):
        raise InputError(f"{manifest_path}: not a capbench manifest (no 'metrics' mapping)")
    check_format(manifest.get("format", 0), str(manifest_path))
    captions: dict[str, str] = {}
    if (folder / "captions.jsonl").exists():
        captions = dict(read_caption_file(folder / "captions.jsonl").captions)
    summary: dict[str, dict[str, Any]] = {}
    info: dict[str, MetricInfo] = {}
    scores: dict[str, dict[str, SampleScore]] = {}
    for name, entry in manifest["metrics"].items():
        if not isinstance(entry, dict):
            continue
        summary[name] = dict(entry.get("summary") or {})
        described = _info(name, entry)
        if described is not None:
            info[name] = described
        log_path = folder / f"{safe_name(name)}.jsonl"
        if log_path.exists():
            scores[name] = ScoreLog(log_path).load(repair=False)
    ids = list(captions) or sorted({i for by_id in scores.values() for i in by_id})
    samples = [
        SampleRecord(i, captions.get(i, ""), {m: by_id[i] for m, by_id in scores.items() if i in by_id}) for i in ids
    ]
    sessions = manifest.get("sessions") or [{}]
    last = sessions[-1] if isinstance(sessions[-1], dict) else {}
    stats = {k: v for k, v in last.items() if isinstance(v, (int, float)) and k != "seconds"}
    caption_set = manifest.get("caption_set") if isinstance(manifest.get("caption_set"), dict) else {}
    return SetResult(
        name=str(caption_set.get("name") or folder.name),
        benchmark=str(manifest.get("benchmark") or folder.parent.name),
        path=folder,
        summary=summary,
        samples=samples,
        info=info,
        manifest=manifest,
        stats=stats,
        unscored={m: sum(s.unscored for s in by_id.values()) for m, by_id in scores.items()},
    )


def read_results(
    results_dir: str | os.PathLike[str] = "results", benchmark: str | None = None
) -> dict[str, dict[str, SetResult]]:
    """Read every run under a results folder: ``{benchmark: {caption set: SetResult}}``.

    Raises:
        InputError: the folder does not exist, or a run in it cannot be read.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such results folder; run `capbench eval` first, or pass the folder it wrote to")
    out: dict[str, dict[str, SetResult]] = {}
    for manifest in sorted(root.glob("*/*/manifest.json")):
        result = read_run(manifest.parent)
        if benchmark is None or result.benchmark == benchmark:
            out.setdefault(result.benchmark, {})[result.name] = result
    return out


def _info(name: str, entry: Mapping[str, Any]) -> MetricInfo | None:
    if isinstance(entry.get("info"), dict):
        return MetricInfo.from_dict(entry["info"])
    try:  # results from before format 2: ask the installed metric
        return describe(build_metric(name))
    except CapbenchError:
        return None


# ---------------------------------------------------------------- building blocks


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
    judges = {"text": build_judge(text, cache, config.record_judge)}
    vision = judge_spec(config, "vision_judge")
    if vision is not None:
        judges["vision"] = build_judge(vision, cache)
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
    """Carry out a prepared evaluation (this loads the models)."""
    reporter = reporter or Reporter()
    config = plan.config
    cache = open_cache(config)
    generation = _generate(plan, cache, reporter) if plan.model is not None else None
    sets = list(plan.sets)
    if generation is not None and generation.caption_set.captions and plan.metrics:
        sets.insert(0, generation.caption_set)
    results: dict[str, SetResult] = {}
    judges_used: dict[str, Any] = {}
    if plan.metrics and sets:
        judges: dict[str, CachedEngine] = {}
        if any(m.judge_roles for m in plan.metrics):  # a judge-free metric loads no judge
            with reporter.loading(f"judge {plan.judges['text'].label}"):
                judges = build_judges(config, cache)
        judges_used = {role: judge.fingerprint() for role, judge in judges.items()}
        evaluator = Evaluator(
            plan.benchmark, plan.metrics, judges, Path(config.results_dir), config.batch_size, reporter.progress
        )
        for caption_set in sets:
            done = evaluator.evaluate(caption_set, config.limit, config.overwrite)
            results[caption_set.name] = _set_result(done, plan.benchmark.name)
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
    samples = list(plan.benchmark.samples[: config.limit] if config.limit else plan.benchmark.samples)
    with reporter.loading(f"model {spec.label}"):
        engine = CachedEngine(build_engine(spec), cache, spec=spec.to_dict())
    captioner = Captioner(engine, spec.to_dict(), caption, max(config.batch_size, 16))
    folder = RunDir(Path(config.results_dir), plan.benchmark.name, plan.generated_name).path
    with reporter.captioning(plan.generated_name, len(samples)) as advance:
        return captioner.generate(samples, folder, plan.generated_name, config.regenerate, advance)


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
        except ConfigError as exc:  # its data is a download, or a file to pass
            row["needs"] = str(exc)
        except InputError as exc:
            row["needs"] = str(exc)
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
