"""The inspector's HTML: every judgment of an :class:`~capbench.inspector.Inspection` on one self-contained page.

Everything a reader needs is in the markup (no script is needed to read it); the inline script
only adds sorting and filtering. Every text from results or benchmarks passes through :func:`esc`,
so captions and judge replies holding tags, scripts, control characters or 100 KB cannot break it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from typing import Any

from capbench.anchors import anchor
from capbench.inspector import ARENA, Inspection, as_json, sample_value, short_hash, thumbnail_uri
from capbench.metrics.parsing import LETTERS
from capbench.records import MetricInfo, Sample, SampleScore
from capbench.results import SetResult

#: Characters HTML may not hold (C0 controls but tab and newlines, DEL, lone surrogates): shown as U+FFFD.
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_OUTCOME = {1.0: "win", 0.0: "loss", 0.5: "tie"}
_VERDICT = {"1": "Caption 1 is better", "2": "Caption 2 is better", "tie": "Tie"}


def esc(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return escape(_UNSAFE.sub("\ufffd", value if isinstance(value, str) else str(value)), quote=True)


def num(value: Any) -> str:
    """A number as the page shows it (``—`` for none)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else esc(value)
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"


def render(inspection: Inspection, thumbnail: int = 320) -> str:
    """Return the whole page."""
    keys = [(m, n) for m in inspection.metrics for n in inspection.sets if m in inspection.sets[n].summary]
    body = [
        _header(inspection),
        _overview(inspection),
        _controls(inspection, keys),
        '<main id="samples">',
        *(_article(inspection, sample_id, i, keys, thumbnail) for i, sample_id in enumerate(inspection.ids)),
        '</main>\n<h2 id="runs">Per caption set and metric</h2><div class="runs">',
        *(_run_section(inspection, name, m) for m, name in keys),
        _arena_sections(inspection),
        "</div>",
    ]
    title = f"capbench inspect: {inspection.benchmark}"
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{esc(title)}</title>\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(b for b in body if b) + f"\n<script>{_JS}</script>\n"
        "</body>\n</html>\n"
    )


# ---------------------------------------------------------------- the top of the page


def _header(inspection: Inspection) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sources = ", ".join(f"<code>{esc(s)}</code>" for s in inspection.sources)
    warnings = "".join(f"<li>{esc(w)}</li>" for w in inspection.warnings)
    return (
        f"<header><h1>capbench inspect: <span>{esc(inspection.benchmark)}</span></h1>"
        f"<p>{len(inspection.ids)} images · caption sets: {esc(', '.join(inspection.names))} · from {sources} · "
        f"written {when}</p>" + (f'<ul class="warnings">{warnings}</ul>' if warnings else "") + "</header>"
    )


def _overview(inspection: Inspection) -> str:
    infos = inspection.infos
    head = "".join(f'<th scope="col">{esc(infos[m].title)}</th>' for m in inspection.metrics)
    arena = '<th scope="col">arena (Bradley–Terry)</th>' if inspection.battles else ""
    rows = []
    for name in inspection.names:
        result = inspection.sets.get(name)
        cells = []
        for metric in inspection.metrics:
            if result is None or metric not in result.summary:
                cells.append("<td>—</td>")
                continue
            summary = result.summary[metric]
            extra = f"n={num(summary.get('images', len(result.samples)))}"
            cells.append(
                f'<td><a href="#{esc(anchor(name, metric))}">{num(result.headline(metric))}</a> '
                f'<span class="n">{extra}, {result.unscored.get(metric, 0)} unscored</span></td>'
            )
        if inspection.battles:
            fought = any(name in (b["model_a"], b["model_b"]) for b in inspection.battles)
            rating = num(_rating(inspection, name))
            cells.append(f'<td><a href="#{esc(anchor(name, ARENA))}">{rating}</a></td>' if fought else "<td>—</td>")
        rows.append(f'<tr><th scope="row">{esc(name)}</th>{"".join(cells)}</tr>')
    return (
        '<section class="overview"><h2>Caption sets</h2><table><thead><tr><th scope="col">caption set</th>'
        f"{head}{arena}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _rating(inspection: Inspection, name: str) -> float | None:
    for row in (inspection.rankings or {}).get("bradley_terry") or ():
        if isinstance(row, Mapping) and row.get("model") == name:
            value = row.get("rating", row.get("score"))
            return value if isinstance(value, (int, float)) else None
    return None


def _run_section(inspection: Inspection, name: str, metric: str) -> str:
    """One caption set's results of one metric: its summary, judges, settings, and its images by score."""
    result = inspection.sets[name]
    info = inspection.infos[metric]
    entry = result.manifest.get("metrics", {}).get(metric, {}) if isinstance(result.manifest, dict) else {}
    summary = result.summary.get(metric, {})
    direction = "higher is better" if info.higher_is_better else "lower is better"
    judges = entry.get("judges") if isinstance(entry, Mapping) else None
    judge_text = "; ".join(
        f"{esc(role)}: {esc(fp.get('backend', '?'))} {esc(fp.get('model', ''))}"
        for role, fp in (judges or {}).items()
        if isinstance(fp, Mapping)
    )
    ranked = _ranked(inspection, result, metric, info)
    settings = {k: entry.get(k) for k in ("config", "prompts", "config_hash") if isinstance(entry, Mapping)}
    return (
        f'<section class="run" id="{esc(anchor(name, metric))}">'
        f"<h2>{esc(name)} · {esc(info.title)}: {num(result.headline(metric))}</h2>"
        f'<p class="desc">{esc(info.description)} · {esc(info.unit or "no unit")}, {direction} · judges: '
        f"{judge_text or '—'} · run folder <code>{esc(result.path)}</code></p>"
        f"{_summary(summary)}"
        f"<details><summary>settings</summary><pre>{esc(as_json(settings))}</pre></details>"
        f'<p class="ranklabel">images, worst first (a link opens the image\'s judgment):</p>'
        f'<ol class="rank">{ranked}</ol></section>'
    )


def _summary(summary: Mapping[str, Any]) -> str:
    scalars = [(k, v) for k, v in summary.items() if not isinstance(v, (Mapping, list))]
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{num(v)}</dd>" for k, v in scalars)
    tables = []
    for key, value in summary.items():
        if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
            columns = list(dict.fromkeys(c for v in value.values() for c in v))
            head = "".join(f"<th>{esc(c)}</th>" for c in columns)
            body = "".join(
                f"<tr><th>{esc(k)}</th>{''.join(f'<td>{num(v.get(c))}</td>' for c in columns)}</tr>"
                for k, v in value.items()
            )
            tables.append(
                f'<table class="breakdown"><caption>{esc(key)}</caption><tr><th></th>{head}</tr>{body}</table>'
            )
        elif isinstance(value, (Mapping, list)):
            rows += f"<dt>{esc(key)}</dt><dd>{esc(as_json(value)) if value else '—'}</dd>"
    return f'<dl class="summary">{rows}</dl>' + "".join(tables)


def _ranked(inspection: Inspection, result: SetResult, metric: str, info: MetricInfo) -> str:
    shown = set(inspection.ids)
    items = []
    for record in result.samples:
        score = record.scores.get(metric)
        if score is None or record.sample_id not in shown:
            continue
        value = sample_value(score, _reward_key(info))
        items.append((value, record.sample_id, _failed(score, value)))
    sign = 1 if info.higher_is_better else -1
    items.sort(key=lambda t: (t[0] is not None, sign * (t[0] or 0.0), t[1]))
    return "".join(
        f'<li{" class=failed" if failed else ""}><a href="#{esc(anchor(result.name, metric, sample_id))}">'
        f"{esc(sample_id)}</a> {num(value)}{' (failures)' if failed else ''}</li>"
        for value, sample_id, failed in items
    )


def _reward_key(info: MetricInfo) -> str | None:
    return info.rewards[0][1] if info.rewards else None


def _failed(score: SampleScore, value: float | None) -> bool:
    return value is None or score.unscored > 0 or score.failed > 0


def _arena_sections(inspection: Inspection) -> str:
    if not inspection.battles:
        return ""
    out = []
    for name in inspection.names:
        mine = [b for b in inspection.battles if name in (b["model_a"], b["model_b"])]
        if not mine:
            continue
        tally = {"win": 0, "loss": 0, "tie": 0, "no verdict": 0}
        for battle in mine:
            tally[_outcome_word(_my_outcome(battle, name))] += 1
        links = "".join(
            f'<li><a href="#{esc(anchor(name, ARENA, i))}">{esc(i)}</a></li>'
            for i in dict.fromkeys(b["sample_id"] for b in mine)
            if i in inspection.ids
        )
        rating = _rating(inspection, name)
        out.append(
            f'<section class="run" id="{esc(anchor(name, ARENA))}"><h2>{esc(name)} · arena battles</h2>'
            f"<p>{len(mine)} battles: {tally['win']} won, {tally['loss']} lost, {tally['tie']} tied, "
            f"{tally['no verdict']} without a verdict · Bradley–Terry rating {num(rating)}</p>"
            f'<ol class="rank">{links}</ol></section>'
        )
    if inspection.rankings:
        out.append(
            '<details class="rankings"><summary>arena rankings.json</summary>'
            f"<pre>{esc(as_json(inspection.rankings))}</pre></details>"
        )
    return "\n".join(out)


def _controls(inspection: Inspection, keys: Sequence[tuple[str, str]]) -> str:
    infos = inspection.infos
    scores = "".join(
        f'<option value="s{i}">{esc(infos[m].title)} of {esc(n)}</option>' for i, (m, n) in enumerate(keys)
    )
    domains = sorted({_domain(inspection, i) for i in inspection.ids})
    domain_options = "".join(f'<option value="{esc(d)}">{esc(d)}</option>' for d in domains)
    return (
        '<nav id="controls" hidden><label>score of <select id="key">' + scores + "</select></label>"
        '<label>order <select id="order"><option value="bench">benchmark order</option>'
        '<option value="asc">score, lowest first</option><option value="desc">score, highest first</option>'
        '<option value="id">image id</option></select></label>'
        '<label>score from <input id="min" type="number" step="any" size="5"> to '
        '<input id="max" type="number" step="any" size="5"></label>'
        f'<label>domain <select id="domain"><option value="">all</option>{domain_options}</select></label>'
        '<label><input id="failed" type="checkbox"> only images with judge failures</label>'
        '<label>text <input id="text" type="search" size="14"></label>'
        '<button id="open" type="button">expand all</button> <span id="count"></span></nav>'
    )


# ---------------------------------------------------------------- one image


def _domain(inspection: Inspection, sample_id: str) -> str:
    sample = inspection.samples.get(sample_id)
    if sample is not None:
        return sample.domain
    for result in inspection.sets.values():
        for record in result.samples:
            if record.sample_id == sample_id:
                for score in record.scores.values():
                    if isinstance(score.details.get("domain"), str):
                        return score.details["domain"]
    return "default"


def _article(inspection: Inspection, sample_id: str, order: int, keys: Sequence[tuple[str, str]], size: int) -> str:
    sample = inspection.samples.get(sample_id)
    records = inspection.records
    data = {"order": str(order), "id": sample_id, "domain": _domain(inspection, sample_id), "failed": "0"}
    infos = inspection.infos
    for i, (metric, name) in enumerate(keys):
        score = records[name].get(sample_id).scores.get(metric) if sample_id in records[name] else None
        if score is not None:
            value = sample_value(score, _reward_key(infos[metric]))
            if value is not None:
                data[f"s{i}"] = repr(value)
            if _failed(score, value):
                data["failed"] = "1"
    battles = [b for b in inspection.battles if b["sample_id"] == sample_id]
    if any(b.get("outcome") is None for b in battles):
        data["failed"] = "1"
    columns = [
        _set_column(inspection, name, sample_id, sample, records.get(name, {}), battles) for name in inspection.names
    ]
    attributes = " ".join(f'data-{k}="{esc(v)}"' for k, v in data.items())
    return (
        f'<article class="sample" id="sample-{short_hash(sample_id)}" {attributes}>'
        f'<div class="media">{_images(inspection, sample_id, sample, size)}'
        f'<h2>{esc(sample_id)}</h2><p class="domain">domain: {esc(data["domain"])}</p>{_reference(sample)}</div>'
        f'<div class="sets">{"".join(columns)}</div></article>'
    )


def _images(inspection: Inspection, sample_id: str, sample: Sample | None, size: int) -> str:
    why = inspection.missing_images.get(sample_id)
    if why is not None or sample is None:
        return f'<div class="noimage">image not shown: {esc(sample_id)}<br>{esc(why or "")}</div>'
    out = []
    for index, image in enumerate(sample.images):
        width = size if index == 0 else size // 3
        try:
            uri = thumbnail_uri(image.path, width)
        except OSError as exc:
            out.append(f'<div class="noimage">image not found: {esc(image.path)}<br>{esc(exc)}</div>')
            continue
        out.append(f'<img class="thumb" src="{uri}" alt="image {esc(sample_id)}" style="max-width:{width}px">')
    return "".join(out)


def _reference(sample: Sample | None) -> str:
    if sample is None:
        return '<p class="muted">no reference: the benchmark sample was not found</p>'
    facts = "".join(f'<li value="{i}">R{i}. {esc(f)}</li>' for i, f in enumerate(sample.reference_facts, 1))
    baselines = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in sorted(sample.baselines.items()))
    return (
        f'<details class="ref" open><summary>reference caption</summary><div class="text">'
        f"{esc(sample.reference_caption) or '—'}</div></details>"
        + (f'<details class="ref"><summary>reference facts ({len(sample.reference_facts)})</summary>'
           f'<ol class="facts">{facts}</ol></details>' if facts else "")
        + (f'<details class="ref"><summary>baseline captions ({len(sample.baselines)})</summary>'
           f'<dl class="baselines">{baselines}</dl></details>' if baselines else "")
    )  # fmt: skip


def _set_column(
    inspection: Inspection,
    name: str,
    sample_id: str,
    sample: Sample | None,
    records: Mapping[str, Any],
    battles: Sequence[Mapping[str, Any]],
) -> str:
    caption = inspection.captions.get(name, {}).get(sample_id)
    record = records.get(sample_id)
    mine = [b for b in battles if name in (b["model_a"], b["model_b"])]
    if caption is None and record is None and not mine:
        return f'<div class="set"><h3>{esc(name)}</h3><p class="muted">no caption of this image</p></div>'
    text = (
        f'<div class="caption">{esc(caption)}</div>'
        if caption is not None
        else '<p class="muted">caption not found</p>'
    )
    cells = []
    infos = inspection.infos
    for metric in inspection.metrics:
        if name not in inspection.sets or metric not in inspection.sets[name].summary:
            continue
        score = record.scores.get(metric) if record is not None else None
        cells.append(_cell(name, metric, sample_id, score, sample, infos[metric]))
    if mine:
        cells.append(_battles_cell(inspection, name, sample_id, mine))
    words = len(caption.split()) if caption else 0
    return f'<div class="set"><h3>{esc(name)} <span class="n">{words} words</span></h3>{text}{"".join(cells)}</div>'


def _cell(
    name: str, metric: str, sample_id: str, score: SampleScore | None, sample: Sample | None, info: MetricInfo
) -> str:
    ident = esc(anchor(name, metric, sample_id))
    if score is None:
        return f'<div class="cell" id="{ident}"><div class="head"><b>{esc(info.title)}</b> not scored</div></div>'
    value = sample_value(score, _reward_key(info))
    failed = _failed(score, value)
    badges = ""
    if score.unscored:
        badges += f' <span class="badge bad">{score.unscored} unscored</span>'
    if score.failed:
        badges += f' <span class="badge bad">{score.failed} failed calls</span>'
    body, gist = _judgment(score, sample)
    return (
        f'<div class="cell{" failed" if failed else ""}" id="{ident}" data-score="{esc(repr(value))}">'
        f'<div class="head"><b>{esc(info.title)}</b> <span class="value">{num(value)}</span>{badges} '
        f'<span class="gist">{gist}</span></div><details class="judgment"><summary>what the judge said</summary>'
        f"{body}</details></div>"
    )


def _judgment(score: SampleScore, sample: Sample | None) -> tuple[str, str]:
    """The judgment's HTML (every recorded field) and a one-line gist."""
    details = dict(score.details)
    details.pop("domain", None)
    parts, gist = [], ""
    if isinstance(details.get("facts"), list):
        html, gist = _facts(details, sample)
        parts.append(html)
    for key in ("questions", "draws"):
        if isinstance(details.get(key), list):
            html, gist = _questions(details.pop(key), sample)
            parts.append(html)
    if isinstance(details.get("pairs"), list):
        html, gist = _pairs(details.pop("pairs"), sample)
        parts.append(html)
    values = " · ".join(f"{esc(k)} {num(v)}" for k, v in score.values.items())
    units = " · ".join(f"{esc(s)} {num(v)} ×{num(w)}" for s, v, w in score.units or ())
    meta = f'<p class="values">values: {values or "—"}' + (f"<br>units: {units}" if units else "")
    meta += f"<br>caption sha256 {esc(score.caption_sha256[:12])}…</p>" if score.caption_sha256 else "</p>"
    return meta + "".join(parts) + _leftovers(details), gist


def _leftovers(fields: Mapping[str, Any]) -> str:
    if not fields:
        return ""
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{_field(v)}</dd>" for k, v in fields.items())
    return f'<dl class="other">{rows}</dl>'


def _field(value: Any) -> str:
    if value is None or isinstance(value, (int, float)):
        return num(value)
    return esc(value) if isinstance(value, str) else f"<pre>{esc(as_json(value))}</pre>"


def _marks(values: Iterable[Any]) -> str:
    return "".join(
        '<span class="ok">✓</span>' if v else '<span class="bad">✗</span>' if v is False else "?" for v in values
    )


def _facts(details: dict[str, Any], sample: Sample | None) -> tuple[str, str]:
    facts = details.pop("facts") or []
    verdicts = [v for v in details.pop("verdicts", None) or [] if isinstance(v, Mapping)]
    matches = [m for m in details.pop("matches", None) or [] if isinstance(m, list)]
    ratings, failures = details.pop("ratings", None), details.pop("failures", None) or []
    error, n_refs = details.pop("error", None), details.pop("references", None)
    derived = details.pop("reference_facts", None)  # decomposed from the reference caption by the judge
    references = list(sample.reference_facts) if sample is not None else []
    if isinstance(derived, list):
        references = [str(r) for r in derived]
    elif isinstance(n_refs, int) and n_refs != len(references):
        references = []  # decomposed by the judge in a run that did not record them
    rows = []
    correct_n = pointable_n = matched_n = 0
    for i, fact in enumerate(facts):
        fact = fact if isinstance(fact, Mapping) else {"fact": fact}
        correct = [_at(v.get("correct"), i) for v in verdicts]
        pointable = [_at(v.get("pointable"), i) for v in verdicts]
        matched = [_at(m, i) for m in matches]
        correct_n += _majority(correct)
        pointable_n += _majority(pointable)
        matched_n += _majority([m is not None for m in matched])
        rows.append(
            f"<tr><td>{i + 1}</td><td>{esc(fact.get('fact', ''))}</td><td>{esc(fact.get('object', ''))}</td>"
            f'<td>{"yes" if fact.get("descriptive", True) else "no"}</td><td class="m">{_marks(correct)}</td>'
            f'<td class="m">{_marks(pointable)}</td><td>{_matched(matched, references)}</td></tr>'
        )
    samples = f"{len(verdicts)} verification, {len(matches)} matching sample(s)"
    table = (
        f'<table class="facts"><caption>caption facts ({samples}; one mark per sample; R = reference fact)</caption>'
        "<tr><th>#</th><th>fact</th><th>object</th><th>descr.</th><th>correct</th><th>pointable</th>"
        f"<th>matched</th></tr>{''.join(rows)}</table>"
        if facts
        else '<p class="bad">no facts</p>'
    )
    extra = ""
    if isinstance(ratings, Mapping):
        extra += (
            "<p>linguistic ratings (1-10): " + " · ".join(f"{esc(k)} {num(v)}" for k, v in ratings.items()) + "</p>"
        )
    if n_refs is not None:
        extra += (
            f"<p>reference facts: {num(n_refs)}"
            + (
                ""
                if references or not n_refs
                else " (decomposed from the reference caption by the judge; their text is not recorded)"
            )
            + (" (decomposed from the reference caption by the judge)" if isinstance(derived, list) else "")
            + "</p>"
        )
    if error:
        extra += f'<p class="bad">not scored: {esc(error)}</p>'
    gist = f"{len(facts)} facts · {correct_n} correct · {pointable_n} pointable · {matched_n} matched"
    return table + extra + _failures(failures), gist


def _at(values: Any, index: int) -> Any:
    return values[index] if isinstance(values, list) and index < len(values) else None


def _majority(flags: Sequence[Any]) -> int:
    return int(bool(flags) and 2 * sum(1 for f in flags if f) >= len(flags) and any(flags))


def _matched(matched: Sequence[Any], references: Sequence[str]) -> str:
    if not matched:
        return "—"
    counts: dict[Any, int] = {}
    for m in matched:
        counts[m] = counts.get(m, 0) + 1
    labels = " ".join(("none" if m is None else f"R{esc(m)}") + (f" ×{n}" if n > 1 else "") for m, n in counts.items())
    texts = "".join(
        f'<div class="reftext">R{m}: {esc(references[m - 1])}</div>'
        for m in dict.fromkeys(m for m in matched if isinstance(m, int))
        if 0 < m <= len(references)
    )
    return labels + texts


def _failures(failures: Sequence[Any]) -> str:
    out = []
    for failure in failures:
        failure = failure if isinstance(failure, Mapping) else {"error": failure}
        raw = failure.get("raw")
        reply = f"<pre>{esc(raw)}</pre>" if raw is not None else " (no reply: the call failed)"
        out.append(f"<li><b>{esc(failure.get('stage', '?'))}</b>: {esc(failure.get('error', ''))}{reply}</li>")
    return (
        f'<div class="failures"><p class="bad">judge failures ({len(out)}):</p><ul>{"".join(out)}</ul></div>'
        if out
        else ""
    )


_QUESTION_KEYS = (
    *("question_id", "question", "category", "domain", "options", "answer", "chosen", "status", "score", "reply"),
    *("option_scores", "error", "draw", "correct", "official_chosen", "official_score", "letter"),
)


def _questions(records: Sequence[Any], sample: Sample | None) -> tuple[str, str]:
    """CaptionQA questions or CapRL draws: the question, the options as shown, the judge's choice and the right one."""
    known = {q.id: q for q in sample.questions} if sample is not None else {}
    items, right, scored = [], 0, 0
    for record in records:
        record = record if isinstance(record, Mapping) else {"error": record}
        status = str(record.get("status", "?"))
        good = record.get("correct") is True or status == "correct"
        right += good
        scored += status not in ("failed", "unparsed") or record.get("correct") is not None
        question = record.get("question") or getattr(known.get(str(record.get("question_id"))), "question", None)
        options = record.get("options") if isinstance(record.get("options"), list) else []
        scores = record.get("option_scores") if isinstance(record.get("option_scores"), list) else []
        lines = []
        for j, option in enumerate(options):
            letter = LETTERS[j] if j < len(LETTERS) else str(j)
            tags = []
            if letter == record.get("chosen"):
                tags.append('<span class="badge judge">judge chose</span>')
            if letter == record.get("answer"):
                tags.append('<span class="badge right">right answer</span>')
            if "official_chosen" in record and letter == record.get("official_chosen"):
                tags.append('<span class="badge">official parser chose</span>')
            pmi = f' <span class="pmi">{num(scores[j])}</span>' if j < len(scores) else ""
            classes = " ".join(
                c
                for c, on in (("chosen", letter == record.get("chosen")), ("answer", letter == record.get("answer")))
                if on
            )
            lines.append(f'<li class="{classes}"><b>{letter}.</b> {esc(option)} {"".join(tags)}{pmi}</li>')
        head = " · ".join(
            x
            for x in (
                f"draw {num(record['draw'])}" if "draw" in record else "",
                esc(record.get("question_id", "")),
                esc(record.get("category", "")),
                f'<span class="status st-{esc(status)}">{esc(status)}</span>',
                f"score {num(record['score'])}" if "score" in record else "",
                f"correct {esc(record['correct'])}" if "correct" in record else "",
                f"official score {num(record['official_score'])}" if "official_score" in record else "",
            )
            if x
        )
        reply = record.get("reply")
        tail = (
            f'<p class="reply">reply: <code>{esc(reply)}</code>' if reply is not None else '<p class="reply">no reply'
        )
        if "letter" in record:
            tail += f" · letter read: {esc(record['letter'])}"
        if scores:
            tail += " · numbers: the caption's log-likelihood gain per option (loglik mode)"
        tail += "</p>"
        if record.get("error"):
            tail += f'<p class="bad">judge failure: {esc(record["error"])}</p>'
        rest = {k: v for k, v in record.items() if k not in _QUESTION_KEYS}
        items.append(
            f'<li class="q q-{esc(status)}"><div class="qh">{head}</div>'
            f'<div class="qt">{esc(question) if question else "<i>question text not recorded</i>"}</div>'
            f'<ul class="opts">{"".join(lines)}</ul>{tail}{_leftovers(rest)}</li>'
        )
    gist = f"{right} of {len(records)} answered right" + (
        f" ({len(records) - scored} unscored)" if scored < len(records) else ""
    )
    return f'<ol class="questions">{"".join(items)}</ol>', gist


def _pairs(pairs: Sequence[Any], sample: Sample | None) -> tuple[str, str]:
    """CapArena-Auto: the caption against each baseline, both orders' verdicts and the judge's reasons."""
    items, tally = [], {"win": 0, "loss": 0, "tie": 0, "no verdict": 0}
    for pair in pairs:
        pair = pair if isinstance(pair, Mapping) else {"baseline": pair}
        baseline = str(pair.get("baseline", "?"))
        text = sample.baselines.get(baseline) if sample is not None else None
        shown = (
            f'<details><summary>{esc(baseline)}\'s caption</summary><div class="text">{esc(text)}</div></details>'
            if text
            else ""
        )
        if pair.get("self"):
            items.append(f"<li>vs <b>{esc(baseline)}</b>: not judged (the same caption as that baseline)</li>")
            continue
        word = _outcome_word(pair.get("outcome"))
        tally[word] += 1
        orders = "".join(
            _order(o, o.get("first") == "a", o.get("outcome"))
            for o in pair.get("orders") or ()
            if isinstance(o, Mapping)
        )
        items.append(
            f'<li>vs <b>{esc(baseline)}</b>: <span class="outcome o-{word.replace(" ", "-")}">{word}</span>'
            f'{_consistency(pair.get("consistent"))}{shown}<ol class="orders">{orders}</ol></li>'
        )
    gist = f"{tally['win']} won · {tally['loss']} lost · {tally['tie']} tied" + (
        f" · {tally['no verdict']} without a verdict" if tally["no verdict"] else ""
    )
    return f'<ul class="pairs">{"".join(items)}</ul>', gist


def _outcome_word(outcome: Any) -> str:
    return _OUTCOME.get(outcome, "no verdict") if isinstance(outcome, (int, float)) else "no verdict"


def _consistency(consistent: Any) -> str:
    if consistent is None:
        return ""
    return " (both orders agree)" if consistent else ' <span class="bad">(the orders disagree)</span>'


def _order(order: Mapping[str, Any], mine_first: bool, outcome: Any) -> str:
    """One judged order: which caption came first, the verdict, what it means for this caption, the reason."""
    verdict = order.get("verdict")
    said = _VERDICT.get(str(verdict), "no verdict") if verdict is not None else "no verdict"
    word = _outcome_word(outcome)
    out = f"<li>this caption shown {'first' if mine_first else 'second'}: judge said <b>{esc(said)}</b> → {word}"
    if order.get("reason"):
        out += f'<div class="reason">reason: {esc(order["reason"])}</div>'
    if order.get("reply") is not None and order.get("reply") != order.get("reason"):
        out += f"<details><summary>reply</summary><pre>{esc(order['reply'])}</pre></details>"
    if isinstance(order.get("option_logprobs"), list):
        scores = ", ".join(num(x) for x in order["option_logprobs"])
        out += f"<div>log-likelihoods (Caption 1, Caption 2, Tie): {scores}</div>"
    if order.get("error"):
        out += f'<div class="bad">judge failure: {esc(order["error"])}</div>'
    rest = {
        k: v
        for k, v in order.items()
        if k not in ("first", "verdict", "outcome", "reason", "reply", "option_logprobs", "error")
    }
    return out + _leftovers(rest) + "</li>"


def _flip(outcome: Any) -> Any:
    return 1.0 - outcome if isinstance(outcome, (int, float)) and not isinstance(outcome, bool) else outcome


def _my_outcome(battle: Mapping[str, Any], name: str) -> Any:
    return battle.get("outcome") if battle["model_a"] == name else _flip(battle.get("outcome"))


def _battles_cell(inspection: Inspection, name: str, sample_id: str, battles: Sequence[Mapping[str, Any]]) -> str:
    """The battles of ``capbench arena`` this caption set fought on this image, from its side."""
    items, tally = [], {"win": 0, "loss": 0, "tie": 0, "no verdict": 0}
    for battle in battles:
        a_side = battle["model_a"] == name
        other = battle["model_b"] if a_side else battle["model_a"]
        word = _outcome_word(_my_outcome(battle, name))
        tally[word] += 1
        text = inspection.captions.get(other, {}).get(sample_id)
        shown = (
            f'<details><summary>{esc(other)}\'s caption</summary><div class="text">{esc(text)}</div></details>'
            if text
            else ""
        )
        orders = "".join(
            _order(o, (o.get("first") == "a") == a_side, o.get("outcome") if a_side else _flip(o.get("outcome")))
            for o in battle.get("orders") or ()
            if isinstance(o, Mapping)
        )
        items.append(
            f'<li>vs <b>{esc(other)}</b>: <span class="outcome o-{word.replace(" ", "-")}">{word}</span>'
            f"{_consistency(battle.get('consistent'))} · judge saw {esc(battle.get('judge_mode', '?'))}{shown}"
            f'<ol class="orders">{orders}</ol></li>'
        )
    gist = f"{tally['win']} won · {tally['loss']} lost · {tally['tie']} tied"
    return (
        f'<div class="cell{" failed" if tally["no verdict"] else ""}" id="{esc(anchor(name, ARENA, sample_id))}">'
        f'<div class="head"><b>arena battles</b> <span class="gist">{gist}</span></div>'
        '<details class="judgment"><summary>the battles</summary>'
        f'<ul class="pairs">{"".join(items)}</ul></details></div>'
    )


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 16px 40px;color:#222;background:#fafafa}
h1{font-size:22px;margin:12px 0 4px}
h1 span{color:#555}
h2{font-size:17px;margin:6px 0}
h3{font-size:15px;margin:4px 0}
code,pre{font:12px/1.3 ui-monospace,monospace}
pre{white-space:pre-wrap;word-break:break-word;max-height:16em;overflow:auto;background:#f0f0f0;padding:4px;
  margin:2px 0}
table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top;text-align:left}
.overview td a{font-weight:600}
.n,.muted,.desc{color:#666;font-size:12px}
.warnings{color:#8a4b00}
.runs{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:8px}
section.run{border:1px solid #ddd;background:#fff;padding:6px 10px;min-width:0;font-size:13px;overflow-x:auto}
section.run h2{font-size:15px}
dl.summary{grid-template-columns:repeat(2,max-content 1fr)}
section.run:target,.cell:target{outline:3px solid #e0a800}
dl.summary,dl.other{display:grid;grid-template-columns:max-content 1fr;gap:0 10px;margin:4px 0}
dd{margin:0;overflow-wrap:anywhere}
.breakdown{margin:4px 0;font-size:12px}
.breakdown caption{text-align:left;font-weight:600}
ol.rank{display:flex;flex-wrap:wrap;gap:4px;list-style:none;padding:0;margin:4px 0}
ol.rank li{background:#eef;padding:1px 6px;border-radius:3px;font-size:12px}
ol.rank li.failed{background:#fdd}
#controls{position:sticky;top:0;z-index:2;background:#fff;border:1px solid #ccc;padding:6px;margin:8px 0;
  display:flex;flex-wrap:wrap;gap:10px;align-items:center}
#controls[hidden]{display:none}
article.sample{display:grid;grid-template-columns:minmax(200px,340px) 1fr;gap:12px;background:#fff;
  border:1px solid #ccc;margin:12px 0;padding:8px}
article.sample[hidden]{display:none}
article.sample[data-failed="1"]{border-left:5px solid #c33}
.media img.thumb{display:block;width:100%;height:auto;margin-bottom:4px}
.noimage{border:2px dashed #aaa;color:#666;padding:30px 8px;text-align:center;overflow-wrap:anywhere}
.sets{display:grid;grid-auto-flow:column;grid-auto-columns:minmax(300px,1fr);gap:10px;overflow-x:auto;min-width:0}
.set{min-width:0}
.caption,.text{white-space:pre-wrap;overflow-wrap:anywhere;max-height:14em;overflow:auto;background:#f6f6ee;
  padding:4px;border:1px solid #e5e5d5}
.ref .text{background:#eef6ee;border-color:#d5e5d5}
.cell{border-top:1px solid #ddd;margin-top:6px;padding-top:4px;overflow-wrap:anywhere}
.cell.failed .head{color:#a00}
.value{font-weight:700;font-size:15px}
.gist{color:#555;font-size:12px}
.badge{font-size:11px;border-radius:3px;padding:0 4px;background:#ddd;margin-left:4px;white-space:nowrap}
.badge.bad{background:#fcc}
.badge.judge{background:#cde}
.badge.right{background:#cec}
.ok{color:#080;font-weight:700}
.bad{color:#b00}
table.facts{font-size:12px;margin:4px 0;width:100%;overflow-wrap:break-word}
table.facts td,table.facts th{overflow-wrap:break-word}
table.facts th,table.facts td.m,table.facts td:first-child{white-space:nowrap}
table.facts td:nth-child(2){width:40%}
table.facts td:last-child{width:30%}
table.facts caption{text-align:left;color:#555}
.reftext{color:#555;font-size:11px}
ol.questions{padding-left:26px}
dl.baselines dt{font-weight:600;margin-top:4px}
dl.baselines dd{font-size:12px}
li.q{margin:6px 0}
.qh{font-size:12px;color:#555}
.qt{font-weight:600}
ul.opts{list-style:none;padding-left:6px;margin:2px 0}
ul.opts li.chosen{background:#eef3ff}
ul.opts li.answer{outline:1px solid #6a6}
.status{font-weight:700}
.st-correct,.st-answered{color:#080}
.st-wrong,.st-failed,.st-unparsed{color:#b00}
.st-cannot_answer{color:#886}
.pmi{color:#777;font-size:11px}
.reply{font-size:12px;margin:2px 0}
.outcome{font-weight:700}
.o-win{color:#080}
.o-loss{color:#b00}
.o-no-verdict{color:#b00}
.reason{color:#333;font-size:12px;margin-left:8px}
@media print{#controls{display:none}
details{display:block}
"""

_JS = """
(function(){
var main=document.getElementById('samples'),c=document.getElementById('controls');
if(!main||!c)return;
var rows=Array.prototype.slice.call(main.querySelectorAll('article.sample'));
function $(i){return document.getElementById(i)}
function score(r){var v=r.dataset[$('key').value||'none'];return v===undefined?null:parseFloat(v)}
function apply(){
 var order=$('order').value,min=parseFloat($('min').value),max=parseFloat($('max').value),dom=$('domain').value,
 onlyFailed=$('failed').checked,text=$('text').value.toLowerCase(),shown=0;
 var sorted=rows.slice().sort(function(a,b){
  if(order==='id')return a.dataset.id<b.dataset.id?-1:a.dataset.id>b.dataset.id?1:0;
  if(order==='asc'||order==='desc'){var x=score(a),y=score(b);
   if(x===null&&y===null)return a.dataset.order-b.dataset.order;if(x===null)return 1;if(y===null)return -1;
   return order==='asc'?x-y:y-x}
  return a.dataset.order-b.dataset.order});
 sorted.forEach(function(r){main.appendChild(r);var s=score(r),ok=true;
  if(dom&&r.dataset.domain!==dom)ok=false;
  if(onlyFailed&&r.dataset.failed!=='1')ok=false;
  if(!isNaN(min)&&(s===null||s<min))ok=false;
  if(!isNaN(max)&&(s===null||s>max))ok=false;
  if(text&&r.textContent.toLowerCase().indexOf(text)<0)ok=false;
  r.hidden=!ok;if(ok)shown++});
 $('count').textContent=shown+' of '+rows.length+' images shown';
 document.body.dataset.inspector='ready';
}
['key','order','min','max','domain','failed','text'].forEach(function(i){
 $(i).addEventListener('input',apply);$(i).addEventListener('change',apply)});
$('open').addEventListener('click',function(){
 var all=document.querySelectorAll('details'),open=this.textContent==='expand all';
 for(var i=0;i<all.length;i++)all[i].open=open;this.textContent=open?'collapse all':'expand all'});
function reveal(){var t=location.hash&&document.getElementById(decodeURIComponent(location.hash.slice(1)));
 if(!t)return;var a=t.closest&&t.closest('article.sample');if(a&&a.hidden){a.hidden=false}
 var d=t.querySelector&&t.querySelector('details.judgment');if(d)d.open=true;t.scrollIntoView()}
window.addEventListener('hashchange',reveal);
c.hidden=false;apply();reveal();
})();
"""
