"""Leaderboard tables: display cells and footnotes, the Markdown, CSV, LaTeX and HTML writers, the JSON report.

Every name that reaches a table (caption sets, benchmarks, domains, judges, notes) is escaped for
the format it is written in: :func:`md_escape`, :func:`latex_escape`, :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capbench.anchors import anchor
from capbench.arena_board import ArenaBoard, arena_notes
from capbench.coverage import describe_domains
from capbench.errors import ConfigError
from capbench.hashing import content_hash
from capbench.leaderboard import (
    FORMATS,
    LEVEL,
    Board,
    Leaderboard,
    MetricResult,
    domain_column,
    sort_metric,
    to_records,
)
from capbench.records import RESULTS_FORMAT
from capbench.runs import atomic_write_text, safe_name

# ---------------------------------------------------------------- cells and notes

Cell = tuple[str, Any]
"""A displayed cell: its text, and the value a browser sorts it by."""


def _num(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


#: The mark of a row that scored other images than the board's reference set.
OTHER_IMAGES = "‡"


def columns(board: Board) -> list[tuple[str, str | None]]:
    """Return the displayed columns: each header, and the metric whose score it shows (None for the others)."""
    out: list[tuple[str, str | None]] = [("model", None)]
    for m in board.metrics:
        out.append((f"{m} {'↑' if board.infos[m].higher_is_better else '↓'}", m))
        out += [(f"{m}: {domain}", None) for domain in board.domains.get(m, [])]
        if board.baseline is not None:
            out.append((f"Δ {m}", None))
    return [*out, ("words", None), ("judges", None), ("images", None), ("failed", None)]


def display_rows(board: Board) -> tuple[list[str], list[list[Cell]]]:
    """Return the board's headers and rows as text cells: score [low, high], Δ, length, judges, counts.

    A row that scored other images than the board's reference set has ‡ after its name.
    """
    headers = [h for h, _ in columns(board)]
    rows = []
    for record in board.frame.to_dict(orient="records"):
        model = str(record["model"])
        other = not record.get("same_images", True)
        row: list[Cell] = [(f"{model} {OTHER_IMAGES}" if other else model, model)]
        for m in board.metrics:
            point = _num(record.get(m))
            mark = f" †{board.mixed[m][model]}" if model in board.mixed.get(m, {}) else ""
            row.append((_interval(record, m) + mark if point is not None else "—", point))
            for domain in board.domains.get(m, []):
                column = domain_column(m, domain)
                row.append((_interval(record, column), _num(record.get(column))))
            if board.baseline is not None:
                row.append(_diff_cell(board, record, m))
        words = _num(record["words"])
        row += [("—" if words is None else f"{words:.1f}", words), (str(record["judges"]), str(record["judges"]))]
        images, of = int(record["images"]), _num(record.get("images_of"))
        shown = f"{images} of {of:.0f}" if of is not None and images != of else str(images)
        row += [(shown, images), (str(int(record["failed"])), int(record["failed"]))]
        rows.append(row)
    return headers, rows


def _interval(record: dict[str, Any], column: str) -> str:
    point = _num(record.get(column))
    if point is None:
        return "—"
    low, high = _num(record.get(f"{column}_low")), _num(record.get(f"{column}_high"))
    if low is None or high is None:
        return f"{point:.1f}"
    return f"{point:.1f} [{low:.1f}, {high:.1f}]"


def _diff_cell(board: Board, record: dict[str, Any], metric: str) -> Cell:
    diff = _num(record.get(f"{metric}_diff"))
    if record["model"] == board.baseline:
        return "baseline", 0.0
    if diff is None:
        base = board.runs[board.baseline].metrics.get(metric)
        mine = board.runs[record["model"]].metrics.get(metric)
        differs = base is not None and mine is not None and base.protocol != mine.protocol
        return ("n/c" if differs else "—"), None
    star = " *" if record.get(f"{metric}_diff_significant") is True else ""
    n = f" n={int(record[f'{metric}_diff_images'])}"
    return f"{diff:+.1f} [{record[f'{metric}_diff_low']:+.1f}, {record[f'{metric}_diff_high']:+.1f}]{n}{star}", diff


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
        "scored (of the benchmark's, when fewer); failed: images with no usable judgment in at least one metric.",
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
    for m, domains in board.domains.items():
        if domains:
            out.append(
                f"{m}: {', '.join(domains)}: the {m} score on each domain's images alone, with its {LEVEL:.0%} "
                "interval (the headline is the mean over domains)."
            )
    if board.baseline is not None:
        out.append(
            f"Δ: paired bootstrap difference to {board.baseline}, point and {LEVEL:.0%} interval both over the n "
            "images both scored (where the row or the baseline scored more images than n, Δ is not the difference of "
            f"the two displayed scores); * marks an interval that excludes 0 over at least {board.min_pairs} shared "
            "images (fewer get no mark, however narrow the interval); n/c: not comparable (other judge or protocol)."
        )
    out += _coverage_notes(board)
    return out


def _coverage_notes(board: Board) -> list[str]:
    """Say which rows scored other images than the reference set, and what part of the benchmark that set is."""
    out = []
    of = next((c.of for c in board.coverage.values() if c.of is not None), None)
    if of is not None and len(board.reference) < of:
        domains = describe_domains(next((c.domains for c in board.coverage.values() if c.ids == board.reference), {}))
        out.append(
            f"The rows are compared on {board.reference_text()}{f' ({domains})' if domains else ''} of "
            f"{board.benchmark}, not the whole benchmark: the scores say nothing of the other images."
        )
    flagged = board.flagged()
    if flagged:
        described = "; ".join(f"{model}: {text}" for model, text in flagged.items())
        out.append(
            f"{OTHER_IMAGES} OTHER IMAGES: these rows scored other images than the board's reference set "
            f"({board.reference_text()}), so their scores are not comparable with the rest; they are listed after "
            f"the comparable rows. {described}. Score the same images (`capbench eval` with the same --limit, or "
            "caption files covering the same images) to compare them."
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
    for arena in board_set.arenas:
        headers, rows = arena_rows(arena)
        parts += [f"## {md_escape(arena.benchmark)}: arena", "", _md_row(headers)]
        parts += [_md_row(["---:", "---"] + ["---:"] * (len(headers) - 2), escape=False)]
        parts += [_md_row(row) for row in rows]
        parts += ["", *(f"- {md_escape(note)}" for note in arena_notes(arena)), ""]
    if board_set.warnings:
        parts += ["## Warnings", "", *(f"- {md_escape(w)}" for w in board_set.warnings), ""]
    return "\n".join(parts)


def md_escape(text: str) -> str:
    """Text as Markdown shows it and no more: tags and entities escaped, no line break, no cell border."""
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def _md_row(cells: Sequence[str], escape: bool = True) -> str:
    return "| " + " | ".join(md_escape(c) if escape else c for c in cells) + " |"


def arena_rows(arena: ArenaBoard) -> tuple[list[str], list[list[str]]]:
    """Return an arena table's headers and text rows: place, caption set, ratings with intervals, record."""
    headers = ["#", "caption set", "Bradley-Terry", "95% interval", "Elo", "95% interval", "battles", "W-L-T"]
    rows = []
    for place, r in enumerate(arena.rows, start=1):
        elo = "—" if r.elo is None else f"{r.elo:.0f}"
        elo_interval = "—" if r.elo_low is None or r.elo_high is None else f"[{r.elo_low:.0f}, {r.elo_high:.0f}]"
        rows.append(
            [str(place), r.model, f"{r.rating:.0f}", f"[{r.low:.0f}, {r.high:.0f}]", elo, elo_interval,
             str(r.battles), f"{r.wins}-{r.losses}-{r.ties}"]
        )  # fmt: skip
    return headers, rows


def to_csv(board_set: Leaderboard) -> str:
    """Return every board's numeric columns as one CSV (full precision, one row per model and benchmark)."""
    import pandas as pd

    if not board_set.boards:  # arena rankings only: they are in the other formats and the JSON report
        return ""
    return pd.concat([b.frame for b in board_set.boards], ignore_index=True).to_csv(index=False)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "↑": r"$\uparrow$",
          "↓": r"$\downarrow$", "Δ": r"$\Delta$", "†": r"\textsuperscript{\dag}", "—": "---", "<": r"\textless{}",
          ">": r"\textgreater{}", "‡": r"\textsuperscript{\ddag}"}  # fmt: skip


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
    for arena in board_set.arenas:
        headers, rows = arena_rows(arena)
        parts += [
            "\\begin{table}[t]",
            "\\centering\\small",
            "\\begin{tabular}{rl" + "r" * (len(headers) - 2) + "}",
            "\\toprule",
            " & ".join(latex_escape(h) for h in headers) + r" \\",
            "\\midrule",
            *(" & ".join(latex_escape(text) for text in row) + r" \\" for row in rows),
            "\\bottomrule",
            "\\end{tabular}",
            f"\\caption{{{latex_escape(arena.benchmark)}, arena: {latex_escape(' '.join(arena_notes(arena)))}}}",
            f"\\label{{tab:capbench-{safe_name(arena.benchmark)}-arena}}",
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
.scroll{overflow-x:auto}tr.other-images{background:#fde8e8}figure{margin:1rem 0}
figure img{max-width:100%;height:auto}figcaption{font-size:.85rem;color:#555}
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
    """Render a self-contained page: inline CSS, tables readable without JS, headers sort on click.

    The board's figures, if drawn (:attr:`Leaderboard.figures`), are embedded as ``data:`` URIs; with
    an inspector report (:attr:`Leaderboard.inspect`) each caption set × metric cell links to its
    anchor there (:func:`capbench.anchors.anchor`).
    """
    body = []
    for board in board_set.boards:
        body += _html_board(board, board_set)
    for arena in board_set.arenas:
        headers, rows = arena_rows(arena)
        body.append(f"<h2>{html.escape(arena.benchmark)}: arena</h2>")
        body.append(
            f'<div class="scroll"><table class="board arena" id="arena-{html.escape(safe_name(arena.benchmark))}">'
        )
        body.append(
            "<thead><tr>" + "".join(f'<th scope="col">{html.escape(h)}</th>' for h in headers) + "</tr></thead>"
        )
        body.append("<tbody>")
        for row, r in zip(rows, arena.rows, strict=True):
            keys = [row[0], r.model, r.rating, r.low, r.elo, r.elo_low, r.battles, r.wins]
            body.append("<tr>" + "".join(_html_cell(text, key) for text, key in zip(row, keys, strict=True)) + "</tr>")
        body.append('</tbody></table></div><ol class="notes">')
        body += [f"<li>{html.escape(n)}</li>" for n in arena_notes(arena)]
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


def _html_board(board: Board, board_set: Leaderboard) -> list[str]:
    headers, rows = display_rows(board)
    linked = {i: m for i, (_, m) in enumerate(columns(board)) if m is not None} if board_set.inspect else {}
    body = [f"<h2>{html.escape(board.benchmark)}</h2>"]
    body.append(f'<div class="scroll"><table class="board" id="board-{html.escape(safe_name(board.benchmark))}">')
    body.append("<thead><tr>")
    body += [f'<th scope="col">{html.escape(h)}</th>' for h in headers]
    body.append("</tr></thead><tbody>")
    for row in rows:
        model = str(row[0][1])
        other = row[0][0].endswith(f" {OTHER_IMAGES}")
        cells = []
        for index, (text, key) in enumerate(row):
            href = (
                f"{board_set.inspect}#{anchor(model, linked[index])}" if index in linked and key is not None else None
            )
            cells.append(_html_cell(text, key, href))
        body.append(('<tr class="other-images">' if other else "<tr>") + "".join(cells) + "</tr>")
    body.append('</tbody></table></div><ol class="notes">')
    body += [f"<li>{html.escape(n)}</li>" for n in notes(board, board_set.rounds, board_set.seed)]
    body.append("</ol>")
    for path in board_set.figures.get(board.benchmark, []):
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        name = html.escape(Path(path).name)
        body.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{name}"><figcaption>{name}</figcaption></figure>'
        )
    return body


def _html_cell(text: str, key: Any, href: str | None = None) -> str:
    significant = text.endswith(" *")
    flags = (("mixed", "†" in text), ("sig", significant), ("neg", significant and text.startswith("-")))
    classes = " ".join(c for c, on in flags if on)
    attr = f' class="{classes}"' if classes else ""
    value = "" if key is None else str(key)
    shown = html.escape(text) if href is None else f'<a href="{html.escape(href)}">{html.escape(text)}</a>'
    return f'<td data-v="{html.escape(value)}"{attr}>{shown}</td>'


def to_report(board_set: Leaderboard) -> dict[str, Any]:
    """Return the leaderboard as JSON-ready data, as ``capbench/schemas/leaderboard.schema.json`` describes.

    Every board's rows (the CSV's columns), each metric's description with its protocol groups,
    the image coverage, the notes; the arena rankings; then the warnings, the files written, the
    settings and the timings.
    """
    boards = []
    for board in board_set.boards:
        metrics = {
            m: {
                **board.infos[m].to_dict(),
                "range": list(board.infos[m].value_range),  # = value_range; the name scripts used first
                "mixed_groups": board.mixed.get(m, {}),
                "domains": list(board.domains.get(m, [])),
            }
            for m in board.metrics
        }
        of = next((c.of for c in board.coverage.values() if c.of is not None), None)
        boards.append(
            {
                "benchmark": board.benchmark,
                "sort": board.sort,
                "baseline": board.baseline,
                "metrics": metrics,
                "rows": to_records(board.frame),
                "coverage": {"reference_images": len(board.reference), "images_of": of, "flagged": board.flagged()},
                "notes": notes(board, board_set.rounds, board_set.seed),
            }
        )
    return {
        "format": RESULTS_FORMAT,
        "results_dir": None if board_set.root is None else str(board_set.root),
        "rounds": board_set.rounds,
        "seed": board_set.seed,
        "min_pairs": board_set.min_pairs,
        "inspect": board_set.inspect,
        "boards": boards,
        "arenas": [a.to_dict() for a in board_set.arenas],
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
