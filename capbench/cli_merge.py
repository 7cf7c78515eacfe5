"""One evaluation over several processes or nodes: ``capbench eval --shard I/N`` and ``capbench merge``.

``capbench/cli.py`` registers the command and gives ``eval`` its ``--shard`` option (checked by
:func:`check_shard`). Only click is imported here; the library loads when a command runs, so
``capbench --help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def check_shard(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Check ``--shard`` as it is parsed (a bad value is one line naming the flag)."""
    if value is not None:
        from capbench.config import Shard

        Shard.parse(value, "--shard")
    return value


@click.command("merge")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--into",
    type=click.Path(file_okay=False, path_type=Path),
    help="Results folder the merged runs go to [default: the results folder holding the shards].",
)
@click.option("-b", "--benchmark", help="Merge only shards of this benchmark.")
@click.option("--name", "names", multiple=True, help="Merge only this caption set's shards; repeatable.")
@click.option("--overwrite", is_flag=True, help="Replace a run in the target folder that is not this merge.")
@click.option("--json", "as_json", is_flag=True, help="Print what was merged as JSON (for scripts).")
def merge_command(sources: tuple[Path, ...], **opts: Any) -> None:
    """Combine the shards of `capbench eval --shard I/N` into runs identical to an unsharded evaluation.

    SOURCES are results folders [default: results] or shard folders. Every caption set's shards
    must all be there and finished, with the same settings and captions; they are merged into
    <results>/<benchmark>/<caption set>/, which the leaderboard reads. Merging again changes nothing.
    """
    from capbench.api import merge_shards

    merged = merge_shards(*sources, into=opts["into"], benchmark=opts["benchmark"], names=opts["names"],
                          overwrite=opts["overwrite"])  # fmt: skip
    if opts["as_json"]:
        click.echo(json.dumps([m.to_dict() for m in merged], indent=2))
        return
    for done in merged:
        what = "already merged, left as it was" if done.unchanged else f"merged {done.shards} shards"
        line = f"{done.benchmark}/{done.name}: {what}: {done.samples} samples in {done.path}"
        if done.result is None:
            line += " (captions only: generated.jsonl)"
        else:
            scores = [f"{done.result.info[m].title} {done.result.headline(m):.1f}" for m in done.result.summary
                      if m in done.result.info and done.result.headline(m) is not None]  # fmt: skip
            line += f" ({', '.join(scores)})" if scores else ""
        click.echo(line)
