"""`capbench compare-judges`: two judges on the same captions, from results folders written as `capbench eval` does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ScriptedEngine, prefers_longer, run_cli
from scipy import stats

from capbench import engines
from capbench.errors import InputError
from capbench.judge_compare import compare_judges
from capbench.judge_stats import cohen_kappa, rank_correlation, weighted_correlations
from capbench.records import MetricInfo, SampleScore

pytestmark = pytest.mark.cli

SETS = ["alpha", "bravo", "charlie", "delta"]
TIE = '{"reason": "r", "judgment": "Tie"}'


def _strict(constant: str) -> None:
    raise AssertionError(f"{constant} in the JSON report: undefined numbers must be null")


def _compare(old: Path, new: Path, *args: str) -> dict:
    return json.loads(run_cli("compare-judges", str(old), str(new), "--json", *args).output, parse_constant=_strict)


class LengthJudge(ScriptedEngine):
    """``length:any`` from the command line: a pairwise judge that prefers the longer caption (both orders agree)."""

    def __init__(self, model: str) -> None:
        super().__init__(prefers_longer, name=f"length-{model}")


def _write_run(
    root: Path, model: str, values: dict[str, float], judge: str, benchmark: str = "synth", metric: str = "dcscore"
) -> None:
    """Write a format-2 run by hand: captions, one unit per sample in stratum ``all``, a manifest with ``info``."""
    folder = root / benchmark / model
    folder.mkdir(parents=True)
    scores = [SampleScore(i, metric, {"score": v}, units=(("all", v, 1.0),)) for i, v in values.items()]
    (folder / f"{metric}.jsonl").write_text("".join(json.dumps(s.to_dict()) + "\n" for s in scores))
    captions = "".join(json.dumps({"id": i, "caption": f"caption of {i} by {model}"}) + "\n" for i in values)
    (folder / "captions.jsonl").write_text(captions)
    judges = {"text": {"backend": "api", "model": judge}}
    info = MetricInfo(metric, metric.upper(), value_range=(0.0, 100.0)).to_dict()
    entry = {"metric": metric, "judges": judges, "config_hash": f"cfg-{judge}", "samples": len(values), "info": info}
    entry["summary"] = {"score": sum(values.values()) / len(values)}
    manifest = {"format": 2, "benchmark": benchmark, "caption_set": {"name": model, "samples": len(values)}}
    (folder / "manifest.json").write_text(json.dumps({**manifest, "judges": judges, "metrics": {metric: entry}}))


def _old_scores(sets: list[str] = SETS, images: int = 30, seed: int = 1) -> dict[str, dict[str, float]]:
    """Per set, per image, an old judge's score: sets differ in level so they rank clearly."""
    rng = np.random.default_rng(seed)
    ids = [f"img{i:02d}" for i in range(images)]
    return {s: {i: 20 + 12 * k + float(rng.uniform(0, 30)) for i in ids} for k, s in enumerate(sets)}


def _two_sides(tmp_path: Path, old: dict, new: dict) -> tuple[Path, Path]:
    for name, values in old.items():
        _write_run(tmp_path / "old", name, values, "gpt-4o-2024-05-13")
    for name, values in new.items():
        _write_run(tmp_path / "new", name, values, "new-judge")
    return tmp_path / "old", tmp_path / "new"


# ---------------------------------------------------------------- pure pieces, against scipy and hand computation


def test_cohen_kappa_by_hand():
    # raters agree on 4 of 6; marginals (2, 2, 2) and (2, 3, 1): p_e = (4 + 6 + 2) / 36 = 1/3, κ = (2/3 - 1/3) / (2/3)
    agreement, kappa = cohen_kappa(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0]))
    assert agreement == pytest.approx(4 / 6) and kappa == pytest.approx(0.5)
    assert cohen_kappa(np.array([0, 1, 2]), np.array([0, 1, 2])) == pytest.approx((1.0, 1.0))
    # one rater always says tie: agreement is the other's tie share, κ exactly 0
    assert cohen_kappa(np.array([1, 1, 1, 1]), np.array([1, 0, 2, 1])) == pytest.approx((0.5, 0.0))
    # both always tie: 0/0, undefined
    assert np.isnan(cohen_kappa(np.array([1, 1]), np.array([1, 1]))[1])


def test_rank_correlation_keeps_ties_and_refuses_an_all_tied_side():
    # b and a tie under the judge; breaking the tie by name ("a" before "b") would give ρ = τ = 1
    judge, truth = {"b": 1.0, "a": 1.0, "c": 2.0}, {"a": 1.0, "b": 2.0, "c": 3.0}
    got = rank_correlation(judge, truth)
    assert got["spearman"] == pytest.approx(stats.spearmanr([1, 1, 2], [1, 2, 3]).statistic)  # √3/2
    assert got["kendall"] == pytest.approx(stats.kendalltau([1, 1, 2], [1, 2, 3], variant="b").statistic)
    assert got["spearman"] == pytest.approx(np.sqrt(3) / 2) and got["kendall"] == pytest.approx(np.sqrt(2 / 3))
    tied = rank_correlation({"x": 5.0, "y": 5.0, "z": 5.0}, truth | {"x": 1, "y": 2, "z": 3}, ("judge", "humans"))
    assert tied["spearman"] is None and tied["kendall"] is None
    assert "every judge is 5" in tied["undefined"] and "all-tied" in tied["undefined"]
    few = rank_correlation({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 3.0}, minimum=3)
    assert few["spearman"] is None and "only 2 item(s)" in few["undefined"]


def test_the_bootstrap_correlations_equal_scipy_on_the_resampled_data():
    # integer scores, so ties are common: each resample must rank like rankdata on the repeated pairs
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, 50).astype(float)
    y = x + rng.integers(0, 4, 50)
    weights = rng.integers(0, 3, (20, 50)).astype(float)
    pearson, spearman = weighted_correlations(x, y, weights)
    for row in range(20):
        xs, ys = np.repeat(x, weights[row].astype(int)), np.repeat(y, weights[row].astype(int))
        assert pearson[row] == pytest.approx(stats.pearsonr(xs, ys).statistic, abs=1e-12)
        assert spearman[row] == pytest.approx(stats.spearmanr(xs, ys).statistic, abs=1e-12)
    flat = np.zeros((1, 50))
    flat[0, x == x[0]] = 1.0  # a resample holding only equal x values has no correlation
    assert np.isnan(weighted_correlations(x, y, flat)[0][0]) and np.isnan(weighted_correlations(x, y, flat)[1][0])


# ---------------------------------------------------------------- two judges from hand-written results folders


def test_a_known_linear_shift_is_recovered(tmp_path: Path):
    old = _old_scores()
    new = {s: {i: 0.8 * v + 5.0 for i, v in values.items()} for s, values in old.items()}
    report = _compare(*_two_sides(tmp_path, old, new), "--bootstrap", "200")
    m = report["metrics"]["dcscore"]
    assert m["sets"] == 4 and m["images"] == 30 and m["samples"]["n"] == 120
    assert m["samples"]["pearson"] == pytest.approx(1.0) and m["samples"]["spearman"] == pytest.approx(1.0)
    assert m["ranking"]["spearman"] == pytest.approx(1.0) and m["ranking"]["kendall"] == pytest.approx(1.0)
    fit = m["calibration"]["fit"]
    assert (fit["slope"], fit["intercept"], fit["r"]) == pytest.approx((0.8, 5.0, 1.0))
    heads = {s: np.mean(list(v.values())) for s, v in old.items()}
    shift = np.mean([0.8 * h + 5 - h for h in heads.values()])
    assert m["calibration"]["shift"] == pytest.approx(shift)
    assert m["calibration"]["shift_low"] <= shift <= m["calibration"]["shift_high"]
    rows = {r["model"]: r for r in m["calibration"]["sets"]}
    assert rows["bravo"]["old"] == pytest.approx(heads["bravo"])
    assert rows["bravo"]["new"] == pytest.approx(0.8 * heads["bravo"] + 5)
    assert m["verdicts"] is None  # dcscore scores are not pairwise verdicts
    assert report["warnings"] == []


def test_noisy_judge_matches_scipy_and_the_bootstrap_is_seeded(tmp_path: Path):
    old = _old_scores()
    rng = np.random.default_rng(5)
    new = {s: {i: v + 3.0 + float(rng.normal(0, 6)) for i, v in values.items()} for s, values in old.items()}
    old_dir, new_dir = _two_sides(tmp_path, old, new)
    report = _compare(old_dir, new_dir, "--bootstrap", "300", "--seed", "4")
    m = report["metrics"]["dcscore"]
    x = [old[s][i] for s in SETS for i in sorted(old[s])]
    y = [new[s][i] for s in SETS for i in sorted(old[s])]
    assert m["samples"]["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert m["samples"]["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert m["samples"]["pearson_low"] < m["samples"]["pearson"] < m["samples"]["pearson_high"] < 1
    heads = [[np.mean(list(side[s].values())) for s in SETS] for side in (old, new)]
    assert m["ranking"]["spearman"] == pytest.approx(stats.spearmanr(*heads).statistic)
    assert m["ranking"]["kendall"] == pytest.approx(stats.kendalltau(*heads, variant="b").statistic)
    line = stats.linregress(x, y)
    assert m["calibration"]["fit"]["slope"] == pytest.approx(line.slope)
    assert m["calibration"]["fit"]["intercept"] == pytest.approx(line.intercept)
    assert m["calibration"]["shift"] == pytest.approx(np.mean(np.subtract(heads[1], heads[0])))
    assert m["calibration"]["shift_low"] < m["calibration"]["shift"] < m["calibration"]["shift_high"]
    assert _compare(old_dir, new_dir, "--bootstrap", "300", "--seed", "4") == report
    other = _compare(old_dir, new_dir, "--bootstrap", "300", "--seed", "5")["metrics"]["dcscore"]
    assert other["samples"]["pearson"] == m["samples"]["pearson"]
    assert other["samples"]["pearson_low"] != m["samples"]["pearson_low"]


def test_an_all_tied_judge_has_no_correlation(tmp_path: Path):
    old = _old_scores()
    new = {s: dict.fromkeys(values, 50.0) for s, values in old.items()}
    m = _compare(*_two_sides(tmp_path, old, new), "--bootstrap", "50")["metrics"]["dcscore"]
    for block in (m["samples"], m["ranking"]):
        assert block["spearman"] is None and block["spearman_low"] is None
        assert "every new judge's" in block["undefined"] and "is 50" in block["undefined"]
    assert m["ranking"]["kendall"] is None and m["samples"]["pearson"] is None
    assert m["calibration"]["fit"]["slope"] == pytest.approx(0.0) and m["calibration"]["fit"]["r"] is None
    table = run_cli("compare-judges", str(tmp_path / "old"), str(tmp_path / "new"), "--bootstrap", "50").output
    assert "ranking undefined: every new judge's headline is 50" in table


def test_two_sets_are_too_few_to_rank(tmp_path: Path):
    old = _old_scores(SETS[:2])
    m = _compare(*_two_sides(tmp_path, old, old), "--bootstrap", "50")["metrics"]["dcscore"]
    assert m["ranking"]["spearman"] is None and "2 caption set(s) in both" in m["ranking"]["undefined"]
    assert m["samples"]["pearson"] == pytest.approx(1.0)


def test_partial_overlap_warns_with_counts_and_compares_the_shared_part(tmp_path: Path):
    old = _old_scores()
    new = {s: {i: v + 2 for i, v in list(values.items())[:20]} for s, values in old.items() if s != "delta"}
    new["echo"] = {"img00": 10.0}
    result = run_cli("compare-judges", str(tmp_path / "old"), str(tmp_path / "new"), ok=False)
    assert result.exit_code == 1 and "no such results folder" in result.output  # nothing written yet
    old_dir, new_dir = _two_sides(tmp_path, old, new)
    report = _compare(old_dir, new_dir, "--bootstrap", "50")
    warnings = report["warnings"]
    assert "caption set(s) only in OLD: delta; left out" in warnings
    assert "caption set(s) only in NEW: echo; left out" in warnings
    assert any("60 (caption set, sample) pair(s) scored by both judges, of 90 scored by OLD and 60 by NEW" in w
               for w in warnings)  # fmt: skip
    m = report["metrics"]["dcscore"]
    assert m["samples"]["n"] == 60 and m["images"] == 20
    assert m["calibration"]["shift"] == pytest.approx(2.0)
    printed = run_cli("compare-judges", str(old_dir), str(new_dir), "--bootstrap", "50")
    assert "warning: caption set(s) only in OLD: delta" in printed.output


def test_changed_captions_are_left_out(tmp_path: Path):
    old = _old_scores()
    old_dir, new_dir = _two_sides(tmp_path, old, old)
    captions = new_dir / "synth" / "alpha" / "captions.jsonl"
    lines = captions.read_text().splitlines()
    lines[0] = json.dumps({"id": "img00", "caption": "another caption"})
    captions.write_text("\n".join(lines) + "\n")
    report = _compare(old_dir, new_dir, "--bootstrap", "20")
    assert report["metrics"]["dcscore"]["samples"]["n"] == 119
    assert any("caption set alpha: 1 sample(s) have different captions" in w for w in report["warnings"])


def test_refusals_are_one_line_naming_the_fix(tmp_path: Path):
    old = _old_scores(SETS[:3])
    for name, values in old.items():
        _write_run(tmp_path / "a", name, values, "j1")
        _write_run(tmp_path / "b", name, values, "j2", benchmark="other")
        _write_run(tmp_path / "c", name, {f"x{k}": 1.0 for k in range(3)}, "j2")
        _write_run(tmp_path / "d", f"{name}-2", values, "j2")
    cases = [
        ("b", "OLD (.*) holds results of benchmark synth, NEW (.*) of other: judges can only be compared on the same "
              "benchmark"),
        ("c", "no sample was scored by both judges .*score the same captions"),
        ("d", "no caption set is in both: OLD has alpha, bravo, charlie, NEW has alpha-2"),
    ]  # fmt: skip
    for new, message in cases:
        result = run_cli("compare-judges", str(tmp_path / "a"), str(tmp_path / new), ok=False)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert re.search(message, result.output) and len(result.output.strip().splitlines()) == 1, result.output
    with pytest.raises(InputError, match="no results of benchmark 'nope'"):
        compare_judges(tmp_path / "a", tmp_path / "a", benchmark="nope")


def test_markdown_report_and_run_or_benchmark_folders(tmp_path: Path):
    old = _old_scores()
    new = {s: {i: v - 1 for i, v in values.items()} for s, values in old.items()}
    old_dir, new_dir = _two_sides(tmp_path, old, new)
    out = tmp_path / "report" / "judges.md"
    run_cli("compare-judges", str(old_dir), str(new_dir), "--bootstrap", "50", "--out", str(out))
    text = out.read_text()
    assert text.startswith("# Judge comparison on synth") and "| dcscore | alpha | 30 |" in text
    assert "api:gpt-4o-2024-05-13" in text and "api:new-judge" in text and "-1.00 [-1.00, -1.00]" in text
    by_benchmark = _compare(old_dir / "synth", new_dir / "synth", "--bootstrap", "50")
    assert by_benchmark["metrics"]["dcscore"]["sets"] == 4
    one_run = _compare(old_dir / "synth" / "alpha", new_dir / "synth" / "alpha", "--bootstrap", "50")
    assert one_run["metrics"]["dcscore"]["sets"] == 1 and one_run["metrics"]["dcscore"]["samples"]["n"] == 30


# ---------------------------------------------------------------- real `capbench eval` runs: arena verdicts


@pytest.fixture(scope="module")
def arena_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini example sets scored by `capbench eval -m arena`: a length judge twice, an all-tie judge once."""
    root = tmp_path_factory.mktemp("judges")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPBENCH_HOME", str(root / "home"))
        patch.setitem(engines.ENGINES, "scripted", ("conftest", "FixedReplyEngine", "test engine"))
        patch.setitem(engines.ENGINES, "length", ("test_judge_compare", "LengthJudge", "test engine"))
        cassette = root / "old-judge.jsonl"
        for folder, judge, more in (
            ("old", "length:a", ["--record-judge", str(cassette)]),
            ("same", "length:b", []),
            ("tied", f"scripted:{TIE}", []),
            ("replayed", f"replay:{cassette}", []),  # the retired judge, re-scored from its cassette
        ):
            run_cli("eval", "--example-captions", "-m", "arena", "--judge", judge, "--results-dir", str(root / folder),
                 "--json", *more)  # fmt: skip
    return root


def _verdicts(folder: Path) -> dict[tuple[str, str, str], float]:
    """Every (set, sample, baseline) verdict in a results folder's arena score files."""
    out = {}
    for path in sorted(folder.glob("mini/*/arena.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            for pair in row["details"]["pairs"]:
                if not pair.get("self"):
                    out[(path.parent.name, row["sample_id"], pair["baseline"])] = pair["outcome"]
    return out


def test_identical_judges_agree_perfectly(arena_results: Path):
    report = _compare(arena_results / "old", arena_results / "same", "--bootstrap", "100")
    m = report["metrics"]["arena"]
    n = len(_verdicts(arena_results / "old"))
    assert m["verdicts"]["n"] == n == 3 * 18 * 2  # each set against the other two sets' captions
    assert m["verdicts"]["kappa"] == 1.0 and m["verdicts"]["agreement"] == 100.0
    assert m["samples"]["pearson"] == pytest.approx(1.0) and m["ranking"]["kendall"] == pytest.approx(1.0)
    calibration = m["calibration"]
    assert (calibration["shift"], calibration["shift_low"], calibration["shift_high"]) == (0, 0, 0)
    assert m["calibration"]["fit"]["slope"] == pytest.approx(1.0) and m["calibration"]["fit"]["intercept"] == 0.0
    assert not any("same judge" in w for w in report["warnings"])
    itself = _compare(arena_results / "old", arena_results / "old", "--bootstrap", "20")
    assert "arena: OLD and NEW were scored by the same judge with the same settings" in itself["warnings"][0]


def test_an_all_tie_judge_against_a_real_one(arena_results: Path):
    report = _compare(arena_results / "old", arena_results / "tied", "--bootstrap", "100")
    m = report["metrics"]["arena"]
    old = _verdicts(arena_results / "old")
    tie_share = sum(v == 0.5 for v in old.values()) / len(old)
    assert m["verdicts"]["agreement"] == pytest.approx(100 * tie_share) and m["verdicts"]["kappa"] == pytest.approx(0)
    confusion = m["verdicts"]["confusion"]
    assert confusion["win"]["tie"] == sum(v == 1.0 for v in old.values())
    assert confusion["loss"]["tie"] == sum(v == 0.0 for v in old.values())
    assert sum(confusion[a]["win"] + confusion[a]["loss"] for a in confusion) == 0
    assert m["ranking"]["spearman"] is None and "every new judge's headline is 0" in m["ranking"]["undefined"]
    assert m["samples"]["pearson"] is None
    heads = {r["model"]: r for r in m["calibration"]["sets"]}
    assert all(r["new"] == 0.0 and r["diff"] == pytest.approx(-r["old"]) for r in heads.values())


def test_a_cassette_of_the_old_judge_rescores_into_comparable_results(arena_results: Path):
    report = _compare(arena_results / "old", arena_results / "replayed", "--bootstrap", "20")
    m = report["metrics"]["arena"]
    assert m["verdicts"]["n"] == 108 and m["verdicts"]["kappa"] == 1.0 and m["calibration"]["shift"] == 0.0
    [judges] = report["new"]["judges"]["arena"]
    assert judges["text"]["backend"] == "replay" and judges["text"]["of"]["model"] == "length-a"
    table = run_cli("compare-judges", str(arena_results / "old"), str(arena_results / "replayed"), "--bootstrap", "20")
    assert "new judge text replay:length-a (replayed)" in table.output
