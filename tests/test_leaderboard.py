"""The leaderboard: values from real runs, bootstrap intervals, sorting, paired differences, flags, files."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from capbench import engines, plots
from capbench.leaderboard import (
    bootstrap,
    build_leaderboard,
    load_results,
    paired_difference,
    resample,
    sort_frame,
)
from capbench.metrics.base import headline
from capbench.records import SampleScore
from capbench.tables import latex_escape

pytestmark = pytest.mark.cli

EXAMPLES = Path(__file__).resolve().parents[1] / "capbench" / "data" / "mini" / "captions"
MODELS = ["detailed", "planted_errors", "short"]


def _board(root: Path, *args: str) -> dict:
    """Run the leaderboard with --json, writing nothing, and return its only board."""
    out = json.loads(run_cli("leaderboard", str(root), "--json", "--no-figures", "--formats", "", *args).output)
    [board] = out["boards"]
    return board


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real `capbench eval` runs of the three example caption sets: oracle fact metrics, scripted CaptionQA."""
    root = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPBENCH_HOME", str(root.parent / "home"))
        patch.setitem(engines.ENGINES, "scripted", ("conftest", "FixedReplyEngine", "test engine"))
        patch.setitem(engines.ENGINES, "oracle", ("oracle_engine", "OracleEngine", "test engine"))
        for judge, metrics in (("oracle:truth", "dcscore,balcap"), ("scripted:A", "captionqa")):
            run_cli("eval", "--example-captions", "--judge", judge, "-m", metrics, "--results-dir", str(root), "--json")
    return root


def _synthetic(root: Path, model: str, values: dict[str, float], judge: str = "J", benchmark: str = "synth") -> None:
    """Write a DCScore run the way `capbench eval` does: captions, per-sample scores, manifest."""
    folder = root / benchmark / model
    folder.mkdir(parents=True)
    scores = [SampleScore(i, "dcscore", {"dcscore": v}, {"verify_mode": "reference"}) for i, v in values.items()]
    (folder / "dcscore.jsonl").write_text("".join(json.dumps(s.to_dict()) + "\n" for s in scores))
    captions = "".join(json.dumps({"id": i, "caption": f"caption of {i} by {model}"}) + "\n" for i in values)
    (folder / "captions.jsonl").write_text(captions)
    judges = {"text": {"backend": "scripted", "model": judge}}
    entry = {"metric": "dcscore", "judges": judges, "config_hash": f"cfg-{judge}", "samples": len(values)}
    entry["summary"] = {"score": sum(values.values()) / len(values)}
    manifest = {"benchmark": benchmark, "caption_set": {"name": model, "samples": len(values)}, "judges": judges}
    (folder / "manifest.json").write_text(json.dumps({**manifest, "metrics": {"dcscore": entry}, "status": "complete"}))


def test_table_values_equal_the_manifests_summaries(results: Path):
    board = _board(results)
    assert sorted(r["model"] for r in board["rows"]) == MODELS
    for row in board["rows"]:
        manifest = json.loads((results / "mini" / row["model"] / "manifest.json").read_text())
        for metric in ("captionqa", "dcscore", "balcap"):
            point, low, high = row[metric], row[f"{metric}_low"], row[f"{metric}_high"]
            assert point == pytest.approx(manifest["metrics"][metric]["summary"]["score"], abs=1e-9)
            assert low < point < high, (row["model"], metric)
            assert row[f"{metric}_images"] == 18 and row[f"{metric}_failed"] == 0
        captions = [json.loads(line)["caption"] for line in (EXAMPLES / f"{row['model']}.jsonl").open()]
        assert row["words"] == pytest.approx(sum(len(c.split()) for c in captions) / len(captions))
        assert row["judges"] == "A, capbench-mini truth"  # in metric order: captionqa, dcscore, balcap
        assert (row["images"], row["failed"]) == (18, 0)


def test_bootstrap_is_the_vectorised_stratified_resampling():
    units = [(f"i{k}", "x" if k < 5 else "y", float(k * k % 7), 1.0 + k % 3) for k in range(12)]
    low, high = bootstrap(units, np.random.default_rng(3), rounds=400)
    assert low < headline(units) < high
    assert (low, high) == bootstrap(units, np.random.default_rng(3), rounds=400)
    # The same draws by hand: per stratum, a (rounds × size) matrix of indices, weighted means, mean of strata.
    rng, rounds = np.random.default_rng(7), 50
    values, weights = np.array([[u[2] for u in units]]), np.array([[u[3] for u in units]])
    fast = resample(values, weights, [u[1] for u in units], np.random.default_rng(7), rounds)[0]
    means = []
    for members in (np.arange(5), np.arange(5, 12)):
        draws = members[rng.integers(0, len(members), size=(rounds, len(members)))]
        means.append([np.average(values[0, d], weights=weights[0, d]) for d in draws])
    assert fast == pytest.approx(np.mean(means, axis=0))


def test_sorting_respects_direction_and_any_column(results: Path):
    assert [r["model"] for r in _board(results, "--sort", "dcscore")["rows"]] == MODELS
    assert [r["model"] for r in _board(results, "--sort", "words")["rows"]] == ["planted_errors", "detailed", "short"]
    assert [r["model"] for r in _board(results, "--sort", "model")["rows"]] == MODELS
    bad = run_cli("leaderboard", str(results), "--sort", "nope", "--no-figures", ok=False)
    assert bad.exit_code == 1 and "no such column" in bad.output and "Traceback" not in bad.output
    board = build_leaderboard(load_results(results)).boards[0]
    board.infos["dcscore"] = replace(board.infos["dcscore"], higher_is_better=False)
    assert list(sort_frame(board, "dcscore")["model"]) == ["short", "planted_errors", "detailed"]


def test_baseline_differences_are_paired(tmp_path: Path):
    rng = np.random.default_rng(0)
    base = {f"img{k:02d}": float(v) for k, v in enumerate(rng.uniform(20, 80, 40))}
    _synthetic(tmp_path, "base", base)
    _synthetic(tmp_path, "better", {i: v + 5 + (0.5 if k % 2 else -0.5) for k, (i, v) in enumerate(base.items())})
    _synthetic(tmp_path, "worse", {i: v - 4 for i, v in base.items()})
    _synthetic(tmp_path, "same", {i: v + (3 if k % 2 else -3) for k, (i, v) in enumerate(base.items())})
    _synthetic(tmp_path, "half", {i: v + 2 for k, (i, v) in enumerate(base.items()) if k < 20})
    rows = {r["model"]: r for r in _board(tmp_path, "--baseline", "base")["rows"]}
    assert rows["better"]["dcscore_diff"] == pytest.approx(5.0)
    assert rows["better"]["dcscore_diff_low"] > 0 and rows["better"]["dcscore_diff_excludes_zero"] is True
    assert rows["worse"]["dcscore_diff"] == pytest.approx(-4.0) and rows["worse"]["dcscore_diff_high"] < 0
    assert rows["same"]["dcscore_diff_low"] < 0 < rows["same"]["dcscore_diff_high"]
    assert rows["same"]["dcscore_diff_excludes_zero"] is False
    assert rows["half"]["dcscore_diff"] == pytest.approx(2.0)  # over the 20 images both scored
    assert rows["base"]["dcscore_diff"] is None
    # Pairing removes the images' spread: the difference is far tighter than either score's interval.
    own = rows["better"]["dcscore_high"] - rows["better"]["dcscore_low"]
    assert rows["better"]["dcscore_diff_high"] - rows["better"]["dcscore_diff_low"] < own / 5
    units = [(i, "all", v, 1.0) for i, v in base.items()]
    assert paired_difference(units, [("other", "all", 1.0, 1.0)], np.random.default_rng(0)) is None


def test_mixed_judges_are_flagged_not_compared(results: Path, tmp_path: Path, scripted_cli_engine):
    root = tmp_path / "results"
    shutil.copytree(results, root)
    short = ["--captions", str(EXAMPLES / "short.jsonl"), "--results-dir", str(root), "--json"]
    run_cli("eval", *short, "--judge", "scripted:B", "-m", "captionqa", "--overwrite")
    board = _board(root, "--baseline", "detailed")
    assert board["metrics"]["captionqa"]["mixed_groups"] == {"detailed": "A", "planted_errors": "A", "short": "B"}
    assert board["metrics"]["dcscore"]["mixed_groups"] == {}
    rows = {r["model"]: r for r in board["rows"]}
    assert rows["short"]["captionqa_diff"] is None and rows["short"]["dcscore_diff"] is not None
    assert any("MIXED" in n and "scripted:A" in n and "scripted:B" in n for n in board["notes"])
    shown = run_cli("leaderboard", str(root), "--baseline", "detailed", "--no-figures", "--out", str(tmp_path / "o"))
    assert "†B" in shown.output and "†A" in shown.output and "n/c" in shown.output and "MIXED" in shown.output
    markdown = (tmp_path / "o" / "leaderboard.md").read_text()
    assert "†B" in markdown and "MIXED judges or protocols" in markdown


@pytest.fixture(scope="module")
def written(results: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The leaderboard's files (every format and the figures) and its --json report."""
    out = tmp_path_factory.mktemp("leaderboard")
    report = json.loads(run_cli("leaderboard", str(results), "--out", str(out), "--baseline", "short", "--json").output)
    return out, report


def test_tables_and_figures_are_written(written: tuple[Path, dict]):
    out, report = written
    names = {"leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.html"}
    names |= {"mini-scores.png", "mini-length.png", "mini-heatmap-captionqa.png"}
    assert {Path(f).name for f in report["files"]} == names == {p.name for p in out.iterdir()}
    markdown = (out / "leaderboard.md").read_text()
    assert "| model | captionqa ↑ | Δ captionqa |" in markdown and "| planted_errors |" in markdown
    tex = (out / "leaderboard.tex").read_text()
    assert r"planted\_errors" in tex and r"\toprule" in tex and r"$\Delta$" in tex and "95\\%" in tex
    assert latex_escape("a_b & 50% {x}") == r"a\_b \& 50\% \{x\}"
    frame = pd.read_csv(out / "leaderboard.csv")
    expected = pd.DataFrame(report["boards"][0]["rows"])
    assert list(frame.columns) == list(expected.columns) and list(frame["model"]) == list(expected["model"])
    for column in ("dcscore", "dcscore_low", "balcap_high", "captionqa", "words", "dcscore_diff"):
        assert frame[column].tolist() == pytest.approx(expected[column].tolist(), nan_ok=True)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("mini-scores.png", plots.bars_size(3, 3)),
        ("mini-length.png", plots.length_size(3)),
        ("mini-heatmap-captionqa.png", plots.heatmap_size(3, 18)),
    ],
)
def test_figures_load_with_their_size(written: tuple[Path, dict], name: str, size: tuple[float, float]):
    import matplotlib.image

    pixels = matplotlib.image.imread(written[0] / name)
    assert pixels.shape[:2] == (round(size[1] * plots.DPI), round(size[0] * plots.DPI))
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    assert (written[0] / name).stat().st_size > 20_000


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed; `make browser` (part of `make test`) installs it")
    return found


def test_html_page_renders_in_chromium(written: tuple[Path, dict], tmp_path: Path):
    out, report = written
    argv = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"]
    # Once the page has loaded, note each image's decoded width: 0 would be a figure the browser could not show.
    probe = (
        '<script>window.addEventListener("load",function(){document.body.dataset.widths=Array.prototype.map.call('
        'document.images,function(i){return i.naturalWidth}).join(",")})</script>'
    )
    page = tmp_path / "probed.html"
    page.write_text((out / "leaderboard.html").read_text().replace("</body>", probe + "</body>"))
    dom = subprocess.run([*argv, page.as_uri()], capture_output=True, text=True, timeout=60, check=True).stdout
    assert 'data-sortable="ready"' in dom  # the inline script ran
    for row in report["boards"][0]["rows"]:
        assert f">{row['model']}</td>" in dom
        for metric in ("captionqa", "dcscore", "balcap"):
            assert f"{row[metric]:.1f} [{row[f'{metric}_low']:.1f}, {row[f'{metric}_high']:.1f}]" in dom
    # Self-contained: no stylesheet link, and every src (the three figures) a data: URI, not a file beside it.
    sources = re.findall(r'src="([^"]*)"', (out / "leaderboard.html").read_text())
    assert "<link" not in dom and len(sources) == 3
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    png_sizes = sorted(len(base64.b64decode(s.split(",", 1)[1])) for s in sources)
    assert png_sizes == sorted(p.stat().st_size for p in out.glob("*.png"))
    widths = [int(w) for w in re.search(r'data-widths="([^"]*)"', dom).group(1).split(",")]
    assert len(widths) == 3 and min(widths) > 500


def test_html_headers_sort_on_click(written: tuple[Path, dict], tmp_path: Path):
    out, report = written
    words = next(i for i, th in enumerate(_headers(out)) if th == "words") + 1
    click = (
        f'<script>var h=document.querySelector("th:nth-child({words})");h.click();var first=order();h.click();'
        'document.body.dataset.orders=first+"|"+order();function order(){return Array.prototype.map.call('
        'document.querySelectorAll("tbody td:first-child"),function(c){return c.textContent}).join(",")}</script>'
    )
    page = tmp_path / "clicked.html"
    page.write_text((out / "leaderboard.html").read_text().replace("</body>", click + "</body>"))
    argv = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()]
    dom = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    by_words = sorted(report["boards"][0]["rows"], key=lambda r: -r["words"])
    expected = ",".join(r["model"] for r in by_words) + "|" + ",".join(r["model"] for r in reversed(by_words))
    assert f'data-orders="{expected}"' in dom


def _headers(out: Path) -> list[str]:
    html = (out / "leaderboard.html").read_text()
    return [part.split("</th>")[0] for part in html.split('<th scope="col">')[1:]]


def test_unreadable_results_are_reported_not_crashed(results: Path, tmp_path: Path):
    empty = run_cli("leaderboard", str(tmp_path / "nothing"), ok=False)
    assert empty.exit_code == 1 and "run `capbench eval` first" in empty.output
    root = tmp_path / "r"
    shutil.copytree(results, root, ignore=shutil.ignore_patterns("balcap.jsonl"))
    (root / "mini" / "short" / "manifest.json").write_text("{not json")
    manifest = json.loads((root / "mini" / "detailed" / "manifest.json").read_text())
    manifest["metrics"]["nosuchmetric"] = {"summary": {"score": 1.0}}  # format 1: no description, no units
    (root / "mini" / "detailed" / "manifest.json").write_text(json.dumps(manifest))
    old_line = {"format": 1, "sample_id": "moon", "metric": "nosuchmetric", "values": {"score": 1.0}}
    (root / "mini" / "detailed" / "nosuchmetric.jsonl").write_text(json.dumps(old_line) + "\n")
    with (root / "mini" / "detailed" / "dcscore.jsonl").open("a") as handle:
        handle.write('{"sample_id": "half-writ')
    report = json.loads(run_cli("leaderboard", str(root), "--json", "--no-figures", "--formats", "").output)
    warnings = "\n".join(report["warnings"])
    assert "short/manifest.json: unreadable manifest" in warnings
    assert "install the package that provides metric 'nosuchmetric'" in warnings
    assert "balcap.jsonl: missing" in warnings and "last line is unfinished" in warnings
    assert sorted(r["model"] for r in report["boards"][0]["rows"]) == ["detailed", "planted_errors"]
    with (root / "mini" / "detailed" / "dcscore.jsonl").open("a") as handle:
        handle.write("ing\nnot json\n")
    broken = run_cli("leaderboard", str(root), "--no-figures", ok=False)
    assert broken.exit_code == 1 and "dcscore.jsonl:19: not valid JSON" in broken.output
    assert "Traceback" not in broken.output


def test_benchmarks_get_a_board_each(tmp_path: Path):
    _synthetic(tmp_path, "m1", {"a": 10.0, "b": 20.0}, benchmark="one")
    _synthetic(tmp_path, "m2", {"a": 30.0, "b": 40.0}, benchmark="one")
    _synthetic(tmp_path, "m1", {"a": 50.0, "b": 70.0}, benchmark="two")
    report = json.loads(run_cli("leaderboard", str(tmp_path), "--json", "--no-figures", "--formats", "").output)
    assert [(b["benchmark"], [r["model"] for r in b["rows"]]) for b in report["boards"]] == [
        ("one", ["m2", "m1"]),
        ("two", ["m1"]),
    ]
    assert report["boards"][1]["rows"][0]["dcscore"] == pytest.approx(60.0)
    assert [r["model"] for r in _board(tmp_path, "--benchmark", "two")["rows"]] == ["m1"]
    missing = run_cli("leaderboard", str(tmp_path), "--benchmark", "three", ok=False)
    assert missing.exit_code == 1 and "it has: one, two" in missing.output
    nothing = tmp_path / "empty"
    nothing.mkdir()
    assert "run `capbench eval` first" in run_cli("leaderboard", str(nothing), ok=False).output


def test_help_stays_light():
    script = (
        "import sys; from capbench.cli import main\n"
        "try: main(['leaderboard', '--help'])\nexcept SystemExit: pass\n"
        "print('HEAVY', sorted(m for m in ('numpy', 'pandas', 'matplotlib', 'rich') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and "--baseline MODEL" in out


def test_every_format_escapes_a_caption_set_name(tmp_path: Path):
    _synthetic(tmp_path, "tagged", {"a": 10.0, "b": 20.0})
    manifest = tmp_path / "synth" / "tagged" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["caption_set"]["name"] = "<b>bold</b>|pipe & co"
    manifest.write_text(json.dumps(data))
    out = tmp_path / "board"
    run_cli("leaderboard", str(tmp_path), "--no-figures", "--out", str(out), "--formats", "md,html,tex")
    markdown = (out / "leaderboard.md").read_text()
    assert "&lt;b&gt;bold&lt;/b&gt;\\|pipe &amp; co" in markdown and "<b>" not in markdown
    assert "<b>" not in (out / "leaderboard.html").read_text()
    assert "\\textless{}b\\textgreater{}" in (out / "leaderboard.tex").read_text()
