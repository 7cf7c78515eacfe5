"""What ``capbench eval`` and ``capbench list`` do once their options are parsed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
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

from capbench.api import Evaluation, Reporter, SetResult, prepare
from capbench.api import catalogue as api_catalogue
from capbench.api import run as run_plan
from capbench.captioning import GenerationReport
from capbench.config import EvalConfig
from capbench.engines import DEFAULT_JUDGE
from capbench.engines.spec import parse_options
from capbench.errors import ConfigError
from capbench.metrics import metric_names
from capbench.trackers import parse_trackers, report_evaluation


class _RichProgress:
    """One progress bar per caption set, counting its judge requests (cached ones included)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.planned = 0
        self.submitted_total = 0
        self.cached = 0
        self.name = ""

    def start(self, caption_set: str, planned: int) -> None:
        self.planned, self.submitted_total, self.cached, self.name = planned, 0, 0, caption_set
        self.task = self.progress.add_task(caption_set, total=planned, cached=0, what="judge calls (0 cached)")

    def submitted(self, n: int) -> None:
        # A metric that cannot plan its requests ahead grows the total as it submits them.
        self.submitted_total += n
        if self.task is not None and self.submitted_total > self.planned:
            self.progress.update(self.task, total=self.submitted_total)

    def completed(self, cached: bool) -> None:
        if self.task is None:
            return
        self.cached += int(cached)
        self.progress.update(self.task, advance=1, cached=self.cached, what=f"judge calls ({self.cached} cached)")


def config_from_options(opts: Mapping[str, Any]) -> EvalConfig:
    """Turn ``capbench eval``'s parsed options into the library's :class:`EvalConfig`."""
    names = [m.strip() for m in opts["metrics"].split(",") if m.strip()]
    if not names:
        raise ConfigError(f"--metrics {opts['metrics']!r} names no metric; choose from: {', '.join(metric_names())}")
    if names == ["none"]:
        if not opts.get("model"):
            raise ConfigError("--metrics none only generates captions: pass --model")
        names = []
    if len(set(names)) != len(names):
        raise ConfigError(f"a metric is named twice in --metrics {opts['metrics']!r}")
    loader = {k: opts.get(k) for k in ("images_dir", "data_file", "dataset", "split") if opts.get(k) is not None}
    per_metric: dict[str, dict[str, Any]] = {name: {} for name in names}
    for flag, (metric, setting) in _METRIC_FLAGS.items():
        value = opts.get(flag)
        if value is None:
            continue
        if metric not in per_metric:
            raise ConfigError(
                f"--{flag.replace('_', '-')} is a setting of metric {metric!r}, which --metrics does not name"
            )
        per_metric[metric][setting] = value.replace("-", "_") if setting == "shuffle" else value
    settings: dict[str, Any] = {
        "benchmark": opts["benchmark"],
        "benchmark_options": loader,
        "captions": list(opts.get("caption_files") or ()),
        "example_captions": bool(opts.get("example_captions")),
        "metrics": per_metric if any(per_metric.values()) else names,
        "judge": opts.get("judge") or DEFAULT_JUDGE,
        "judge_options": _options(opts, "judge"),
        "vision_judge": opts.get("vision_judge"),
        "vision_judge_options": _options(opts, "vision_judge"),
        "model": opts.get("model"),
        "engine": opts.get("engine") or "vllm",
        "model_options": _options(opts, "model"),
        "name": opts.get("name"),
        "results_dir": opts["results_dir"],
        "overwrite": bool(opts["overwrite"]),
        "regenerate": bool(opts.get("regenerate")),
        "cache": not opts.get("no_cache"),
        "record_judge": opts.get("record_judge"),
        "limit": opts.get("limit"),
        "shard": opts.get("shard"),
        "seed": opts["seed"],
        "batch_size": opts["batch_size"],
    }
    optional = {
        "answer_mode": "answer_mode",
        "fact_protocol": "fact_protocol",
        "arena_order": "arena_order",
        "caprl_samples": "caprl_samples",
        "prompt_dir": "prompt_dir",
        "caption_prompt": "caption_prompt",
        "caption_max_tokens": "caption_max_tokens",
        "caption_temperature": "caption_temperature",
    }
    settings.update({field: opts[key] for key, field in optional.items() if opts.get(key) is not None})
    return EvalConfig(**settings)


#: ``capbench eval`` flags that set one metric's setting: flag -> (metric, setting of its config).
_METRIC_FLAGS = {
    "caprl_parse": ("caprl", "parse"),
    "captionqa_aggregation": ("captionqa", "aggregation"),
    "captionqa_shuffle": ("captionqa", "shuffle"),
}


def _options(opts: Mapping[str, Any], role: str) -> dict[str, Any]:
    """A role's --ROLE-opt KEY=VALUE options and --ROLE-base-url, as the config's option mapping."""
    options = parse_options(list(opts.get(f"{role}_opt") or ()))
    if opts.get(f"{role}_base_url"):
        options["base_url"] = opts[f"{role}_base_url"]
    return options


class _CliReporter(Reporter):
    """Draws the evaluation on one live display: a line while a model loads, bars while captioning and judging."""

    def __init__(self, progress: _RichProgress) -> None:
        self.progress = progress

    @contextmanager
    def loading(self, what: str) -> Iterator[None]:
        bar = self.progress.progress
        task = bar.add_task(f"loading {what}", total=None, what="")
        try:
            yield
        finally:
            bar.remove_task(task)

    @contextmanager
    def captioning(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        bar = self.progress.progress
        task = bar.add_task(f"captioning {name}", total=total, what="captions")
        try:
            yield lambda n: bar.update(task, advance=n)
        finally:
            bar.remove_task(task)


def run(opts: Mapping[str, Any]) -> None:
    """Run ``capbench eval``: check everything, generate captions if --model is given, score every set, print."""
    console = Console(stderr=True)
    trackers = parse_trackers(opts.get("report_to"))  # a tracker not installed is refused before any scoring
    if not trackers and (opts.get("report_dir") or opts.get("report_name")):
        raise ConfigError("--report-dir and --report-name go with --report-to (wandb, tensorboard)")
    plan = prepare(config_from_options(opts))  # every refusal happens here, before any model loads
    with judge_progress(console, opts["as_json"]) as progress:
        evaluation = run_plan(plan, _CliReporter(progress))
    if not plan.metrics:
        _report_generation(evaluation.generation, opts["as_json"])
        _report_shard(plan.config, opts["as_json"])
        return
    if opts["as_json"]:
        click.echo(json.dumps(evaluation.to_dict(), indent=2))
    else:
        if evaluation.generation is not None:
            _report_generation(evaluation.generation, False)
        print_results(evaluation, plan.judges["text"].label)
        _report_shard(plan.config, False)
    if trackers:
        directory = opts.get("report_dir") or Path(opts["results_dir"]) / "_trackers"
        samples, name = plan.benchmark.samples, opts.get("report_name")
        for where in report_evaluation(evaluation, samples, trackers, directory, name):
            console.print(f"sent to {where}", markup=False)
    check_failures(list(evaluation.values()), opts.get("fail_at", 1.0))


def _report_shard(config: EvalConfig, as_json: bool) -> None:
    """Say that a shard's numbers cover its part only, and how to merge the parts."""
    shard = config.shard_spec
    if shard is not None and not as_json:
        Console().print(
            f"shard {shard}: the numbers above cover this shard's part only; when all {shard.count} shards have "
            f"finished, `capbench merge {config.results_dir}` combines them",
            markup=False,
        )


def check_failures(results: Sequence[SetResult], fail_at: float) -> None:
    """Exit with status 1 (one line on stderr) when a run's share of failed judge calls reaches ``fail_at``."""
    over = [r for r in results if r.stats.get("failures", 0) and r.failed_share >= fail_at]
    if not over:
        return
    worst = max(over, key=lambda r: r.failed_share)
    raise click.ClickException(
        f"{worst.stats['failures']} of {worst.stats['judge_calls']} judge calls failed in caption set "
        f"{worst.name!r} (first error: {worst.first_error}); fix the judge and rerun the same command: "
        "only the failed calls are asked again"
    )


@contextmanager
def judge_progress(console: Console, transient: bool) -> Iterator[_RichProgress]:
    """Show a bar counting judge calls, with their total, cache hits and an ETA; yield its receiver."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[what]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=transient) as bar:
        yield _RichProgress(bar)


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


def _cell(summary: Mapping[str, Any], key: str) -> str:
    """One table cell: a summary value by key ("a+b" sums two), numbers to one decimal, lists joined by "+"."""
    if "+" in key:
        parts = [summary.get(k) for k in key.split("+")]
        value: Any = sum(p for p in parts if isinstance(p, (int, float))) if any(p is not None for p in parts) else None
    else:
        value = summary.get(key)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


def print_results(evaluation: Evaluation, judge: str) -> None:
    """Print each metric's table as it declares it (columns, breakdowns, note), then the judges' usage."""
    console = Console()
    results = list(evaluation.values())
    benchmark = evaluation.benchmark
    settings = {**evaluation.modes, "judge": judge}
    names = list(dict.fromkeys(m for r in results for m in r.summary))
    for metric in names:
        info = next(r.info[metric] for r in results if metric in r.info)
        table = Table(title=f"{info.title} on {benchmark}", title_justify="left")
        table.add_column("caption set", no_wrap=True)
        for index, (label, _) in enumerate(info.columns):
            table.add_column(label, justify="right", style="bold" if index == 0 else None)
        for result in results:
            summary = result.summary.get(metric, {})
            table.add_row(result.name, *(_cell(summary, key) for _, key in info.columns))
        if info.note:
            table.caption = info.note.format_map(_Settings(settings))
        console.print(table)
        _print_failed(console, results, metric, info.title)
        for title, key, value_key in info.breakdowns:
            console.print(_breakdown(results, metric, title, key, value_key))
    usage = Table("caption set", "judge calls", "failed", "cached", "prompt tok.", "output tok.",
                  "retried samples", title="Judge usage", title_justify="left")  # fmt: skip
    for result in results:
        stats = result.stats
        usage.add_row(result.name, *(str(stats.get(k, 0)) for k in
                      ("judge_calls", "failures", "cache_hits", "prompt_tokens", "completion_tokens")),
                      str(sum(result.retried.values())))  # fmt: skip
    console.print(usage)
    for result in results:
        skipped = result.stats.get("cache_write_failures", 0) + result.stats.get("cache_read_failures", 0)
        if skipped:
            console.print(f"  {result.name}: the judge-call cache was skipped {skipped} time(s) (see the warning)")
        if result.first_error:
            console.print(
                f"  {result.name}: {result.stats.get('failures', 0)} judge call(s) failed, first: "
                f"{result.first_error}; rerun the same command to ask for them again",
                style="red",
                markup=False,
            )
    console.print(f"results: {results[0].path.parent}")


class _Settings(dict):  # type: ignore[type-arg]
    """Fills a metric's note; a placeholder the run has no setting for stays as written."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _print_failed(console: Console, results: Sequence[SetResult], metric: str, title: str) -> None:
    for result in results:
        failed = result.summary.get(metric, {}).get("failed_ids") or []
        if failed:
            shown = ", ".join(failed[:8]) + (" …" if len(failed) > 8 else "")
            console.print(f"  {result.name}: {len(failed)} image(s) left out of {title}: {shown}")


def _breakdown(results: Sequence[SetResult], metric: str, title: str, key: str, value_key: str) -> Table:
    """A table with one column per entry of a summary mapping (CaptionQA's domains, arena's baselines)."""
    groups = list(dict.fromkeys(g for r in results for g in (r.summary.get(metric, {}).get(key) or {})))
    table = Table(title=title, title_justify="left")
    table.add_column("caption set", no_wrap=True)
    for group in groups:
        table.add_column(str(group), justify="right")
    for result in results:
        per = result.summary.get(metric, {}).get(key) or {}
        table.add_row(
            result.name, *(_cell(per[g], value_key) if isinstance(per.get(g), Mapping) else "—" for g in groups)
        )
    return table


def catalogue() -> dict[str, Any]:
    """Describe the benchmarks, metrics and engines this install offers (plugins included)."""
    return api_catalogue()


def print_catalogue(info: Mapping[str, Any]) -> None:
    """Print the catalogue as three tables, and any plugin left out."""
    console = Console()
    table = Table(
        "benchmark", "samples", "questions", "domains", "example captions", "from", title="Benchmarks",
        title_justify="left",
    )  # fmt: skip
    for b in info["benchmarks"]:
        if "error" in b or "needs" in b:
            table.add_row(b["name"], "—", "—", "—", b.get("error") or b["needs"], b["origin"])
            continue
        table.add_row(
            b["name"], str(b["samples"]), str(b["questions"]), ", ".join(b["domains"]),
            ", ".join(b["example_captions"]), b["origin"],
        )  # fmt: skip
    console.print(table)
    table = Table(
        "metric", "judges", "range", "better", "what it measures", "from", title="Metrics", title_justify="left"
    )
    for m in info["metrics"]:
        if "error" in m:
            table.add_row(m["name"], "—", "—", "—", f"broken: {m['error']}", m["origin"])
            continue
        better = "higher" if m["higher_is_better"] else "lower"
        table.add_row(
            m["name"], ", ".join(m["judges"]), f"{m['range'][0]:g}-{m['range'][1]:g}", better, m["description"],
            m["origin"],
        )  # fmt: skip
    console.print(table)
    table = Table("engine", "installed", "what it is", "from", title="Engines", title_justify="left")
    for e in info["engines"]:
        table.add_row(e["name"], "yes" if e["available"] else "no", e.get("error") or e["description"], e["origin"])
    console.print(table)
    for problem in info.get("problems", []):
        console.print(f"  plugin left out: {problem}", markup=False)
