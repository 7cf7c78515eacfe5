"""The ``capbench`` command: parse options, call the library, print.

Heavy imports (engines, rich tables) happen inside commands, so ``capbench --help`` is instant.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from capbench import __version__
from capbench.cli_compare import compare_command
from capbench.cli_export import export_command
from capbench.cli_inspect import inspect_command
from capbench.cli_merge import check_shard, merge_command
from capbench.errors import CapbenchError


class _Group(click.Group):
    """A click group that prints capbench errors as one line (a traceback only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CapbenchError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted: finished batches are saved; rerun the same command to resume", err=True)
            sys.exit(130)


def _one_line(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    """Format a warning as one ``warning: ...`` line (capbench's warnings say what to do; no source line)."""
    return f"warning: {message}\n"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capbench")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Measure image captions with cached LLM judges.

    Score caption sets on a benchmark (CaptionQA, CapRL, DCScore, BalCapRL's b-CapScore, CapArena-Auto), rank many
    sets by pairwise battles (arena), check a pairwise judge against human battles (agreement), build
    leaderboards from the results, open every judgment on one page (inspect), compare an old judge with a new
    one (compare-judges), and export results for lmms-eval or a spreadsheet (export).
    """
    if not debug:
        previous = warnings.formatwarning
        warnings.formatwarning = _one_line
        ctx.call_on_close(lambda: setattr(warnings, "formatwarning", previous))
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _judge_engine_options(command: Any) -> Any:
    """Add the options of the judges' engines (both roles)."""
    options = [
        click.option("--judge-opt", multiple=True, metavar="KEY=VALUE",
                     help="Option of the judge's engine (e.g. dtype=float32, concurrency=16); repeatable."),
        click.option("--judge-base-url", help="Server of the judge (openai engine); several as URL1,URL2."),
        click.option("--vision-judge-opt", multiple=True, metavar="KEY=VALUE",
                     help="Option of the vision judge's engine; repeatable."),
        click.option("--vision-judge-base-url", help="Server of the vision judge (openai engine)."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


@main.command("eval")
@click.option("-b", "--benchmark", default="mini", show_default=True, help="Benchmark name (see `capbench list`).")
@click.option(
    "-c",
    "--captions",
    "caption_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Caption file: JSONL {id, caption} lines or a JSON {id: caption} mapping. Repeat for several sets.",
)
@click.option(
    "--images-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the benchmark's images, for benchmarks that do not bundle them (decapbench).",
)
@click.option(
    "--data-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The benchmark's own data file: caparena's caparena_auto_600.json, or another DeCapBench reference file.",
)
@click.option(
    "--dataset",
    help="captionqa: the Hugging Face dataset id [default: Borise/CaptionQA] or a local folder holding its files.",
)
@click.option("--split", help="captionqa: a domain (natural, document, ecommerce, embodiedai), several (a,b), or all.")
@click.option("--example-captions", is_flag=True, help="Also score the example caption sets the benchmark ships.")
@click.option(
    "--model",
    help="Generate captions with this model (hub id, local folder or served name), then score them. "
    "Captions are kept in <results-dir>/<benchmark>/<name>/generated.jsonl and resumed after a kill.",
)
@click.option(
    "--engine",
    default="vllm",
    show_default=True,
    help="Engine that runs --model: vllm, hf (transformers) or openai (any OpenAI-compatible server).",
)
@click.option(
    "--model-opt",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option of the --model engine (e.g. tensor_parallel_size=2, dtype=bfloat16); repeatable.",
)
@click.option("--model-base-url", help="Server of the --model engine (openai engine); several as URL1,URL2.")
@click.option(
    "--caption-prompt",
    default="default",
    show_default=True,
    help="'default' (\"Describe this image in detail.\"), 'paraphrases' (one of several wordings per "
    "image, seeded, as CapArena does), or the prompt text itself.",
)
@click.option(
    "--caption-max-tokens",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Most tokens per generated caption.",
)
@click.option(
    "--caption-temperature",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Sampling temperature of caption generation (0 = greedy).",
)
@click.option("--name", help="Name of the caption set (default: the file or model name); only with one set.")
@click.option(
    "-m",
    "--metrics",
    default="captionqa",
    show_default=True,
    help="Comma-separated metrics: captionqa, caprl, dcscore, balcap, arena; 'none' only generates captions (--model).",
)
@click.option(
    "--judge",
    default=None,
    help="Text judge as ENGINE:MODEL or a YAML spec file [default: llamacpp:smollm2, embedded].",
)
@click.option(
    "--vision-judge",
    default=None,
    help="Judge that sees the image, for fact verification and arena (ENGINE:MODEL or YAML); without one, facts "
    "are verified, and arena pairs judged, against the reference caption alone.",
)
@_judge_engine_options
@click.option(
    "--answer-mode",
    type=click.Choice(["auto", "letter", "loglik"]),
    default="auto",
    show_default=True,
    help="CaptionQA, CapRL: judge writes a letter (the protocol), or options ranked by likelihood; arena: loglik ranks "
    "the three verdicts; auto = loglik for the embedded judge, letter (written verdicts) otherwise.",
)
@click.option(
    "--fact-protocol",
    type=click.Choice(["auto", "official", "greedy", "embedded"]),
    default="auto",
    show_default=True,
    help="DCScore/balcap judge settings: official (DeCapBench: 3 matching and 3 verification samples), greedy "
    "(temperature 0, one sample each), embedded (greedy, at most 16 facts); auto = embedded for the embedded "
    "judge, official otherwise.",
)
@click.option(
    "--arena-order",
    type=click.Choice(["both", "single"]),
    default="both",
    show_default=True,
    help="arena: judge both caption orders and keep only wins that survive the swap, or one seeded random "
    "order (the official CapArena protocol).",
)
@click.option(
    "--caprl-samples",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="caprl: questions drawn (with replacement) per caption; the utility is the share answered right.",
)
@click.option(
    "--caprl-parse",
    type=click.Choice(["capbench", "caprl"]),
    help="caprl: read replies as capbench does [default], or by CapRL's released rule (the first capital A-I "
    "anywhere; a reply naming no option scores 0).",
)
@click.option(
    "--captionqa-aggregation",
    type=click.Choice(["exact", "official"]),
    help="captionqa: 'official' adds the leaderboard's displayed numbers (rounded as the official scripts round) "
    "next to the exact headline [default: exact only].",
)
@click.option(
    "--captionqa-shuffle",
    type=click.Choice(["per-question", "official", "official-per-domain"]),
    help="captionqa: option order from capbench's per-question streams [default], or qa.py's one seeded stream "
    "over the split (official) or over each domain (official-per-domain).",
)
@click.option(
    "--prompt-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of prompt templates that replace capbench's own (same file names).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of option shuffles and judge sampling.")
@click.option("--limit", type=click.IntRange(min=1), help="Score only the first N samples.")
@click.option(
    "--shard",
    metavar="I/N",
    callback=check_shard,
    help="Evaluate only shard I of N of the selected samples (I counted from 0: 0/4 … 3/4, as $SLURM_ARRAY_TASK_ID "
    "with --array=0-3), into <results-dir>/<benchmark>/_shards/<set>/I-of-N/; `capbench merge` combines the N "
    "shards into one run. --model captions only the shard's images.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Samples per judging batch (results are saved after each).",
)
@click.option(
    "--results-dir",
    type=click.Path(path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Where runs are written: <dir>/<benchmark>/<caption set>/.",
)
@click.option("--overwrite", is_flag=True, help="Discard earlier scores of these runs instead of resuming.")
@click.option(
    "--regenerate",
    is_flag=True,
    help="Discard the captions --model generated before and generate them again (--overwrite keeps them).",
)
@click.option(
    "--no-cache",
    is_flag=True,
    help="Do not read or write the judge-call cache on disk (identical requests within the run are still asked once).",
)
@click.option(
    "--record-judge",
    type=click.Path(path_type=Path),
    help="Record every judge reply (cached ones included) to a cassette file, for replay in tests.",
)
@click.option(
    "--fail-at",
    type=click.FloatRange(0.0, 1.0),
    default=1.0,
    show_default=True,
    help="Exit with status 1 when a caption set's share of failed judge calls reaches this "
    "(1: every call failed; 0: any failure). Failed calls are asked again by the next run.",
)
@click.option(
    "--report-to",
    metavar="TRACKERS",
    help="Also send each caption set's summary and per-sample table (with image thumbnails) to these trackers: "
    "wandb, tensorboard, or both (wandb,tensorboard).",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the trackers write: TensorBoard's event files under <dir>/tensorboard/, W&B's run files "
    "[default: <results-dir>/_trackers].",
)
@click.option("--report-name", help="Tracker run name [default: the caption set's name; with several sets NAME/<set>].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (for scripts).")
def eval_command(**opts: Any) -> None:
    """Score caption sets on a benchmark and write results."""
    from capbench import cli_eval

    cli_eval.run(opts)


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_command(as_json: bool) -> None:
    """List benchmarks, metrics and engines."""
    from capbench import cli_eval

    info = cli_eval.catalogue()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    cli_eval.print_catalogue(info)


def _pair_options(command: Any) -> Any:
    """Add the options every pairwise-judging command shares."""
    options = [
        click.option("--judge", default=None, help="Text judge as ENGINE:MODEL [default: llamacpp:smollm2, embedded]."),
        click.option("--vision-judge", default=None, help="Judge that sees the image (ENGINE:MODEL); without one the "
                     "judge reads the reference caption alone."),
        _judge_engine_options,
        click.option("--images-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Folder of the images, for a vision judge."),
        click.option("--order", type=click.Choice(["both", "single"]), default="both", show_default=True,
                     help="Judge both caption orders (a win must survive the swap) or one seeded random order "
                     "(CapArena's protocol; for human battles, their stored order)."),
        click.option("--answer-mode", type=click.Choice(["auto", "letter", "loglik", "generate"]), default="auto",
                     show_default=True, help="letter: the judge writes a reason and its verdict, as in eval "
                     "('generate' is its old name); loglik: the three verdicts ranked by likelihood; auto = loglik "
                     "for the embedded judge, letter otherwise."),
        click.option("--prompt-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Folder of prompt templates that replace capbench's own (same file names)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of order draws and judge sampling."),
        click.option("--rounds", type=click.IntRange(min=1), default=1000, show_default=True,
                     help="Bootstrap rounds of the rankings' intervals."),
        click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
                     help="Where results are written."),
        click.option("--no-cache", is_flag=True, help="Do not read or write the judge-call cache on disk."),
        click.option("--record-judge", type=click.Path(path_type=Path), help="Record every judge reply to a cassette."),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for scripts)."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


@main.command("arena")
@click.option("-b", "--benchmark", default="mini", show_default=True, help="Benchmark name (see `capbench list`).")
@click.option("-c", "--captions", "caption_files", multiple=True, type=click.Path(path_type=Path),
              help="Caption file of one model; repeat for each model.")  # fmt: skip
@click.option("--example-captions", is_flag=True, help="Also enter the example caption sets the benchmark ships.")
@click.option("--data-file", type=click.Path(dir_okay=False, path_type=Path), help="The benchmark's own data file.")
@click.option("--budget", type=click.IntRange(min=1), help="Judge a seeded random sample of N battles, not all pairs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Battles per judging batch (saved after each).")  # fmt: skip
@click.option("--limit", type=click.IntRange(min=1),
              help="Judge only the battles on the first N images (benchmark order), as eval's --limit.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Discard stored battles instead of resuming.")
@_pair_options
def arena_command(**opts: Any) -> None:
    """Rank caption sets by pairwise battles: Bradley–Terry and Elo with 95% bootstrap intervals."""
    from capbench import cli_arena

    cli_arena.run_arena({**opts, "name": None})


@main.command("agreement")
@click.argument("annotations", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--limit", type=click.IntRange(min=1), help="Judge only the first N battles.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the judgments and report [default: <results-dir>/agreement/<file name>].")  # fmt: skip
@_pair_options
def agreement_command(**opts: Any) -> None:
    """Judge human battles (CapArena's annotation format) and report agreement with the humans."""
    from capbench import cli_arena

    cli_arena.run_agreement(opts)


@main.command("serve")
@click.option("--judge", default=None,
              help="Text judge as ENGINE:MODEL or a YAML spec file [default: llamacpp:smollm2].")  # fmt: skip
@click.option("--vision-judge", default=None,
              help="Judge that sees the image, for fact verification; without one, facts are checked against the "
              "reference caption.")  # fmt: skip
@_judge_engine_options
@click.option("--fact-protocol", type=click.Choice(["auto", "official", "greedy", "embedded"]), default="auto",
              show_default=True, help="DCScore/balcap judge settings, as in eval.")  # fmt: skip
@click.option("--answer-mode", type=click.Choice(["auto", "letter", "loglik"]), default="auto", show_default=True,
              help="CaptionQA, CapRL: the judge writes a letter, or options are ranked by likelihood "
              "(as in eval).")  # fmt: skip
@click.option("--caprl-samples", type=click.IntRange(min=1), default=8, show_default=True,
              help="caprl: questions drawn per caption.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of option shuffles and judge sampling.")
@click.option("-b", "--benchmark", default=None,
              help="A benchmark whose samples items may name by sample_id (their image and references).")  # fmt: skip
@click.option("--images-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the benchmark's images, for benchmarks that do not bundle them.")  # fmt: skip
@click.option("--data-file", type=click.Path(dir_okay=False, path_type=Path), help="The benchmark's own data file.")
@click.option("--images-root", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder whose images items may name by path; repeatable. Paths outside are refused.")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port (0: any free one).")
@click.option("--batch-window-ms", type=click.FloatRange(min=0.0), default=10.0, show_default=True,
              help="Requests arriving within this window are judged in shared engine batches.")  # fmt: skip
@click.option("--max-batches", type=click.IntRange(min=1), default=4, show_default=True,
              help="Batches judged at once at most (1-64): a batch starts as soon as its window closes, so the "
              "slowest item of one batch does not hold back the next.")  # fmt: skip
@click.option("--max-queue", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Items waiting or being judged at most; beyond it requests get 429 with Retry-After.")  # fmt: skip
@click.option("--max-items", type=click.IntRange(min=1), default=1024, show_default=True, help="Items per request.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.0, min_open=True), default=64.0, show_default=True,
              help="Request body size limit (also the largest image a URL may download).")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(min=0.0, min_open=True), default=600.0, show_default=True,
              help="Seconds per request before 504 (the judgments made are still cached).")  # fmt: skip
@click.option("--token-env", default="CAPBENCH_SERVE_TOKEN", show_default=True,
              help="Environment variable holding the bearer token; when set, every request but /health "
              "needs it.")  # fmt: skip
@click.option("--no-cache", is_flag=True, help="Do not read or write the judge-call cache on disk.")
def serve_command(**opts: Any) -> None:
    """Serve capbench rewards and metrics over HTTP, for any trainer (docs/serve.md)."""
    from capbench.serve import config_from_options, serve

    serve(config_from_options(opts))


@main.group("cache")
def cache_group() -> None:
    """Inspect or clear the judge-call cache ($CAPBENCH_HOME/cache.sqlite)."""


@cache_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def cache_stats(as_json: bool) -> None:
    """Show how many judge responses are cached, per engine (creates nothing)."""
    from capbench.engines.cache import read_stats

    stats = read_stats()
    if as_json:
        click.echo(json.dumps(stats, indent=2))
    elif not stats["exists"]:
        click.echo(f"{stats['path']}: no cache yet (0 cached responses)")
    else:
        click.echo(f"{stats['path']}: {stats['entries']} cached responses, {stats['bytes'] / 1e6:.1f} MB")
        for row in stats["engines"]:
            click.echo(f"  {row['engine']}: {row['entries']}")


@cache_group.command("clear")
@click.option("--engine", help="Only this engine's entries, as shown by `cache stats` (e.g. llamacpp:...).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(engine: str | None, yes: bool) -> None:
    """Delete cached judge responses; a damaged cache file is deleted whole (it is only a cache)."""
    from capbench.engines.cache import CacheFileError, ResponseCache, default_cache_path, read_stats, remove_cache
    from capbench.errors import ConfigError

    path = default_cache_path()
    try:
        stats = read_stats(path)
        engines = [row["engine"] for row in stats["engines"]]
        if engine is not None and engine not in engines:
            known = ", ".join(engines) or "none, the cache is empty"
            raise ConfigError(f"no cached responses of engine {engine!r} in {path}; engines cached: {known}")
        if not stats["exists"]:
            click.echo(f"nothing to delete: {path} does not exist")
            return
        what = f"the cached responses of {engine}" if engine else "every cached response"
        if not yes and not click.confirm(f"Delete {what} in {path}?"):
            return
        click.echo(f"deleted {ResponseCache(path).clear(engine)} cached responses")
    except CacheFileError as exc:
        if exc.kind != "damaged":
            raise
        if engine is not None:
            raise ConfigError(f"{exc}; a damaged cache cannot be cleared one engine at a time") from None
        if not yes and not click.confirm(f"{path} is damaged. Delete it (the next run starts a new cache)?"):
            return
        remove_cache(path)
        click.echo(f"deleted the damaged cache {path}; the next run starts a new one")


@main.command("leaderboard")
@click.argument("results_dir", required=False, default=Path("results"), type=click.Path(path_type=Path))
@click.option("-b", "--benchmark", help="Only this benchmark [default: every benchmark found].")
@click.option(
    "--sort",
    metavar="COLUMN",
    help="Rank by this column, best first for metrics [default: the first metric]; a metric, words, judges, "
    "images, failed, model, or any CSV column.",
)
@click.option("--baseline", metavar="MODEL", help="Add paired differences to this caption set, with 95% intervals.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the tables and figures [default: RESULTS_DIR/leaderboard].",
)
@click.option("--formats", default="md,csv,tex,html", show_default=True, help="Comma-separated table formats to write.")
@click.option("--figures/--no-figures", default=True, show_default=True, help="Also draw PNG figures.")
@click.option("--heatmap-metric", metavar="METRIC", help="Metric of the per-image heat map [default: the sort metric].")
@click.option("--rounds", type=click.IntRange(min=100), default=1000, show_default=True, help="Bootstrap rounds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option(
    "--min-pairs",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Fewest images a row must share with --baseline for its difference to get a significance mark.",
)
@click.option("--per-domain", is_flag=True, help="Add one column per domain to metrics scored by domain (CaptionQA).")
@click.option(
    "--inspect",
    metavar="REPORT",
    help="Inspector report (path or URL) that the HTML page's caption set x metric cells link to.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the leaderboard as JSON (for scripts).")
def leaderboard_command(**opts: Any) -> None:
    """Rank caption sets from RESULTS_DIR (default: results): scores with 95% intervals, tables, figures."""
    from capbench import cli_leaderboard

    cli_leaderboard.run(opts)


main.add_command(merge_command)
main.add_command(compare_command)
main.add_command(inspect_command)
main.add_command(export_command)
if __name__ == "__main__":
    main()
