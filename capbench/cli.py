"""The ``capbench`` command: parse options, call the library, print.

Heavy imports (engines, rich tables) happen inside commands, so ``capbench --help`` is instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from capbench import __version__
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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capbench")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Measure image captions: CaptionQA (more metrics to come), with cached LLM judges."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


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
@click.option("--example-captions", is_flag=True, help="Also score the example caption sets the benchmark ships.")
@click.option("--name", help="Name of the caption set (default: the file name); only with one --captions.")
@click.option(
    "-m",
    "--metrics",
    default="captionqa",
    show_default=True,
    help="Comma-separated metrics: captionqa, dcscore, balcap.",
)
@click.option("--judge", default=None, help="Text judge as ENGINE:MODEL [default: llamacpp:smollm2, embedded].")
@click.option(
    "--vision-judge",
    default=None,
    help="Judge that sees the image, for fact verification (ENGINE:MODEL); without one, facts are "
    "verified against the reference caption alone.",
)
@click.option(
    "--answer-mode",
    type=click.Choice(["auto", "letter", "loglik"]),
    default="auto",
    show_default=True,
    help="CaptionQA: judge writes a letter (the protocol), or options ranked by likelihood; "
    "auto = loglik for the embedded judge, letter otherwise.",
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
    "--prompt-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of prompt templates that replace capbench's own (same file names).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of option shuffles and judge sampling.")
@click.option("--limit", type=click.IntRange(min=1), help="Score only the first N samples.")
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
@click.option("--overwrite", is_flag=True, help="Discard earlier results of these runs instead of resuming.")
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


@main.group("cache")
def cache_group() -> None:
    """Inspect or clear the judge-call cache ($CAPBENCH_HOME/cache.sqlite)."""


@cache_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def cache_stats(as_json: bool) -> None:
    """Show how many judge responses are cached, per engine."""
    from capbench.engines.cache import ResponseCache

    stats = ResponseCache().stats()
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    click.echo(f"{stats['path']}: {stats['entries']} cached responses, {stats['bytes'] / 1e6:.1f} MB")
    for row in stats["engines"]:
        click.echo(f"  {row['engine']}: {row['entries']}")


@cache_group.command("clear")
@click.option("--engine", help="Only this engine's entries, as shown by `cache stats` (e.g. llamacpp:...).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(engine: str | None, yes: bool) -> None:
    """Delete cached judge responses."""
    from capbench.engines.cache import ResponseCache

    cache = ResponseCache()
    what = f"the cached responses of {engine}" if engine else "every cached response"
    if not yes and not click.confirm(f"Delete {what} in {cache.path}?"):
        return
    click.echo(f"deleted {cache.clear(engine)} cached responses")


if __name__ == "__main__":
    main()
