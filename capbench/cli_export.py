"""``capbench export``: finished runs as lmms-eval's results JSON or a flat per-sample CSV (docs/export.md).

``capbench/cli.py`` registers the command. Only click is imported here; the library loads when
the command runs, so ``capbench --help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


@click.command("export")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["lmms-eval", "csv"]),
    required=True,
    help="lmms-eval: one <caption set>/<date>_results.json per caption set; csv: one row per set, metric and sample.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="lmms-eval: the folder to write to; csv: the file to write.",
)
@click.option("-b", "--benchmark", help="Export only this benchmark's runs.")
@click.option("--name", "names", multiple=True, help="Export only this caption set; repeatable.")
@click.option(
    "--rounds", type=click.IntRange(min=100), default=1000, show_default=True, help="Bootstrap rounds (stderr)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap (stderr).")
@click.option("--json", "as_json", is_flag=True, help="Print the files written and the warnings as JSON.")
def export_command(sources: tuple[Path, ...], **opts: Any) -> None:
    """Export finished runs for other tools: lmms-eval's results JSON, or a per-sample CSV.

    SOURCES are results folders [default: results], benchmark folders or run folders. Only
    finished runs are exported: a run still writing, killed or interrupted is refused, saying
    what to do. Files are replaced atomically.
    """
    from capbench.export import export_results

    files, warnings = export_results(*sources, format=opts["fmt"], out=opts["out"], benchmark=opts["benchmark"],
                                     names=opts["names"], rounds=opts["rounds"], seed=opts["seed"])  # fmt: skip
    if opts["as_json"]:
        click.echo(json.dumps({"files": [str(f) for f in files], "warnings": warnings}, indent=2))
        return
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    for path in files:
        click.echo(f"wrote {path}")
