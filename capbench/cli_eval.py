"""What ``capbench eval`` and ``capbench list`` do once their options are parsed."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
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

from capbench.data import BENCHMARKS, Benchmark, load_benchmark
from capbench.engines import DEFAULT_JUDGE, ENGINES, build_engine
from capbench.engines.cache import CachedEngine, ResponseCache
from capbench.errors import ConfigError
from capbench.evaluation import Evaluator, RunResult
from capbench.metrics import METRICS, build_metric
from capbench.records import CaptionSet, read_caption_file


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


def caption_sets(opts: Mapping[str, Any], benchmark_examples: Mapping[str, Any]) -> list[CaptionSet]:
    """Read every caption set the options name."""
    files = list(opts["caption_files"])
    if opts.get("name") and len(files) != 1:
        raise ConfigError("--name names one caption set; give exactly one --captions with it")
    sets = [read_caption_file(path, opts.get("name")) for path in files]
    if opts.get("example_captions"):
        if not benchmark_examples:
            raise ConfigError("this benchmark ships no example captions; pass --captions FILE")
        sets += [read_caption_file(path, name) for name, path in benchmark_examples.items()]
    if not sets:
        raise ConfigError("nothing to score: pass --captions FILE (or --example-captions)")
    names = [s.name for s in sets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"two caption sets are named {duplicates[0]!r}; rename a file or use --name")
    return sets


def build_judge(spec: str, opts: Mapping[str, Any]) -> CachedEngine:
    """Build the judge engine, with recording and caching as the options ask."""
    engine = build_engine(spec)
    recording = bool(opts.get("record_judge"))
    if recording:
        from capbench.engines.replay import RecordingEngine

        engine = RecordingEngine(engine, opts["record_judge"])
    # A cassette must hold every reply, so recording asks the judge even for cached requests.
    return CachedEngine(engine, None if opts.get("no_cache") else ResponseCache(), read=not recording)


def run(opts: Mapping[str, Any]) -> None:
    """Run ``capbench eval``."""
    console = Console(stderr=True)
    benchmark = load_benchmark(opts["benchmark"])
    sets = caption_sets(opts, benchmark.example_captions)
    spec = opts.get("judge") or DEFAULT_JUDGE
    mode = resolve_answer_mode(opts["answer_mode"], spec)
    names = [m.strip() for m in opts["metrics"].split(",") if m.strip()]
    metrics = [build_metric(n, seed=opts["seed"], answer_mode=mode) for n in names]
    with console.status(f"loading judge {spec}"):
        judge = build_judge(spec, opts)
    results: list[RunResult] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("judge calls ({task.fields[cached]} cached)"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=opts["as_json"]) as bar:
        progress = _RichProgress(bar)
        evaluator = Evaluator(benchmark, metrics, {"text": judge}, opts["results_dir"], opts["batch_size"], progress)
        for caption_set in sets:
            results.append(evaluator.evaluate(caption_set, opts.get("limit"), opts["overwrite"]))
    report = {
        "benchmark": benchmark.name,
        "judge": judge.fingerprint(),
        "answer_mode": mode,
        "runs": [r.to_dict() for r in results],
    }
    if opts["as_json"]:
        click.echo(json.dumps(report, indent=2))
        return
    print_results(results, names, benchmark, spec, mode)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def print_results(
    results: Sequence[RunResult], metrics: Sequence[str], benchmark: Benchmark, judge: str, mode: str
) -> None:
    """Print, per metric, a table of headline numbers and one of scores by domain."""
    console = Console()
    for metric in metrics:
        if metric != "captionqa":
            continue
        table = Table(title=f"CaptionQA on {benchmark.name}", title_justify="left")
        table.add_column("caption set", no_wrap=True)
        for column in ("score", "accuracy", "cannot %", "unscored", "judge calls", "cached"):
            table.add_column(column, justify="right", style="bold" if column == "score" else None)
        by_domain = Table(title="CaptionQA score by domain", title_justify="left")
        by_domain.add_column("caption set", no_wrap=True)
        for domain in benchmark.domains:
            by_domain.add_column(domain, justify="right")
        for result in results:
            summary = result.summaries[metric]
            table.add_row(
                result.caption_set,
                _fmt(summary["score"]),
                _fmt(summary["accuracy"]),
                _fmt(summary["cannot_answer_rate"]),
                str(summary["unparsed"] + summary["failed"]),
                str(result.stats.get("judge_calls", 0)),
                str(result.stats.get("cache_hits", 0)),
            )
            by_domain.add_row(
                result.caption_set, *(_fmt(summary["domains"].get(d, {}).get("score")) for d in benchmark.domains)
            )
        table.caption = f"judge {judge} ({mode} answers); score = mean of domain scores, 0-100"
        console.print(table)
        console.print(by_domain)
        console.print(f"results: {results[0].path.parent}")


def catalogue() -> dict[str, Any]:
    """Describe the benchmarks, metrics and engines this install offers."""
    benchmarks = []
    for name, (_, description) in BENCHMARKS.items():
        bench = load_benchmark(name)
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


_ENGINE_PACKAGES = {"capbench.engines.llamacpp": "llama_cpp"}


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
