"""An honest leaderboard (issue 20): each failure a user met, reproduced on real runs and shown fixed.

- a caption file covering 1 of 18 images was scored with no warning;
- a `--limit 2` run ranked above a full run, unflagged;
- a paired Δ over 2 shared images got a significance star, with no n shown;
- a run's interval changed with the other rows on the board;
- `capbench leaderboard` over `capbench arena` output said "no results";
- CaptionQA's per-domain scores could not be shown; the HTML page had no figures and no links;
- names in notes, flags and arena tables must be escaped in every format.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from jsonschema import Draft202012Validator

from capbench import engines
from capbench.anchors import anchor
from capbench.metrics.base import headline
from capbench.records import SampleScore
from capbench.schemas import load_schema

pytestmark = pytest.mark.cli

EXAMPLES = Path(__file__).resolve().parents[1] / "capbench" / "data" / "mini" / "captions"
#: The first two images of capbench-mini, both of domain natural (of 10 natural, 6 science, 2 document).
FIRST_TWO = "2 of 18 images (document 0/2, natural 2/10, science 0/6)"


def _report(root: Path, *args: str) -> dict:
    report = json.loads(run_cli("leaderboard", str(root), "--json", "--no-figures", "--formats", "", *args).output)
    assert list(Draft202012Validator(load_schema("leaderboard")).iter_errors(report)) == []
    return report


def _rows(report: dict) -> dict[str, dict]:
    [board] = report["boards"]
    return {r["model"]: r for r in board["rows"]}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full runs of `short` and `planted_errors`, and `fast` (the detailed captions) run with --limit 2."""
    root = tmp_path_factory.mktemp("results")
    fast = root.parent / "fast.jsonl"
    shutil.copy(EXAMPLES / "detailed.jsonl", fast)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPBENCH_HOME", str(root.parent / "home"))
        patch.setitem(engines.ENGINES, "scripted", ("conftest", "FixedReplyEngine", "test engine"))
        patch.setitem(engines.ENGINES, "oracle", ("oracle_engine", "OracleEngine", "test engine"))
        for judge, metrics in (("oracle:truth", "dcscore"), ("scripted:A", "captionqa")):
            common = ["--judge", judge, "-m", metrics, "--results-dir", str(root), "--json"]
            for name in ("short", "planted_errors"):
                run_cli("eval", "-c", str(EXAMPLES / f"{name}.jsonl"), *common)
            run_cli("eval", "-c", str(fast), "--limit", "2", *common)
    return root


# ---------------------------------------------------------------- coverage at eval time


def test_a_partial_caption_file_warns_at_eval_naming_its_coverage(tmp_path: Path, oracle_cli_engine):
    one = tmp_path / "captions.jsonl"
    one.write_text((EXAMPLES / "planted_errors.jsonl").read_text().splitlines()[0] + "\n")
    args = ["eval", "-c", str(one), "--judge", "oracle:truth", "-m", "dcscore", "--results-dir", str(tmp_path / "r")]
    with pytest.warns(UserWarning) as caught:
        run_cli(*args, "--json")
    [warning] = [str(w.message) for w in caught if "covers" in str(w.message)]
    assert warning.startswith("captions.jsonl covers 1 of 18 images of mini (document 0/2, natural 1/10, science 0/6)")
    assert "over those 1 only" in warning and "--limit 1" in warning
    manifest = json.loads((tmp_path / "r" / "mini" / "captions" / "manifest.json").read_text())
    coverage = {"benchmark_samples": 18, "domains": {"document": [0, 2], "natural": [1, 10], "science": [0, 6]}}
    assert manifest["caption_set"]["coverage"] == coverage
    assert list(Draft202012Validator(load_schema("manifest")).iter_errors(manifest)) == []
    # Asked for on purpose (--limit 1), or a file covering the whole benchmark: no warning.
    for extra in (["--limit", "1", "--overwrite"], ["-c", str(EXAMPLES / "short.jsonl")]):
        with warnings.catch_warnings(record=True) as quiet:
            warnings.simplefilter("always")
            run_cli(*([*args, *extra] if extra[0] != "-c" else [*args[:1], *extra, *args[3:]]), "--json")
        assert not [w for w in quiet if "covers" in str(w.message)], extra


# ---------------------------------------------------------------- rows over other images


def test_a_limit_run_is_flagged_and_never_ranked_among_full_runs(results: Path, tmp_path: Path):
    report = _report(results)
    [board] = report["boards"]
    rows = board["rows"]
    # Before: fast (2 natural images) ranked first on dcscore, unflagged. Now the full runs come first.
    assert rows[-1]["model"] == "fast" and rows[-1]["dcscore"] > max(r["dcscore"] for r in rows[:-1])
    assert [r["same_images"] for r in rows] == [True, True, False]
    assert rows[-1]["covers"] == FIRST_TWO and rows[-1]["images"] == 2 and rows[-1]["images_of"] == 18
    assert board["coverage"] == {"reference_images": 18, "images_of": 18, "flagged": {"fast": FIRST_TWO}}
    assert any("OTHER IMAGES" in n and FIRST_TWO in n for n in board["notes"])
    # Sorting by another column keeps the comparable rows first.
    assert _report(results, "--sort", "words")["boards"][0]["rows"][-1]["model"] == "fast"
    out = tmp_path / "board"
    shown = run_cli("leaderboard", str(results), "--no-figures", "--out", str(out), "--formats", "md,html,tex,csv")
    assert "fast ‡" in shown.output and "OTHER IMAGES" in shown.output
    markdown = (out / "leaderboard.md").read_text()
    assert "| fast ‡ |" in markdown and "| 2 of 18 |" in markdown and f"fast: {FIRST_TWO}" in markdown
    page = (out / "leaderboard.html").read_text()
    assert '<tr class="other-images"><td data-v="fast">fast ‡</td>' in page and FIRST_TWO in page
    tex = (out / "leaderboard.tex").read_text()
    assert r"fast \textsuperscript{\ddag}" in tex and "OTHER IMAGES" in tex
    assert "same_images" in (out / "leaderboard.csv").read_text().splitlines()[0]


def test_when_no_row_covers_the_benchmark_the_majority_set_is_the_reference(results: Path, tmp_path: Path):
    root = tmp_path / "results"
    shutil.copytree(results, root, ignore=shutil.ignore_patterns("short"))
    report = _report(root)
    [board] = report["boards"]
    assert board["coverage"]["flagged"] == {"fast": FIRST_TWO}  # 18 images, not 2: a tie goes to the larger set
    shutil.rmtree(root / "mini" / "planted_errors")
    [alone] = _report(root)["boards"]
    assert alone["coverage"] == {"reference_images": 2, "images_of": 18, "flagged": {}}
    assert any("compared on 2 of 18 images (document 0/2, natural 2/10, science 0/6)" in n for n in alone["notes"])


# ---------------------------------------------------------------- paired differences


def _synthetic(root: Path, model: str, values: dict[str, float]) -> None:
    """Write a DCScore run the way `capbench eval` does: captions, per-sample scores, manifest."""
    folder = root / "synth" / model
    folder.mkdir(parents=True)
    scores = [SampleScore(i, "dcscore", {"dcscore": v}, units=(("all", v, 1.0),)) for i, v in values.items()]
    (folder / "dcscore.jsonl").write_text("".join(json.dumps({"format": 2, **s.to_dict()}) + "\n" for s in scores))
    (folder / "captions.jsonl").write_text("".join(json.dumps({"id": i, "caption": f"c {i}"}) + "\n" for i in values))
    info = {"name": "dcscore", "title": "DCScore", "value_range": [0, 100], "higher_is_better": True}
    judges = {"text": {"backend": "scripted", "model": "J"}}
    entry = {"info": info, "judges": judges, "config_hash": "cfg", "summary": {"score": headline(_units(values))}}
    manifest = {"format": 2, "benchmark": "synth", "caption_set": {"name": model, "samples": len(values)}}
    (folder / "manifest.json").write_text(json.dumps({**manifest, "metrics": {"dcscore": entry}}))


def _units(values: dict[str, float]) -> list:
    return [(i, "all", v, 1.0) for i, v in values.items()]


def _base(n: int = 40) -> dict[str, float]:
    return {f"img{k:02d}": float(v) for k, v in enumerate(np.random.default_rng(0).uniform(20, 80, n))}


def test_a_paired_difference_shows_its_n_and_gets_no_mark_below_min_pairs(tmp_path: Path):
    base = _base()
    _synthetic(tmp_path, "base", base)
    _synthetic(tmp_path, "better", {i: v + 5 + (0.5 if k % 2 else -0.5) for k, (i, v) in enumerate(base.items())})
    # Two images, both clearly worse: an interval far from 0, over too few images to mean anything.
    _synthetic(tmp_path, "two", {i: v - 9 + 0.1 * k for k, (i, v) in enumerate(list(base.items())[:2])})
    rows = _rows(_report(tmp_path, "--baseline", "base"))
    two, better = rows["two"], rows["better"]
    assert two["dcscore_diff_images"] == 2 and two["dcscore_diff_high"] < 0 and two["dcscore_diff_excludes_zero"]
    assert two["dcscore_diff_significant"] is False
    assert better["dcscore_diff_images"] == 40 and better["dcscore_diff_significant"] is True
    # The Δ point is over the 2 shared images (-8.95), not the difference of the displayed scores.
    assert two["dcscore_diff"] == pytest.approx(-8.95)
    assert two["dcscore"] - rows["base"]["dcscore"] != pytest.approx(-8.95, abs=0.5)
    out = tmp_path / "o"
    run_cli("leaderboard", str(tmp_path), "--baseline", "base", "--no-figures", "--out", str(out), "--formats", "md")
    markdown = (out / "leaderboard.md").read_text()
    assert "| -8.9 [-9.0, -8.9] n=2 |" in markdown and "] n=40 * |" in markdown
    assert "over at least 30 shared images" in markdown and "not the difference of the two displayed" in markdown
    assert _rows(_report(tmp_path, "--baseline", "base", "--min-pairs", "2"))["two"]["dcscore_diff_significant"]


# ---------------------------------------------------------------- intervals


def test_a_rows_interval_depends_only_on_its_scores_and_the_seed(tmp_path: Path):
    base = _base(30)
    mine = {i: v + 3 for i, v in base.items()}
    boards = []
    for others in ([], ["b"], ["b", "c", "d"], ["0-first"]):
        root = tmp_path / f"board-{len(others)}-{'-'.join(others)}"
        _synthetic(root, "mine", mine)
        _synthetic(root, "base", base)
        for k, name in enumerate(others):
            _synthetic(root, name, {i: v * (0.5 + 0.1 * k) for i, v in base.items()})
        boards.append(_rows(_report(root, "--baseline", "base")))
    # Before: the intervals drew from one stream shared by all rows, so each board gave another one.
    assert len({(b["mine"]["dcscore_low"], b["mine"]["dcscore_high"]) for b in boards}) == 1
    assert len({(b["mine"]["dcscore_diff_low"], b["mine"]["dcscore_diff_high"]) for b in boards}) == 1
    other_seed = _rows(_report(tmp_path / "board-0-", "--baseline", "base", "--seed", "1"))["mine"]
    assert (other_seed["dcscore_low"], other_seed["dcscore_high"]) != (boards[0]["mine"]["dcscore_low"],
                                                                        boards[0]["mine"]["dcscore_high"])  # fmt: skip


# ---------------------------------------------------------------- arena, per domain, figures, links


def test_arena_output_is_shown_as_its_own_ranking(tmp_path: Path, scripted_cli_engine):
    tagged = tmp_path / "<b>bold<b>&|x.jsonl"
    shutil.copy(EXAMPLES / "short.jsonl", tagged)
    reply = '{"reason": "r", "judgment": "Caption 1 is better."}'
    results = tmp_path / "results"
    argv = ["arena", "--example-captions", "-c", str(tagged), "--judge", f"scripted:{reply}", "--order", "single",
            "--rounds", "100", "--results-dir", str(results), "--json"]  # fmt: skip
    written = json.loads(run_cli(*argv).output)
    report = _report(results)  # before: "no results; run `capbench eval` first"
    assert report["boards"] == [] and report["warnings"] == []
    [arena] = report["arenas"]
    expected = sorted(written["bradley_terry"], key=lambda r: -r["rating"])
    assert [r["model"] for r in arena["rows"]] == [r["model"] for r in expected]
    for row, bt in zip(arena["rows"], expected, strict=True):
        assert [row[k] for k in ("rating", "low", "high", "wins")] == [bt[k] for k in ("rating", "low", "high", "wins")]
        assert row["low"] <= row["rating"] <= row["high"]
    assert arena["battles"] == written["battles"] == 18 * 6 and arena["judge"] == written["judge"]
    assert len({r["rating"] for r in arena["rows"]}) > 1  # a real ranking, not all ties
    out = tmp_path / "board"
    shown = run_cli("leaderboard", str(results), "--out", str(out))  # every format, and figures (of no board)
    assert "mini: arena" in shown.output and "<b>bold<b>&|x" in shown.output
    markdown = (out / "leaderboard.md").read_text()
    assert "## mini: arena" in markdown and "&lt;b&gt;bold&lt;b&gt;&amp;\\|x" in markdown and "<b>" not in markdown
    page = (out / "leaderboard.html").read_text()
    assert "&lt;b&gt;bold&lt;b&gt;&amp;|x" in page and "<b>" not in page and 'class="board arena"' in page
    assert r"\textless{}b\textgreater{}bold\textless{}b\textgreater{}\&|x" in (out / "leaderboard.tex").read_text()


def test_per_domain_columns_show_captionqa_on_each_domain(results: Path, tmp_path: Path):
    report = _report(results, "--per-domain")
    [board] = report["boards"]
    assert board["metrics"]["captionqa"]["domains"] == ["document", "natural", "science"]
    assert board["metrics"]["dcscore"]["domains"] == []  # no domain breakdown: no columns
    for row in board["rows"]:
        lines = [json.loads(x) for x in (results / "mini" / row["model"] / "captionqa.jsonl").read_text().splitlines()]
        for domain in ("document", "natural", "science"):
            units = [(x["sample_id"], *u) for x in lines for u in x["units"] if u[0] == domain]
            value = row[f"captionqa_domain_{domain}"]
            if not units:  # fast scored two natural images only
                assert value is None and row["model"] == "fast"
                continue
            assert value == pytest.approx(headline(units))
            assert row[f"captionqa_domain_{domain}_low"] <= value <= row[f"captionqa_domain_{domain}_high"]
        shown = [row[f"captionqa_domain_{d}"] for d in ("document", "natural", "science")]
        assert row["captionqa"] == pytest.approx(np.mean([v for v in shown if v is not None]))
    assert "captionqa_domain_natural" not in _rows(_report(results))["short"]
    out = tmp_path / "o"
    run_cli("leaderboard", str(results), "--per-domain", "--no-figures", "--out", str(out), "--formats", "md")
    assert "| captionqa: document | captionqa: natural | captionqa: science |" in (out / "leaderboard.md").read_text()


def test_html_cells_link_to_the_inspector_report(results: Path, tmp_path: Path):
    out = tmp_path / "board"
    report = tmp_path / "inspect" / "report.html"
    run_cli(
        "leaderboard", str(results), "--no-figures", "--out", str(out), "--formats", "html", "--inspect", str(report)
    )
    page = (out / "leaderboard.html").read_text()
    for model in ("short", "planted_errors", "fast"):
        for metric in ("captionqa", "dcscore"):
            assert f'href="../inspect/report.html#{anchor(model, metric)}"' in page
    assert page.count("<a href=") == 6
    url = "https://example.org/runs/report.html"
    run_cli("leaderboard", str(results), "--no-figures", "--out", str(out), "--formats", "html", "--inspect", url)
    assert f'href="{url}#{anchor("fast", "dcscore")}"' in (out / "leaderboard.html").read_text()
    assert _report(results, "--inspect", url)["inspect"] == url


def test_flag_notes_and_figures_escape_names(tmp_path: Path):
    name = "<b>$x^$</b>|y"
    _synthetic(tmp_path, "full", _base(4))
    _synthetic(tmp_path, "other", dict(list(_base(4).items())[:1]))
    manifest = tmp_path / "synth" / "other" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["caption_set"]["name"] = name
    manifest.write_text(json.dumps(data))
    out = tmp_path / "board"
    run_cli("leaderboard", str(tmp_path), "--out", str(out), "--formats", "md,html,tex", "--baseline", "full")
    markdown = (out / "leaderboard.md").read_text()
    assert "&lt;b&gt;$x^$&lt;/b&gt;\\|y: 1 image" in markdown and "<b>" not in markdown  # the ‡ note
    assert "<b>" not in (out / "leaderboard.html").read_text()
    assert r"\textless{}b\textgreater{}\$x\textasciicircum{}\$" in (out / "leaderboard.tex").read_text()
    assert (out / "synth-scores.png").stat().st_size > 10_000  # a name with $…$ is drawn as text, not mathtext
