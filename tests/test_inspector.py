"""`capbench inspect`: the per-sample HTML report, from real runs of `capbench eval` and `capbench arena`.

The runs use the oracle judge (the true facts of capbench-mini) for DCScore and BalCap, and a
scripted judge here for the rest: it answers CaptionQA and CapRL questions by a hash of the request
(so some answers are right, some wrong, some unreadable and some calls fail), judges pairs by
caption length with a hostile reason, and answers the fact stages of one hostile caption set with
an unreadable reply, so the report has judge failures with their text to show.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import ScriptedEngine, one_line_error, run_cli
from PIL import Image

from capbench import engines
from capbench.anchors import anchor
from capbench.data import load_benchmark
from capbench.engines.base import Request, Response
from capbench.inspector import ARENA, sample_value
from capbench.metrics.parsing import LETTERS
from capbench.records import read_caption_file
from capbench.results import read_run

pytestmark = pytest.mark.cli

EXAMPLES = Path(__file__).resolve().parents[1] / "capbench" / "data" / "mini" / "captions"
HOSTILE = "<script>alert('caption')</script><img src=\"http://example.com/x.png\"> & </td></table><!--"
#: What the judge says of a fact stage on the hostile set: unreadable, with markup and a NUL.
BROKEN_REPLY = "<b>no JSON here</b>\x00 </pre><script>alert('judge')</script>"
#: The judge fails calls, or writes no letter, only on questions of the first three images.
FLAKY = {q.question for s in load_benchmark("mini").samples[:3] for q in s.questions}


def _reply(request: Request) -> str | Response:
    user = request.messages[-1].joined_text()
    system = request.messages[0].joined_text()
    if "<caption_1>" in user:
        one = re.search(r"<caption_1>\n(.*?)\n</caption_1>", user, re.S).group(1)
        two = re.search(r"<caption_2>\n(.*?)\n</caption_2>", user, re.S).group(1)
        verdict = "Tie" if len(one) == len(two) else f"Caption {1 if len(one) > len(two) else 2} is better"
        return json.dumps({"reason": "<i>longer</i> wins </script>", "judgment": verdict})
    if "atomic" in system.lower() or "fact" in system.lower():
        return BROKEN_REPLY
    pick = hashlib.sha256(user.encode()).digest()[0] % 6
    if pick == 5 and any(q in user for q in FLAKY):
        return Response(error="judge <down> & out")
    if pick == 4 and any(q in user for q in FLAKY):
        return "no idea <b>"
    return "ABBAAB"[pick]


class InspectJudge(ScriptedEngine):
    """``inspect:NAME`` on the command line: the scripted judge of this module."""

    def __init__(self, model: str) -> None:
        super().__init__(_reply, name=model)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder: the three example sets scored by every metric, a hostile set, and arena battles."""
    root = tmp_path_factory.mktemp("results")
    hostile = root.parent / "hostile.jsonl"
    ids = [s.id for s in load_benchmark("mini").samples]
    texts = {ids[0]: HOSTILE, ids[1]: HOSTILE + " " + "x" * 100_000}
    hostile.write_text("".join(json.dumps({"id": i, "caption": t}) + "\n" for i, t in texts.items()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPBENCH_HOME", str(root.parent / "home"))
        patch.setitem(engines.ENGINES, "oracle", ("oracle_engine", "OracleEngine", "test engine"))
        patch.setitem(engines.ENGINES, "inspect", ("test_inspector", "InspectJudge", "test engine"))
        out = ["--results-dir", str(root), "--json"]
        run_cli("eval", "--example-captions", "--judge", "oracle:truth", "-m", "dcscore,balcap", *out)
        run_cli("eval", "--example-captions", "--judge", "inspect:j", "-m", "captionqa,caprl,arena", "--caprl-samples",
             "3", *out)  # fmt: skip
        run_cli("eval", "-c", str(hostile), "--name", "<b>hostile</b>", "--judge", "inspect:j",
                "-m", "dcscore,captionqa", *out)  # fmt: skip
        run_cli("arena", "-c", str(EXAMPLES / "detailed.jsonl"), "-c", str(EXAMPLES / "short.jsonl"), "--judge",
             "inspect:j", "--limit", "4", "--rounds", "100", *out)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def report(runs: Path) -> tuple[Path, str]:
    """The report of the whole results folder, written by the command."""
    out = runs.parent / "report" / "inspect.html"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPBENCH_HOME", str(runs.parent / "home"))
        result = run_cli("inspect", str(runs), "--out", str(out))
    assert f"wrote {out}" in result.output
    return out, out.read_text(encoding="utf-8")


class _Page(HTMLParser):
    """Collects element ids, external references and the text of every element."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.external: list[str] = []
        self.scripts = 0
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if values.get("id"):
            self.ids.append(values["id"])
        for key in ("src", "href", "action", "data", "poster"):
            value = values.get(key) or ""
            if value and not value.startswith(("#", "data:image/jpeg;base64,")):
                self.external.append(f"{tag} {key}={value[:60]}")
        if tag in ("link", "iframe", "object", "embed", "base"):
            self.external.append(tag)
        if tag == "script":
            self.scripts += 1


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def _section(html: str, ident: str) -> str:
    """The markup of the element with id ``ident`` up to the next element of its kind (a cell, an article)."""
    start = html.index(f'id="{ident}"')
    ends = [
        i
        for i in (html.find('<div class="cell', start), html.find("<article", start), html.find("</main>", start))
        if i > 0
    ]
    return html[start : min(ends)]


def test_every_sample_set_and_metric_has_its_anchor(runs: Path, report: tuple[Path, str]):
    _, html = report
    ids = set(_parse(html).ids)
    for folder in sorted(p for p in (runs / "mini").iterdir() if (p / "manifest.json").exists()):
        run = read_run(folder)
        for metric in run.summary:
            assert anchor(run.name, metric) in ids, (run.name, metric)
            for record in run.samples:
                assert anchor(run.name, metric, record.sample_id) in ids, (run.name, metric, record.sample_id)
    assert len(ids) == len(set(_parse(html).ids)), "an id is used twice"
    for sample in load_benchmark("mini").samples:  # every image of the benchmark has its row, with its reference
        assert f'data-id="{sample.id}"' in html
        assert sample.reference_caption.replace('"', "&quot;").replace("'", "&#x27;")[:80] in html


def test_fact_verdicts_and_matched_references_are_shown(runs: Path, report: tuple[Path, str]):
    _, html = report
    run = read_run(runs / "mini" / "planted_errors")
    samples = load_benchmark("mini").by_id()
    record = run.samples[0]
    details = record.scores["dcscore"].details
    cell = _section(html, anchor("planted_errors", "dcscore", record.sample_id))
    rows = cell.split("<tr>")[2:]  # after the header row
    assert len(rows) == len(details["facts"])
    for row, fact, correct, pointable, matched in zip(
        rows, details["facts"], details["verdicts"][0]["correct"], details["verdicts"][0]["pointable"],
        details["matches"][0], strict=True,
    ):  # fmt: skip
        cells = re.split(r"<td[^>]*>", row)[1:]
        assert cells[1].startswith(fact["fact"].replace("'", "&#x27;").replace('"', "&quot;"))
        assert ("✓" in cells[4]) == correct and ("✗" in cells[4]) == (not correct)
        assert ("✓" in cells[5]) == pointable
        if matched is None:
            assert cells[6].startswith("none")
        else:
            reference = samples[record.sample_id].reference_facts[matched - 1]
            assert f"R{matched}: {reference}".replace("'", "&#x27;").replace('"', "&quot;") in cells[6]
    wrong = sum(not c for c in details["verdicts"][0]["correct"])
    assert wrong > 0, "the planted errors set should have a wrong fact to show"
    balcap = _section(html, anchor("planted_errors", "balcap", record.sample_id))
    assert "linguistic ratings (1-10): clarity" in balcap


def test_questions_show_the_options_as_shown_the_choice_and_the_answer(runs: Path, report: tuple[Path, str]):
    _, html = report
    run = read_run(runs / "mini" / "detailed")
    questions = {q.id: q for s in load_benchmark("mini").samples for q in s.questions}
    statuses = set()
    for record in run.samples[:4]:
        cell = _section(html, anchor("detailed", "captionqa", record.sample_id))
        items = cell.split('<li class="q ')[1:]
        stored = record.scores["captionqa"].details["questions"]
        assert len(items) == len(stored)
        for item, question in zip(items, stored, strict=True):
            statuses.add(question["status"])
            assert question["question"] == questions[question["question_id"]].question  # recorded now
            assert _text(question["question"]) in item
            options = re.findall(r'<li class="([^"]*)"><b>([A-Z])\.</b> (.*?) ?(?:<span|</li>)', item)
            assert [(letter, text) for _, letter, text in options] == [
                (LETTERS[i], _text(o)) for i, o in enumerate(question["options"])
            ]
            right = [letter for classes, letter, _ in options if "answer" in classes.split()]
            chosen = [letter for classes, letter, _ in options if "chosen" in classes.split()]
            assert right == [question["answer"]]
            assert chosen == ([question["chosen"]] if question.get("chosen") else [])
            assert f"st-{question['status']}" in item
            if question["status"] == "failed":
                assert "judge failure: judge &lt;down&gt; &amp; out" in item
            if question.get("reply") is not None:
                assert f"reply: <code>{_text(question['reply'])}</code>" in item
    assert {"correct", "wrong", "failed", "unparsed"} <= statuses


def test_caprl_draws_and_arena_pairs_are_shown(runs: Path, report: tuple[Path, str]):
    _, html = report
    run = read_run(runs / "mini" / "short")
    record = run.samples[0]
    draws = _section(html, anchor("short", "caprl", record.sample_id))
    stored = record.scores["caprl"].details["draws"]
    assert draws.count('<li class="q ') == len(stored) == 3
    for draw in stored:
        assert f"draw {draw['draw']} · {draw['question_id']}" in draws
    pairs = _section(html, anchor("short", "arena", record.sample_id))
    for pair in record.scores["arena"].details["pairs"]:
        assert f"vs <b>{pair['baseline']}</b>" in pairs
        if pair.get("self"):
            continue
        assert pairs.count("this caption shown first") >= 1 and pairs.count("this caption shown second") >= 1
        assert "reason: &lt;i&gt;longer&lt;/i&gt; wins &lt;/script&gt;" in pairs


def test_arena_battles_show_both_orders_from_each_side(runs: Path, report: tuple[Path, str]):
    _, html = report
    battles = [json.loads(line) for line in (runs / "mini" / "_arena" / "battles.jsonl").read_text().splitlines()]
    assert len(battles) == 4
    detailed = read_caption_file(EXAMPLES / "detailed.jsonl").captions
    short = read_caption_file(EXAMPLES / "short.jsonl").captions
    for battle in battles:
        a_side = _section(html, anchor(battle["model_a"], ARENA, battle["sample_id"]))
        b_side = _section(html, anchor(battle["model_b"], ARENA, battle["sample_id"]))
        longer = "detailed" if len(detailed[battle["sample_id"]]) > len(short[battle["sample_id"]]) else "short"
        assert ("won" if battle["model_a"] == longer else "lost") in a_side.split("</div>")[0]
        assert ("won" if battle["model_b"] == longer else "lost") in b_side.split("</div>")[0]
        for side in (a_side, b_side):
            assert side.count("judge said <b>") == 2  # both orders
    assert anchor("detailed", ARENA) in _parse(html).ids


def test_hostile_text_is_escaped_and_failures_keep_their_text(report: tuple[Path, str]):
    _, html = report
    page = _parse(html)
    assert page.scripts == 1, "only the page's own script"
    assert not page.external, page.external
    assert "<script>alert" not in html and "<b>hostile</b>" not in html and "\x00" not in html
    assert "&lt;script&gt;alert(&#x27;caption&#x27;)&lt;/script&gt;" in html
    assert "&lt;b&gt;hostile&lt;/b&gt;" in html  # the set's name
    assert "x" * 100_000 in html  # the long caption is kept whole
    # the unreadable fact reply: its text with the NUL shown as U+FFFD
    assert "&lt;b&gt;no JSON here&lt;/b&gt;\ufffd &lt;/pre&gt;&lt;script&gt;alert(&#x27;judge&#x27;)" in html
    assert "judge failures (" in html and "decompose" in html
    assert page.tags.count("article") == 18


def test_limit_metric_and_names_narrow_the_report(runs: Path, tmp_path: Path, capbench_home: Path):
    out = tmp_path / "small.html"
    run_cli("inspect", str(runs / "mini" / "short"), str(runs / "mini" / "detailed"), "--out", str(out), "--limit", "2",
         "-m", "captionqa", "--no-images")  # fmt: skip
    html = out.read_text()
    assert _parse(html).tags.count("article") == 2
    assert anchor("short", "captionqa") in html and anchor("short", "dcscore") not in html
    assert anchor("planted_errors", "captionqa") not in html
    assert "image not shown" in html and "data:image" not in html
    one_line_error(
        run_cli("inspect", str(runs), "--out", str(out), "-m", "bleu", ok=False), "no metric 'bleu'", "captionqa"
    )
    one_line_error(run_cli("inspect", str(runs), "--out", str(out), "--name", "gpt", ok=False), "no caption set 'gpt'")
    one_line_error(run_cli("inspect", str(tmp_path), "--out", str(out), ok=False), "no results in it")


def test_images_are_embedded_thumbnails_or_named_placeholders(runs: Path, report: tuple[Path, str], tmp_path: Path):
    _, html = report
    thumbs = re.findall(r'<img class="thumb" src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(thumbs) == 18
    with Image.open(io.BytesIO(base64.b64decode(thumbs[0]))) as image:
        assert max(image.size) == 320 and image.format == "JPEG"
    # an image that cannot be read: its row names it, and the others still show theirs
    first, second = load_benchmark("mini", with_images=True).samples[:2]
    Path(first.image.path).write_bytes(b"not a png")
    out = tmp_path / "r.html"
    run_cli("inspect", str(runs / "mini" / "detailed"), "--out", str(out), "--limit", "2", "--thumbnail", "64")
    page = out.read_text()
    assert f"image not found: {first.image.path}" in page
    [thumb] = re.findall(r'<img class="thumb" src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)" alt="image ([^"]+)"', page)
    assert thumb[1] == second.id
    with Image.open(io.BytesIO(base64.b64decode(thumb[0]))) as image:
        assert max(image.size) == 64


def _text(value: str) -> str:
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#x27;")
    )


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed; `make browser` (part of `make test`) installs it")
    return found


#: Run in the page after its own script: sort by one score, then filter, recording what is shown each time.
PROBE = """<script>(function(){
function $(i){return document.getElementById(i)}
function set(i,v){var e=$(i);if(e.type==='checkbox')e.checked=v;else e.value=v;e.dispatchEvent(new Event('change'))}
function shown(){var all=document.querySelectorAll('article.sample'),out=[];
 for(var i=0;i<all.length;i++)if(getComputedStyle(all[i]).display!=='none')out.push(all[i].dataset.id);
 return out.join(',')}
set('key','KEY');set('order','asc');document.body.dataset.sorted=shown();
set('domain','document');document.body.dataset.document=shown();set('domain','');
set('failed',true);document.body.dataset.failedonly=shown();set('failed',false);
set('min','MIN');document.body.dataset.above=shown();
})();</script>"""


def test_the_page_sorts_and_filters_in_chromium(runs: Path, report: tuple[Path, str], tmp_path: Path):
    _, html = report
    assert '<nav id="controls" hidden>' in html  # without a script the controls do not show
    key = re.search(r'<option value="(s\d+)">CaptionQA of detailed</option>', html).group(1)
    scores = {r.sample_id: sample_value(r.scores["captionqa"]) for r in read_run(runs / "mini" / "detailed").samples}
    median = sorted(v for v in scores.values() if v is not None)[len(scores) // 2]
    page = tmp_path / "probe.html"
    probe = PROBE.replace("KEY", key).replace("MIN", repr(median))
    page.write_text(html.replace("</body>", probe + "</body>"), encoding="utf-8")
    argv = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()]
    dom = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=True).stdout
    assert 'data-inspector="ready"' in dom and '<nav id="controls">' in dom  # the inline script ran

    def shown(name: str) -> list[str]:
        return re.search(f'data-{name}="([^"]*)"', dom).group(1).split(",")

    order = {s.id: i for i, s in enumerate(load_benchmark("mini").samples)}
    by_score = sorted(scores, key=lambda i: (scores[i] is None, scores[i] or 0.0, order[i]))
    assert shown("sorted") == by_score
    documents = [s.id for s in load_benchmark("mini").samples if s.domain == "document"]
    assert sorted(shown("document")) == sorted(documents) and documents
    failed = re.findall(r'data-id="([^"]+)" data-domain="[^"]*" data-failed="1"', html)
    assert sorted(shown("failedonly")) == sorted(failed) and 0 < len(failed) < 18
    above = [i for i in by_score if scores[i] is not None and scores[i] >= median]
    assert shown("above") == above and 0 < len(above) < 18


def test_an_arena_folder_alone_finds_its_captions_by_content(runs: Path, tmp_path: Path):
    out = tmp_path / "arena.html"
    result = run_cli("inspect", str(runs / "mini" / "_arena"), "--out", str(out), "--no-images")
    assert "caption sets detailed, short" in result.output and "4 arena battles" in result.output
    html = out.read_text()
    [battle] = [json.loads(line) for line in (runs / "mini" / "_arena" / "battles.jsonl").read_text().splitlines()][:1]
    cell = _section(html, anchor("detailed", ARENA, battle["sample_id"]))
    short = read_caption_file(EXAMPLES / "short.jsonl").captions[battle["sample_id"]]
    assert f'short\'s caption</summary><div class="text">{_text(short)}</div>' in cell
    detailed = read_caption_file(EXAMPLES / "detailed.jsonl").captions[battle["sample_id"]]
    assert f'<div class="caption">{_text(detailed)}</div>' in html  # the set's own caption, found by its hash
    assert anchor("detailed", "captionqa") not in html  # battles only: no metric sections
