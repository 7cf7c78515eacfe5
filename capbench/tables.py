"""Leaderboard tables: display cells and footnotes, the Markdown, CSV, LaTeX and HTML writers, the JSON report."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capbench.errors import ConfigError
from capbench.hashing import content_hash
from capbench.leaderboard import FORMATS, LEVEL, Board, Leaderboard, MetricResult, sort_metric, to_records
from capbench.records import RESULTS_FORMAT
from capbench.runs import atomic_write_text, safe_name

# ---------------------------------------------------------------- cells and notes

Cell = tuple[str, Any]
"""A displayed cell: its text, and the value a browser sorts it by."""


def _num(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def display_rows(board: Board) -> tuple[list[str], list[list[Cell]]]:
    """Return the board's headers and rows as text cells: score [low, high], Δ, length, judges, counts."""
    headers = ["model"]
    for m in board.metrics:
        headers.append(f"{m} {'↑' if board.infos[m].higher_is_better else '↓'}")
        if board.baseline is not None:
            headers.append(f"Δ {m}")
    headers += ["words", "judges", "images", "failed"]
    rows = []
    for record in board.frame.to_dict(orient="records"):
        model = str(record["model"])
        row: list[Cell] = [(model, model)]
        for m in board.metrics:
            point = _num(record.get(m))
            mark = f" †{board.mixed[m][model]}" if model in board.mixed.get(m, {}) else ""
            text = "—" if point is None else f"{point:.1f} [{record[f'{m}_low']:.1f}, {record[f'{m}_high']:.1f}]"
            row.append((text + mark if point is not None else text, point))
            if board.baseline is not None:
                row.append(_diff_cell(board, record, m))
        words = _num(record["words"])
        row += [("—" if words is None else f"{words:.1f}", words), (str(record["judges"]), str(record["judges"]))]
        row += [(str(int(record[k])), int(record[k])) for k in ("images", "failed")]
        rows.append(row)
    return headers, rows


def _diff_cell(board: Board, record: dict[str, Any], metric: str) -> Cell:
    diff = _num(record.get(f"{metric}_diff"))
    if record["model"] == board.baseline:
        return "baseline", 0.0
    if diff is None:
        base = board.runs[board.baseline].metrics.get(metric)
        mine = board.runs[record["model"]].metrics.get(metric)
        differs = base is not None and mine is not None and base.protocol != mine.protocol
        return ("n/c" if differs else "—"), None
    star = " *" if record[f"{metric}_diff_excludes_zero"] else ""
    return f"{diff:+.1f} [{record[f'{metric}_diff_low']:+.1f}, {record[f'{metric}_diff_high']:+.1f}]{star}", diff


def notes(board: Board, rounds: int, seed: int) -> list[str]:
    """Return the footnotes a reader needs: intervals, sort order, mixed protocols, the baseline."""
    column = board.sort
    metric = sort_metric(board)
    better = "" if metric is None else f", {'higher' if board.infos[metric].higher_is_better else 'lower'} is better"
    if metric in board.mixed:
        better += f" (but {metric} is mixed: rank only within a † group)"
    out = [
        f"Each score is the metric's headline with its {LEVEL:.0%} stratified bootstrap percentile interval over "
        f"images ({rounds} rounds, seed {seed}); ↑/↓: higher/lower is better. Sorted by {column}{better}.",
        "words: mean caption length in words; judges: the judge models behind the row's scores; images: images "
        "captioned; failed: images with no usable judgment in at least one metric.",
    ]
    if board.metrics:
        out.append("Metrics: " + "; ".join(f"{m} = {_described(board, m)}" for m in board.metrics) + ".")
    for m, letters in board.mixed.items():
        groups: dict[str, list[str]] = {}
        for model, letter in letters.items():
            groups.setdefault(letter, []).append(model)
        described = "; ".join(
            f"{letter} = {_protocol_text(board.runs[models[0]].metrics[m])} ({', '.join(models)})"
            for letter, models in sorted(groups.items())
        )
        out.append(
            f"† {m}: MIXED judges or protocols on this benchmark; its numbers compare only within a group "
            f"(the letter after the score): {described}."
        )
    if board.baseline is not None:
        out.append(
            f"Δ: paired bootstrap difference to {board.baseline} over the images both scored, with its "
            f"{LEVEL:.0%} interval; * marks an interval that excludes 0; n/c: not comparable (other judge or protocol)."
        )
    return out


def _described(board: Board, metric: str) -> str:
    """The metric's title and unit (or range), as it describes itself."""
    info = board.infos[metric]
    low, high = info.value_range
    return f"{info.title}, {info.unit or f'{low:g} to {high:g}'}"


def _protocol_text(result: MetricResult) -> str:
    judges = ", ".join(
        f"{role} judge {fp.get('backend', '?')}:{fp.get('model', '?')} [{content_hash(fp)[:6]}]"
        for role, fp in sorted(result.judges.items())
    )
    return f"{judges or 'no judge recorded'}, config {result.config_hash[:8]}"


# ---------------------------------------------------------------- writers


def to_markdown(board_set: Leaderboard) -> str:
    """Render every board as a Markdown table with its footnotes, then the warnings."""
    parts = ["# capbench leaderboard", ""]
    for board in board_set.boards:
        headers, rows = display_rows(board)
        parts += [f"## {md_escape(board.benchmark)}", "", _md_row(headers)]
        parts += [_md_row(["---"] + ["---:"] * (len(headers) - 1), escape=False)]
        parts += [_md_row([text for text, _ in row]) for row in rows]
        parts += ["", *(f"- {md_escape(note)}" for note in notes(board, board_set.rounds, board_set.seed)), ""]
    if board_set.warnings:
        parts += ["## Warnings", "", *(f"- {md_escape(w)}" for w in board_set.warnings), ""]
    return "\n".join(parts)


def md_escape(text: str) -> str:
    """Text as Markdown shows it and no more: tags and entities escaped, no line break, no cell border."""
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def _md_row(cells: Sequence[str], escape: bool = True) -> str:
    return "| " + " | ".join(md_escape(c) if escape else c for c in cells) + " |"


def to_csv(board_set: Leaderboard) -> str:
    """Return every board's numeric columns as one CSV (full precision, one row per model and benchmark)."""
    import pandas as pd

    return pd.concat([b.frame for b in board_set.boards], ignore_index=True).to_csv(index=False)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "↑": r"$\uparrow$",
          "↓": r"$\downarrow$", "Δ": r"$\Delta$", "†": r"\textsuperscript{\dag}", "—": "---", "<": r"\textless{}",
          ">": r"\textgreater{}"}  # fmt: skip


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (and the few symbols the tables use)."""
    return "".join(_LATEX.get(ch, ch) for ch in text)


def to_latex(board_set: Leaderboard) -> str:
    """Render every board as a booktabs ``table`` (needs ``\\usepackage{booktabs}``)."""
    parts = ["% capbench leaderboard; needs \\usepackage{booktabs}"]
    for board in board_set.boards:
        headers, rows = display_rows(board)
        caption = " ".join(notes(board, board_set.rounds, board_set.seed))
        parts += [
            "\\begin{table}[t]",
            "\\centering\\small",
            f"\\begin{{tabular}}{{l{'r' * (len(headers) - 1)}}}",
            "\\toprule",
            " & ".join(latex_escape(h) for h in headers) + r" \\",
            "\\midrule",
            *(" & ".join(latex_escape(text) for text, _ in row) + r" \\" for row in rows),
            "\\bottomrule",
            "\\end{tabular}",
            f"\\caption{{{latex_escape(board.benchmark)}: {latex_escape(caption)}}}",
            f"\\label{{tab:capbench-{safe_name(board.benchmark)}}}",
            "\\end{table}",
            "",
        ]
    return "\n".join(parts)


_CSS = """body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:80rem;
padding:0 1rem;color:#1d2330}h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-variant-numeric:tabular-nums}
th,td{padding:.3rem .7rem;border-bottom:1px solid #d8dce4;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left;font-weight:600}th{background:#eef1f6;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
tbody tr:hover{background:#f6f8fb}.mixed{background:#fff3cd}.sig{color:#0b6b2f;font-weight:600}.neg{color:#a11}
.scroll{overflow-x:auto}
.notes{font-size:.9rem;color:#444}.warn{color:#8a4b00}"""

_JS = """document.querySelectorAll("table.board").forEach(function(t){
t.querySelectorAll("th").forEach(function(th,i){th.addEventListener("click",function(){
var up=th.getAttribute("aria-sort")!=="descending",b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows);
t.querySelectorAll("th").forEach(function(h){h.removeAttribute("aria-sort")});
th.setAttribute("aria-sort",up?"descending":"ascending");
rows.sort(function(x,y){var a=x.cells[i].dataset.v,c=y.cells[i].dataset.v;if(a===c)return 0;
if(a==="")return 1;if(c==="")return -1;var p=Number(a),q=Number(c);
var r=(isNaN(p)||isNaN(q))?a.localeCompare(c):p-q;return up?-r:r});
rows.forEach(function(r){b.appendChild(r)})})});t.dataset.sortable="ready"});"""


def to_html(board_set: Leaderboard) -> str:
    """Render a self-contained page: inline CSS, tables readable without JS, headers sort on click."""
    body = []
    for board in board_set.boards:
        headers, rows = display_rows(board)
        body.append(f"<h2>{html.escape(board.benchmark)}</h2>")
        body.append(f'<div class="scroll"><table class="board" id="board-{html.escape(safe_name(board.benchmark))}">')
        body.append("<thead><tr>")
        body += [f'<th scope="col">{html.escape(h)}</th>' for h in headers]
        body.append("</tr></thead><tbody>")
        for row in rows:
            body.append("<tr>" + "".join(_html_cell(text, key) for text, key in row) + "</tr>")
        body.append('</tbody></table></div><ol class="notes">')
        body += [f"<li>{html.escape(n)}</li>" for n in notes(board, board_set.rounds, board_set.seed)]
        body.append("</ol>")
    if board_set.warnings:
        body.append('<h2>Warnings</h2><ul class="notes warn">')
        body += [f"<li>{html.escape(w)}</li>" for w in board_set.warnings]
        body.append("</ul>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>capbench leaderboard</title><style>{_CSS}</style></head><body>\n<h1>capbench leaderboard</h1>\n"
        + "\n".join(body)
        + f"\n<script>{_JS}</script>\n</body></html>\n"
    )


def _html_cell(text: str, key: Any) -> str:
    significant = text.endswith(" *")
    flags = (("mixed", "†" in text), ("sig", significant), ("neg", significant and text.startswith("-")))
    classes = " ".join(c for c, on in flags if on)
    attr = f' class="{classes}"' if classes else ""
    value = "" if key is None else str(key)
    return f'<td data-v="{html.escape(value)}"{attr}>{html.escape(text)}</td>'


def to_report(board_set: Leaderboard) -> dict[str, Any]:
    """Return the leaderboard as JSON-ready data, as ``capbench/schemas/leaderboard.schema.json`` describes.

    Every board's rows (the CSV's columns), each metric's description with its protocol groups,
    the notes; then the warnings, the files written, the settings and the timings.
    """
    boards = []
    for board in board_set.boards:
        metrics = {
            m: {
                **board.infos[m].to_dict(),
                "range": list(board.infos[m].value_range),  # = value_range; the name scripts used first
                "mixed_groups": board.mixed.get(m, {}),
            }
            for m in board.metrics
        }
        boards.append(
            {
                "benchmark": board.benchmark,
                "sort": board.sort,
                "baseline": board.baseline,
                "metrics": metrics,
                "rows": to_records(board.frame),
                "notes": notes(board, board_set.rounds, board_set.seed),
            }
        )
    return {
        "format": RESULTS_FORMAT,
        "results_dir": None if board_set.root is None else str(board_set.root),
        "rounds": board_set.rounds,
        "seed": board_set.seed,
        "boards": boards,
        "warnings": list(board_set.warnings),
        "files": [str(p) for p in board_set.files],
        "timings": {k: round(v, 4) for k, v in board_set.timings.items()},
    }


_WRITERS = {"md": to_markdown, "csv": to_csv, "tex": to_latex, "html": to_html}


def write_tables(board_set: Leaderboard, out_dir: Path, formats: Sequence[str]) -> list[Path]:
    """Write the leaderboard in each format to ``out_dir``, atomically; return the paths."""
    unknown = sorted(set(formats) - set(_WRITERS))
    if unknown:
        raise ConfigError(f"--formats: unknown format(s) {', '.join(unknown)}; choose from {', '.join(_WRITERS)}")
    paths = []
    for fmt in formats:
        path = Path(out_dir) / FORMATS[fmt]
        atomic_write_text(path, _WRITERS[fmt](board_set))
        paths.append(path)
    return paths
