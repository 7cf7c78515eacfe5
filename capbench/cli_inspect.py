"""``capbench inspect``: one self-contained HTML page of a run's per-sample judgments.

``capbench/cli.py`` registers the command. Only click is imported here; the library loads when the
command runs, so ``capbench --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeatable, comma-separated option values as one list."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@click.command("inspect")
@click.argument("results", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file to write [default: inspect.html in the first RESULTS folder].",
)
@click.option("-b", "--benchmark", help="The benchmark to show, when RESULTS hold several.")
@click.option("-m", "--metric", "metrics", multiple=True, help="Only this metric (repeatable, or a,b) [default: all].")
@click.option("--name", "names", multiple=True, help="Only this caption set (repeatable, or a,b) [default: all].")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N images (benchmark order).")
@click.option(
    "-c",
    "--captions",
    "caption_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Caption file whose texts show in `capbench arena` battles (found by content); repeatable.",
)
@click.option("--images/--no-images", default=True, show_default=True, help="Embed thumbnails of the images.")
@click.option("--thumbnail", type=click.IntRange(min=32, max=2048), default=320, show_default=True,
              help="Longest side of the embedded thumbnails, in pixels.")  # fmt: skip
@click.option("--images-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the benchmark's images, for benchmarks that do not bundle them.")  # fmt: skip
@click.option("--data-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The benchmark's own data file (caparena, jsonl).")  # fmt: skip
@click.option("--dataset", help="captionqa: the Hugging Face dataset id or a local folder holding its files.")
def inspect_command(results: tuple[Path, ...], **opts: Any) -> None:
    """Write one HTML page showing why each caption scored what it did.

    RESULTS are what `capbench eval` and `capbench arena` wrote: a results folder [default: results],
    a benchmark folder in it, run folders (<results>/<benchmark>/<set>) or an arena folder (_arena).
    Per image: the image, the reference, each caption set's caption side by side, and per metric
    what the judge said (facts and verdicts, questions and answers, draws, battles, failures). The page
    opens from disk with no server or network; its script only adds sorting and filtering.
    """
    from capbench.inspector import write_report

    sources = list(results) or [Path("results")]
    loader = {k: opts[k] for k in ("images_dir", "data_file", "dataset") if opts.get(k) is not None}
    report = write_report(
        sources,
        opts["out"] or _default_out(sources[0]),
        benchmark=opts["benchmark"],
        metrics=_split(opts["metrics"]) or None,
        names=_split(opts["names"]) or None,
        limit=opts["limit"],
        caption_files=list(opts["caption_files"]),
        images=opts["images"],
        benchmark_options=loader,
        thumbnail=opts["thumbnail"],
    )
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    what = f"{report.samples} images, caption sets {', '.join(report.sets)}"
    metrics = ", ".join(report.metrics) + (f", {report.battles} arena battles" if report.battles else "")
    click.echo(f"wrote {report.path} ({report.bytes / 1e6:.1f} MB): {what}; {metrics or 'no metrics'}")


def _default_out(first: Path) -> Path:
    """``inspect.html`` in the first results folder (beside a run folder, not inside it)."""
    folder = first.parent if (first / "manifest.json").is_file() or (first / "battles.jsonl").is_file() else first
    return folder / "inspect.html"
