"""What ``capbench eval`` and ``capbench list`` do once their options are parsed."""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from capbench.captioning import CaptionConfig, Captioner, GenerationReport, default_name
from capbench.data import BENCHMARKS, Benchmark, load_benchmark
from capbench.engines import DEFAULT_JUDGE, ENGINES, EngineSpec, build_engine, parse_engine
from capbench.engines.cache import CachedEngine, ResponseCache
from capbench.errors import ConfigError
from capbench.evaluation import Evaluator, RunResult, check_needs
from capbench.metrics import METRICS, Metric, build_metric, config_class
from capbench.records import CaptionSet, read_caption_file
from capbench.runs import RunDir


class _RichProgress:
    """One progress bar per caption set, counting its judge requests (cached ones included)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.planned = 0
        self.submitted_total = 0

    def start(self, caption_set: str, planned: int) -> None:
        self.planned, self.submitted_total = planned, 0
        self.task = self.progress.add_task(caption_set, total=planned, cached=0)

    def submitted(self, n: int) -> None:
        # A metric that cannot plan its requests ahead grows the total as it submits them.
        self.submitted_total += n
        if self.task is not None and self.submitted_total > self.planned:
            self.progress.update(self.task, total=self.submitted_total)

    def completed(self, cached: bool) -> None:
        if self.task is None:
            return
        fields = self.progress.tasks[self.task].fields
        self.progress.update(self.task, advance=1, cached=fields["cached"] + int(cached))


def resolve_answer_mode(mode: str, judge_spec: str) -> str:
    """Resolve 'auto': the embedded 135M judge cannot write one letter reliably, so rank options."""
    if mode != "auto":
        return mode
    return "loglik" if judge_spec == DEFAULT_JUDGE else "letter"


def resolve_fact_protocol(protocol: str, judge_spec: str) -> str:
    """Resolve 'auto': the embedded judge gets its own bounded settings, every other the official ones."""
    if protocol != "auto":
        return protocol
    return "embedded" if judge_spec == DEFAULT_JUDGE else "official"


def benchmark_from(opts: Mapping[str, Any]) -> Benchmark:
    """Load the benchmark the options name, with images when a vision judge or a captioner will look at them."""
    return load_benchmark(
        opts["benchmark"],
        with_images=bool(opts.get("vision_judge") or opts.get("model")),
        images_dir=opts.get("images_dir"),
        data_file=opts.get("data_file"),
        dataset=opts.get("dataset"),
        split=opts.get("split"),
    )


def caption_sets(
    opts: Mapping[str, Any], benchmark_examples: Mapping[str, Any], generated: Sequence[CaptionSet] = ()
) -> list[CaptionSet]:
    """Read every caption set the options name; ``generated`` sets (from --model) come first."""
    files = list(opts["caption_files"])
    if opts.get("name") and len(files) + len(generated) != 1:
        raise ConfigError("--name names one caption set; give exactly one --captions (or --model) with it")
    sets = [*generated, *(read_caption_file(path, opts.get("name")) for path in files)]
    if opts.get("example_captions"):
        if not benchmark_examples:
            raise ConfigError("this benchmark ships no example captions; pass --captions FILE")
        sets += [read_caption_file(path, name) for name, path in benchmark_examples.items()]
    if not sets:
        raise ConfigError("nothing to score: pass --captions FILE, --model MODEL or --example-captions")
    names = [s.name for s in sets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"two caption sets are named {duplicates[0]!r}; copy or rename one of the files "
            "(--name names a set only when you score one)"
        )
    return sets


def engine_spec(opts: Mapping[str, Any], role: str, default: str | None = None) -> EngineSpec | None:
    """The engine spec of a role ('judge', 'vision_judge' or 'model') with its options and base URL."""
    if role == "model":
        model = opts.get("model")
        text = f"{opts.get('engine') or 'vllm'}:{model}" if model else None
    else:
        text = opts.get(role) or default
    if not text:
        return None
    return parse_engine(text, opts.get(f"{role}_opt") or (), opts.get(f"{role}_base_url"))


def build_judge(spec: EngineSpec, opts: Mapping[str, Any], cache: ResponseCache, record: bool = True) -> CachedEngine:
    """Build a judge engine behind the cache; with --record-judge, every reply goes to a cassette."""
    engine = build_engine(spec)
    recorder = None
    if record and opts.get("record_judge"):
        from capbench.engines.replay import CassetteWriter

        recorder = CassetteWriter(engine, opts["record_judge"])
    return CachedEngine(engine, cache, recorder, spec.to_dict())


def build_judges(opts: Mapping[str, Any], cache: ResponseCache) -> dict[str, CachedEngine]:
    """Build the text judge (default: the embedded one) and, if asked for, the vision judge."""
    judge_spec = engine_spec(opts, "judge", DEFAULT_JUDGE)
    assert judge_spec is not None
    judges = {"text": build_judge(judge_spec, opts, cache)}
    vision_spec = engine_spec(opts, "vision_judge")
    if vision_spec is not None:
        judges["vision"] = build_judge(vision_spec, opts, cache, record=False)
    return judges


def build_metrics(opts: Mapping[str, Any], judge_spec: str) -> tuple[list[Metric], dict[str, str]]:
    """Build the metrics the options name; return them and the resolved auto settings."""
    from capbench.metrics.facts import FactConfig

    modes = {
        "answer_mode": resolve_answer_mode(opts["answer_mode"], judge_spec),
        "fact_protocol": resolve_fact_protocol(opts["fact_protocol"], judge_spec),
        "arena_order": opts.get("arena_order") or "both",
    }
    prompt_dir = str(opts["prompt_dir"]) if opts.get("prompt_dir") else None
    names = [m.strip() for m in opts["metrics"].split(",") if m.strip()]
    if not names:
        raise ConfigError(f"--metrics {opts['metrics']!r} names no metric; choose from: {', '.join(METRICS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"a metric is named twice in --metrics {opts['metrics']!r}")
    metrics = []
    for name in names:
        config = None
        if name in METRICS and config_class(name) == "FactConfig":
            config = FactConfig.preset(modes["fact_protocol"], seed=opts["seed"], prompt_dir=prompt_dir)
        answer_mode = modes["answer_mode"]
        if name == "arena":
            answer_mode = "loglik" if answer_mode == "loglik" else "generate"
        metrics.append(
            build_metric(
                name,
                config,
                seed=opts["seed"],
                answer_mode=answer_mode,
                prompt_dir=prompt_dir,
                order=opts.get("arena_order"),
                samples=opts.get("caprl_samples"),
            )
        )
    return metrics, modes


def run(opts: Mapping[str, Any]) -> None:
    """Run ``capbench eval``: generate captions if --model is given, then score every caption set."""
    console = Console(stderr=True)
    judge_spec = engine_spec(opts, "judge", DEFAULT_JUDGE)
    assert judge_spec is not None
    spec = judge_spec.label
    only_generate = opts["metrics"].strip() == "none"
    metrics, modes = ([], {}) if only_generate else build_metrics(opts, spec)
    benchmark = benchmark_from(opts)
    check_needs(benchmark, metrics)  # refuse a metric the benchmark cannot feed before any model loads
    cache = ResponseCache(":memory:" if opts.get("no_cache") else None)
    generation = generate_captions(opts, benchmark, cache, console)
    generated = [generation.caption_set] if generation is not None and generation.caption_set.captions else []
    if only_generate:
        if generation is None:
            raise ConfigError("--metrics none only generates captions: pass --model")
        _report_generation(generation, opts["as_json"])
        return
    sets = caption_sets(opts, benchmark.example_captions, generated)
    with console.status(f"loading judge {spec}"):
        judges = build_judges(opts, cache)
    results: list[RunResult] = []
    with judge_progress(console, opts["as_json"]) as progress:
        evaluator = Evaluator(benchmark, metrics, judges, opts["results_dir"], opts["batch_size"], progress)
        for caption_set in sets:
            results.append(evaluator.evaluate(caption_set, opts.get("limit"), opts["overwrite"]))
    report = {
        "benchmark": benchmark.name,
        "judges": {role: judge.fingerprint() for role, judge in judges.items()},
        **modes,
        "runs": [r.to_dict() for r in results],
    }
    if generation is not None:
        report["generation"] = generation.to_dict()
    if opts["as_json"]:
        click.echo(json.dumps(report, indent=2))
    else:
        if generation is not None:
            _report_generation(generation, False)
        print_results(results, [m.name for m in metrics], benchmark, spec, modes)
    check_failures(results, opts.get("fail_at", 1.0))


def check_failures(results: Sequence[RunResult], fail_at: float) -> None:
    """Exit with status 1 (one line on stderr) when a run's share of failed judge calls reaches ``fail_at``."""
    over = [r for r in results if r.stats.get("failures", 0) and r.failed_share >= fail_at]
    if not over:
        return
    worst = max(over, key=lambda r: r.failed_share)
    raise click.ClickException(
        f"{worst.stats['failures']} of {worst.stats['judge_calls']} judge calls failed in caption set "
        f"{worst.caption_set!r} (first error: {worst.first_error}); fix the judge and rerun the same command: "
        "only the failed calls are asked again"
    )


@contextmanager
def judge_progress(console: Console, transient: bool) -> Iterator[_RichProgress]:
    """Show a bar counting judge calls, with their total, cache hits and an ETA; yield its receiver."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("judge calls ({task.fields[cached]} cached)"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=transient) as bar:
        yield _RichProgress(bar)


def generate_captions(
    opts: Mapping[str, Any], benchmark: Benchmark, cache: ResponseCache, console: Console
) -> GenerationReport | None:
    """Caption the benchmark's images with --model (resuming earlier work); None without --model."""
    spec = engine_spec(opts, "model")
    if spec is None:
        return None
    config = CaptionConfig(
        prompt=opts.get("caption_prompt") or "default",
        max_tokens=opts.get("caption_max_tokens") or 1024,
        temperature=opts.get("caption_temperature") or 0.0,
        seed=opts.get("seed") or 0,
    )
    name = opts.get("name") or default_name(spec.model)
    samples = list(benchmark.samples[: opts.get("limit")] if opts.get("limit") else benchmark.samples)
    with console.status(f"loading model {spec.label}"):
        engine = CachedEngine(build_engine(spec), cache, spec=spec.to_dict())
    captioner = Captioner(engine, spec.to_dict(), config, opts.get("batch_size") or 16)
    folder = RunDir(opts["results_dir"], benchmark.name, name).path  # beside the set's scores
    columns = (TextColumn("captioning {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(name, total=len(samples))
        report = captioner.generate(
            samples, folder, name, opts.get("regenerate", False), lambda n: bar.update(task, advance=n)
        )
    return report


def _report_generation(report: GenerationReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"generation": report.to_dict()}, indent=2))
        return
    console = Console()
    console.print(
        f"captions: {len(report.caption_set.captions)} in {report.path} ({report.generated} generated, "
        f"{report.reused} kept from earlier runs, {report.seconds:.1f} s)"
    )
    if report.failed:
        shown = ", ".join(f"{k} ({v})" for k, v in list(report.failed.items())[:5])
        console.print(
            f"  {len(report.failed)} image(s) got no caption and are left out of scoring: {shown}; "
            "rerun the same command to retry them"
        )


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


_QA_METRICS = ("captionqa", "caprl")

#: Per metric: table title, then (column, summary key) pairs; "failed" columns count images.
_COLUMNS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "captionqa": ("CaptionQA", [("score", "score"), ("accuracy", "accuracy"), ("cannot %", "cannot_answer_rate")]),
    "caprl": ("CapRL QA utility", [("utility", "score"), ("cannot %", "cannot_answer_rate")]),
    "dcscore": ("DCScore", [("DCScore", "score"), ("precision", "precision"), ("recall", "recall"), ("F1", "f1"),
                            ("F1 descr.", "f1_descriptive")]),
    "balcap": ("BalCapRL", [("b-CapScore", "score"), ("precision", "precision"), ("recall", "recall"),
                            ("linguistic", "linguistic")]),
}  # fmt: skip


def print_results(
    results: Sequence[RunResult], metrics: Sequence[str], benchmark: Benchmark, judge: str, modes: Mapping[str, str]
) -> None:
    """Print a table per metric, CaptionQA's scores by domain, and the judges' usage."""
    console = Console()
    for metric in metrics:
        if metric == "arena":
            console.print(_arena_table(results, benchmark, judge, modes))
            _print_failed(console, results, metric, "CapArena-Auto")
            continue
        title, columns = _COLUMNS[metric]
        table = Table(title=f"{title} on {benchmark.name}", title_justify="left")
        table.add_column("caption set", no_wrap=True)
        for index, (label, _) in enumerate(columns):
            table.add_column(label, justify="right", style="bold" if index == 0 else None)
        table.add_column("unscored", justify="right")
        if metric not in _QA_METRICS:
            table.add_column("verified by", justify="right")
        for result in results:
            summary = result.summaries[metric]
            row = [result.caption_set, *(_fmt(summary[key]) for _, key in columns)]
            if metric == "captionqa":
                row.append(str(summary["unparsed"] + summary["failed"]))
            elif metric == "caprl":
                row.append(f"{summary['unscored_draws']} draws, {summary['no_utility']} images")
            else:
                row += [str(summary["failed"]), "+".join(summary["verify_mode"])]
            table.add_row(*row)
        table.caption = _caption(metric, judge, modes)
        console.print(table)
        _print_failed(console, results, metric, title)
        if metric == "captionqa":
            console.print(_domain_table(results, benchmark))
    usage = Table("caption set", "judge calls", "failed", "cached", "prompt tok.", "output tok.",
                  "retried samples", title="Judge usage", title_justify="left")  # fmt: skip
    for result in results:
        stats = result.stats
        usage.add_row(result.caption_set, *(str(stats.get(k, 0)) for k in
                      ("judge_calls", "failures", "cache_hits", "prompt_tokens", "completion_tokens")),
                      str(sum(result.retried.values())))  # fmt: skip
    console.print(usage)
    for result in results:
        skipped = result.stats.get("cache_write_failures", 0) + result.stats.get("cache_read_failures", 0)
        if skipped:
            console.print(
                f"  {result.caption_set}: the judge-call cache was skipped {skipped} time(s) (see the warning)"
            )
        if result.first_error:
            console.print(
                f"  {result.caption_set}: {result.stats.get('failures', 0)} judge call(s) failed, first: "
                f"{result.first_error}; rerun the same command to ask for them again",
                style="red",
                markup=False,
            )
    console.print(f"results: {results[0].path.parent}")


def _print_failed(console: Console, results: Sequence[RunResult], metric: str, title: str) -> None:
    for result in results:
        failed = result.summaries[metric].get("failed_ids") or []
        if failed:
            shown = ", ".join(failed[:8]) + (" …" if len(failed) > 8 else "")
            console.print(f"  {result.caption_set}: {len(failed)} image(s) left out of {title}: {shown}")


def _arena_table(results: Sequence[RunResult], benchmark: Benchmark, judge: str, modes: Mapping[str, str]) -> Table:
    """CapArena-Auto: the mean score, one column per baseline, caption length and order consistency."""
    baselines = sorted({b for r in results for b in r.summaries["arena"]["baselines"]})
    table = Table(title=f"CapArena-Auto on {benchmark.name}", title_justify="left")
    table.add_column("caption set", no_wrap=True)
    table.add_column("score", justify="right", style="bold")
    for baseline in baselines:
        table.add_column(baseline, justify="right")
    for label in ("words", "swap-proof %", "unscored", "judge saw"):
        table.add_column(label, justify="right")
    for result in results:
        summary = result.summaries["arena"]
        per = summary["baselines"]
        cells = [_fmt(per[b]["score"]) if b in per else "—" for b in baselines]
        table.add_row(
            result.caption_set, _fmt(summary["score"]), *cells, _fmt(summary["length"]),
            _fmt(summary["consistency"]), str(summary["failed"]), "+".join(summary["judge_mode"]),
        )  # fmt: skip
    order = "both orders, a win must survive the swap" if modes.get("arena_order") != "single" else "one seeded order"
    table.caption = (
        f"judge {judge} ({order}); score = mean over baselines (one column each) of 100 × (wins − losses) / "
        "judged pairs; — = the caption set is that baseline; swap-proof = verdicts the same in both orders"
    )
    return table


def _caption(metric: str, judge: str, modes: Mapping[str, str]) -> str:
    if metric == "captionqa":
        return f"judge {judge} ({modes['answer_mode']} answers); score = mean of domain scores, 0-100"
    if metric == "caprl":
        return f"judge {judge} ({modes['answer_mode']} answers); utility = 100 × share of draws answered right"
    verified = "; 'reference': facts checked against the reference caption only (no vision judge)"
    return f"judge {judge} ({modes['fact_protocol']} protocol); 0-100; unscored = images left out{verified}"


def _domain_table(results: Sequence[RunResult], benchmark: Benchmark) -> Table:
    table = Table(title="CaptionQA score by domain", title_justify="left")
    table.add_column("caption set", no_wrap=True)
    for domain in benchmark.domains:
        table.add_column(domain, justify="right")
    for result in results:
        domains = result.summaries["captionqa"]["domains"]
        table.add_row(result.caption_set, *(_fmt(domains.get(d, {}).get("score")) for d in benchmark.domains))
    return table


def catalogue() -> dict[str, Any]:
    """Describe the benchmarks, metrics and engines this install offers."""
    benchmarks = []
    for name, (module, description) in BENCHMARKS.items():
        download = getattr(importlib.import_module(module), "DOWNLOAD", None)
        if download:  # listing must not start a multi-GB download
            benchmarks.append({"name": name, "description": description, "needs": download})
            continue
        try:
            bench = load_benchmark(name)
        except ConfigError as exc:  # its data is a download: say what to pass instead
            benchmarks.append({"name": name, "description": description, "needs": str(exc)})
            continue
        benchmarks.append(
            {
                "name": name,
                "description": description,
                "samples": len(bench.samples),
                "questions": sum(len(s.questions) for s in bench.samples),
                "domains": bench.domains,
                "example_captions": {k: str(v) for k, v in bench.example_captions.items()},
            }
        )
    metrics = []
    for name in METRICS:
        metric = build_metric(name)
        metrics.append(
            {
                "name": name,
                "description": METRICS[name][3],
                "judges": list(metric.judge_roles),
                "needs": sorted(metric.needs),
                "range": list(metric.value_range),
                "higher_is_better": metric.higher_is_better,
            }
        )
    engines = [
        {"name": name, "description": description, "available": _available(module)}
        for name, (module, _, description) in ENGINES.items()
    ]
    return {"benchmarks": benchmarks, "metrics": metrics, "engines": engines}


_ENGINE_PACKAGES = {
    "capbench.engines.llamacpp": "llama_cpp",
    "capbench.engines.vllm": "vllm",
    "capbench.engines.hf": "transformers",
    "capbench.engines.openai": "httpx",
}


def _available(module: str) -> bool:
    package = _ENGINE_PACKAGES.get(module)
    return package is None or importlib.util.find_spec(package) is not None


def print_catalogue(info: Mapping[str, Any]) -> None:
    """Print the catalogue as three tables."""
    console = Console()
    table = Table(
        "benchmark", "samples", "questions", "domains", "example captions", title="Benchmarks", title_justify="left"
    )
    for b in info["benchmarks"]:
        if "needs" in b:
            table.add_row(b["name"], "—", "—", "—", b["needs"])
            continue
        table.add_row(
            b["name"], str(b["samples"]), str(b["questions"]), ", ".join(b["domains"]), ", ".join(b["example_captions"])
        )
    console.print(table)
    table = Table("metric", "judges", "range", "better", "what it measures", title="Metrics", title_justify="left")
    for m in info["metrics"]:
        better = "higher" if m["higher_is_better"] else "lower"
        table.add_row(
            m["name"], ", ".join(m["judges"]), f"{m['range'][0]:g}-{m['range'][1]:g}", better, m["description"]
        )
    console.print(table)
    table = Table("engine", "installed", "what it is", title="Engines", title_justify="left")
    for e in info["engines"]:
        table.add_row(e["name"], "yes" if e["available"] else "no", e["description"])
    console.print(table)
