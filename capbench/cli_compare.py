"""``capbench compare-judges OLD NEW``: how far a new judge's numbers are from an old one's on the same captions.

``capbench/cli.py`` registers the command. Only click is imported here; numpy, scipy and rich load
when the command runs, so ``capbench --help`` stays instant.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

UNDEFINED = "—"


@click.command("compare-judges")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("-b", "--benchmark", help="The benchmark to compare [default: the one both folders hold].")
@click.option("--bootstrap", "rounds", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Bootstrap rounds (over images) of the intervals.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report as Markdown here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for scripts).")
def compare_command(old: Path, new: Path, **opts: Any) -> None:
    """Compare the judge of results OLD with that of results NEW on the captions both scored.

    OLD and NEW are results folders of `capbench eval` (or one benchmark's folder, or one run folder),
    the same caption sets scored by each judge; a cassette of a retired judge is re-scored into
    results with `capbench eval --judge replay:CASSETTE`. Per metric: sample-level correlation (and
    Cohen's kappa for pairwise verdicts), ranking agreement of the caption sets, and the calibration
    shift new - old, with 95% bootstrap intervals (docs/judges.md).
    """
    from capbench.judge_compare import compare_judges

    report = compare_judges(old, new, benchmark=opts["benchmark"], rounds=opts["rounds"], seed=opts["seed"])
    if opts["out"] is not None:
        from capbench.runs import atomic_write_text

        atomic_write_text(opts["out"], to_markdown(report))
    if opts["as_json"]:
        click.echo(json.dumps(report, indent=2))
        return
    for note in report["warnings"]:
        click.echo(f"warning: {note}", err=True)
    _print(report)
    if opts["out"] is not None:
        click.echo(f"report: {opts['out']}")


def _ci(block: Mapping[str, Any] | None, key: str, digits: int = 3, scale: str = "") -> str:
    """``value [low, high]``, or the undefined mark."""
    if block is None or block.get(key) is None:
        return UNDEFINED
    value = f"{block[key]:.{digits}f}{scale}"
    low, high = block.get(f"{key}_low"), block.get(f"{key}_high")
    return value if low is None else f"{value} [{low:.{digits}f}, {high:.{digits}f}]"


def _signed(block: Mapping[str, Any], key: str) -> str:
    if block.get(key) is None:
        return UNDEFINED
    low, high = block.get(f"{key}_low"), block.get(f"{key}_high")
    band = "" if low is None else f" [{low:+.2f}, {high:+.2f}]"
    return f"{block[key]:+.2f}{band}"


def agreement_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The agreement table: one row per metric."""
    header = ["metric", "sets", "pairs", "Pearson", "Spearman", "verdict agreement %", "Cohen's κ", "rank ρ",
              "rank τ-b"]  # fmt: skip
    rows = []
    for name, m in report["metrics"].items():
        verdicts, ranking = m["verdicts"], m["ranking"]
        rows.append([
            name, str(m["sets"]), str(m["samples"]["n"]), _ci(m["samples"], "pearson"), _ci(m["samples"], "spearman"),
            _ci(verdicts, "agreement", 1), _ci(verdicts, "kappa"), _ci(ranking, "spearman"), _ci(ranking, "kendall"),
        ])  # fmt: skip
    return header, rows


def calibration_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The calibration table: per metric, each caption set's headline under both judges, then the mean."""
    header = ["metric", "caption set", "images", "old", "new", "new − old [95%]"]
    rows = []
    for name, m in report["metrics"].items():
        calibration = m["calibration"]
        for row in calibration["sets"]:
            rows.append([name, row["model"], str(row["images"]), _score(row["old"]), _score(row["new"]),
                         _signed(row, "diff")])  # fmt: skip
        rows.append([name, "mean", "", _score(calibration["mean_old"]), _score(calibration["mean_new"]),
                     _signed(calibration, "shift")])  # fmt: skip
    return header, rows


def _score(value: float | None) -> str:
    return UNDEFINED if value is None else f"{value:.2f}"


def notes(report: Mapping[str, Any]) -> list[str]:
    """The lines under the tables: judges, fits, and why any number is undefined."""
    from capbench.judge_compare import judge_name

    lines = []
    for name, m in report["metrics"].items():
        judges = [", ".join(judge_name(j) for j in report[side]["judges"].get(name, [])) for side in ("old", "new")]
        lines.append(f"{name}: old judge {judges[0]}; new judge {judges[1]}")
        fit = m["calibration"]["fit"]
        if fit["undefined"] is None:
            r = "" if fit["r"] is None else f", r {fit['r']:.3f}"
            line = f"new ≈ {fit['slope']:.3f}·old {fit['intercept']:+.2f} (n {fit['n']}{r})"
            lines.append(f"{name}: per-sample fit {line}")
        else:
            lines.append(f"{name}: per-sample fit undefined: {fit['undefined']}")
        for what, block in (("sample correlation", m["samples"]), ("κ", m["verdicts"]), ("ranking", m["ranking"])):
            if block is not None and block["undefined"] is not None:
                lines.append(f"{name}: {what} undefined: {block['undefined']}")
        drawn = m["ranking"].get("undefined_draws")
        if drawn:
            lines.append(f"{name}: ranking interval from {report['bootstrap'] - drawn} of {report['bootstrap']} "
                         f"draws ({drawn} drew tied or too few sets)")  # fmt: skip
    lines.append(f"95% intervals: {report['bootstrap']} bootstrap draws of the images, seed {report['seed']}")
    return lines


def _print(report: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    title = f"Judge agreement on {report['benchmark']}: {report['old']['path']} (old) vs {report['new']['path']} (new)"
    for title_text, (header, rows) in (
        (title, agreement_rows(report)),
        ("Calibration: headline under each judge, on the samples both scored", calibration_rows(report)),
    ):
        table = Table(title=escape(title_text), title_justify="left")
        for index, label in enumerate(header):
            table.add_column(label, justify="left" if index < 2 else "right")
        for row in rows:
            table.add_row(*(escape(c) for c in row), style="bold" if row[1] == "mean" else None)
        console.print(table)
    for line in notes(report):
        console.print(escape(line), highlight=False)


def to_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: both tables, the notes and the warnings."""
    from capbench.tables import md_escape

    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return lines + ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]

    parts = [
        f"# Judge comparison on {md_escape(report['benchmark'])}",
        "",
        f"Old: {md_escape(report['old']['path'])} · new: {md_escape(report['new']['path'])}",
        "",
        "## Agreement",
        "",
        *table(*agreement_rows(report)),
        "",
        "## Calibration",
        "",
        *table(*calibration_rows(report)),
        "",
        *(f"- {md_escape(line)}" for line in notes(report)),
        "",
    ]
    if report["warnings"]:
        parts += ["## Warnings", "", *(f"- {md_escape(w)}" for w in report["warnings"]), ""]
    return "\n".join(parts)
