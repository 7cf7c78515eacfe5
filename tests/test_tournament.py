"""Many models at once: battle planning, resumable judging, rankings; and agreement with human battles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ScriptedEngine, prefers_longer
from scipy import stats

from capbench.agreement import (
    NO_LEVEL,
    caption_agreement,
    human_outcome,
    judge_battles,
    model_agreement,
    read_annotations,
)
from capbench.cli import main
from capbench.data import load_benchmark
from capbench.errors import InputError
from capbench.metrics.arena import ArenaConfig, PairJudge
from capbench.records import CaptionSet
from capbench.tournament import Tournament, plan, rank


def _sets(ids: list[str]) -> list[CaptionSet]:
    return [
        CaptionSet("long", {i: f"A long and careful caption of {i}, with many details." for i in ids}),
        CaptionSet("medium", {i: f"A caption of {i}, some detail." for i in ids}),
        CaptionSet("short", {i: f"{i}." for i in ids}),
    ]


def test_plan_takes_every_pair_or_a_seeded_budget():
    bench = load_benchmark("mini")
    ids = [s.id for s in bench.samples]
    sets = _sets(ids[:4])
    matches = plan(bench, sets)
    assert len(matches) == 4 * 3 and all(m.a < m.b for m in matches)
    budget = plan(bench, sets, budget=5, seed=1)
    assert len(budget) == 5 and budget == plan(bench, sets, budget=5, seed=1)
    assert {m.key for m in budget} <= {m.key for m in matches}


def test_plan_refuses_unknown_ids_and_sets_without_shared_images():
    bench = load_benchmark("mini")
    with pytest.raises(InputError, match=r"1 id\(s\) are not in benchmark 'mini'"):
        plan(bench, [CaptionSet("a", {"nosuch": "x"}), CaptionSet("b", {"astronaut": "y"})])
    with pytest.raises(InputError, match="no image is captioned by two of the caption sets"):
        plan(bench, [CaptionSet("a", {"camera": "x"}), CaptionSet("b", {"astronaut": "y"})])


def test_tournament_ranks_and_resumes(tmp_path: Path):
    bench = load_benchmark("mini")
    ids = [s.id for s in bench.samples]
    sets = _sets(ids)
    judge = ScriptedEngine(prefers_longer)
    tournament = Tournament(bench, sets, {"text": judge}, PairJudge(), tmp_path)
    battles = tournament.run(plan(bench, sets), batch_size=7)
    assert len(battles) == 18 * 3 and len(judge.calls) == 18 * 3 * 2
    report = rank(battles, rounds=200)
    assert [r["model"] for r in report["bradley_terry"]] == ["long", "medium", "short"]
    assert [r["model"] for r in report["elo"]] == ["long", "medium", "short"]
    assert report["consistency"] == 100.0 and report["failed"] == 0
    top = report["bradley_terry"][0]
    assert top["wins"] == 36 and top["losses"] == 0 and top["low"] <= top["rating"] <= top["high"]
    # a second run judges nothing again
    again = Tournament(bench, sets, {"text": judge}, PairJudge(), tmp_path).run(plan(bench, sets))
    assert len(judge.calls) == 18 * 3 * 2 and again == battles
    # a torn last line (a kill during a write) is dropped and that battle judged again
    path = tournament.battles_path
    path.write_bytes(path.read_bytes() + b'{"sample_id": "astro')
    Tournament(bench, sets, {"text": judge}, PairJudge(), tmp_path).run(plan(bench, sets))
    assert len(judge.calls) == 18 * 3 * 2
    # a finished line that is no battle is named
    path.write_text(path.read_text() + '{"hello": 1}\n')
    with pytest.raises(InputError, match=r"battles.jsonl:\d+: not a capbench battle"):
        Tournament(bench, sets, {"text": judge}, PairJudge(), tmp_path).run(plan(bench, sets))
    # other judge settings: refuse to mix
    with pytest.raises(InputError, match="--overwrite"):
        Tournament(bench, sets, {"text": judge}, PairJudge(ArenaConfig(order="single")), tmp_path).run([])


def test_tournament_needs_two_sets(tmp_path: Path):
    bench = load_benchmark("mini")
    with pytest.raises(InputError, match="at least two caption sets"):
        Tournament(bench, _sets(["astronaut"])[:1], {"text": ScriptedEngine()}, PairJudge(), tmp_path)


def test_cli_arena_writes_rankings(tmp_path: Path, scripted_cli_engine):
    reply = '{"reason": "r", "judgment": "Tie"}'
    argv = ["arena", "--example-captions", "--judge", f"scripted:{reply}", "--rounds", "50",
            "--results-dir", str(tmp_path), "--json"]  # fmt: skip
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["battles"] == 18 * 3 and report["judge_usage"]["judge_calls"] == 18 * 3 * 2
    ratings = {r["model"]: r["rating"] for r in report["bradley_terry"]}
    assert max(ratings.values()) - min(ratings.values()) < 1e-6  # all ties: equal strengths
    assert json.loads((tmp_path / "mini" / "_arena" / "rankings.json").read_text())["battles"] == 54


# ---------------------------------------------------------------- agreement with humans

MODELS = ("m-best", "m-mid", "m-worst")


def _annotations(tmp_path: Path) -> Path:
    """Human battles where the better model (by MODELS order) always wins, plus human-side and tie rows."""
    rows = []
    for i in range(12):
        a, b = [(0, 1), (1, 2), (0, 2)][i % 3]
        longer, shorter = f"A long, careful caption of image {i}.", f"Image {i}."
        swap = i % 2 == 1
        first, second = (MODELS[b], MODELS[a]) if swap else (MODELS[a], MODELS[b])
        rows.append({
            "img": f"img{i}.jpg", "source1": first, "source2": second,
            "caption1": shorter if swap else longer, "caption2": longer if swap else shorter,
            "ref": "A reference.", "winner": MODELS[a], "cluster": f"level {1 + i % 2}",
        })  # fmt: skip
    rows.append({"img": "h.jpg", "source1": "human", "source2": "m-mid", "caption1": "x", "caption2": "y",
                 "ref": "r", "winner": "human", "cluster": "level 1"})  # fmt: skip
    rows.append({"img": "t.jpg", "source1": "m-best", "source2": "m-mid", "caption1": "Same length A.",
                 "caption2": "Same length B.", "ref": "r", "winner": "tie (bothbad)",
                 "cluster": "level 2"})  # fmt: skip
    path = tmp_path / "caparena_annots_eval.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_human_outcome_reads_the_winner_field():
    row = {"source1": "a", "source2": "b"}
    assert human_outcome({**row, "winner": "a"}) == 1.0
    assert human_outcome({**row, "winner": "b"}) == 0.0
    assert human_outcome({**row, "winner": "tie (bothbad)"}) == 0.5


def test_agreement_with_a_judge_that_prefers_longer_captions(tmp_path: Path):
    rows = read_annotations(_annotations(tmp_path))
    judged = judge_battles(rows, PairJudge(), {"text": ScriptedEngine(prefers_longer)})
    assert len(judged) == 13  # the human-side battle is skipped
    level = caption_agreement(judged)
    assert level["agreement"] == 100.0 and level["battles"] == 13 and level["failed"] == 0
    assert level["levels"]["level 1"]["battles"] == 6 and level["levels"]["level 2"]["battles"] == 7
    assert level["judge_ties"] == level["human_ties"] == 1
    model = model_agreement(judged, rounds=100)
    assert model["spearman"] == pytest.approx(1.0) and model["kendall"] == pytest.approx(1.0)
    assert model["human_ranking"] == list(MODELS)


def test_agreement_counts_disagreement_and_failures(tmp_path: Path):
    rows = read_annotations(_annotations(tmp_path))
    # always "Caption 1": never survives the swap, so every battle is a judge tie
    judged = judge_battles(rows, PairJudge(), {"text": ScriptedEngine(lambda r: '{"judgment": "Caption 1 is better"}')})
    level = caption_agreement(judged)
    assert level["agreement"] == pytest.approx(100 / 13) and level["judge_ties"] == 13
    # single order (the stored order, as CapArena): "Caption 1" means source1 wins
    single = judge_battles(
        rows, PairJudge(ArenaConfig(order="single")), {"text": ScriptedEngine(lambda r: "Caption 1 is better")}
    )
    assert all(j["judge"] == 1.0 for j in single)
    broken = judge_battles(rows, PairJudge(), {"text": ScriptedEngine(lambda r: "no idea")})
    assert caption_agreement(broken)["failed"] == 13 and caption_agreement(broken)["agreement"] is None


def test_bad_annotation_files_name_the_battle(tmp_path: Path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"img": "x", "source1": "a"}]))
    with pytest.raises(InputError, match="battle 0 lacks source2"):
        read_annotations(path)
    path.write_text("{}")
    with pytest.raises(InputError, match="expected a JSON list"):
        read_annotations(path)


def test_cli_agreement(tmp_path: Path, scripted_cli_engine):
    reply = '{"reason": "r", "judgment": "Tie"}'
    argv = ["agreement", str(_annotations(tmp_path)), "--judge", f"scripted:{reply}", "--rounds", "20",
            "--results-dir", str(tmp_path / "r")]  # fmt: skip
    result = CliRunner(env={"COLUMNS": "250"}).invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Caption-level agreement" in result.output and "Spearman" in result.output
    out = tmp_path / "r" / "agreement" / "caparena_annots_eval"
    report = json.loads((out / "agreement.json").read_text())
    assert report["caption_level"]["agreement"] == pytest.approx(100 / 13)
    # A judge that tied every battle ranks nothing: its Elo ratings are all equal, so no rank correlation
    # (it used to report the name order's correlation with the humans as if it were the judge's).
    model = report["model_level"]
    assert set(model["judge_ratings"].values()) == {1000.0}
    assert model["spearman"] is None and model["kendall"] is None
    assert "every judge's Elo rating is 1000" in model["undefined"]
    assert "Spearman —, Kendall τ-b — (undefined: every judge's Elo rating is 1000" in result.output
    lines = (out / "judgments.jsonl").read_text().splitlines()
    assert len(lines) == 13 and len(json.loads(lines[0])["orders"]) == 2  # both raw judgments stored


def test_missing_or_broken_annotation_files(tmp_path: Path):
    with pytest.raises(InputError, match="no such file; pass CapArena's annotation file"):
        read_annotations(tmp_path / "none.json")
    broken = tmp_path / "b.json"
    broken.write_text("[{")
    with pytest.raises(InputError, match="not readable JSON"):
        read_annotations(broken)


def test_model_agreement_correlates_ratings_with_ties_as_ties(tmp_path: Path):
    rows = read_annotations(_annotations(tmp_path))
    judged = judge_battles(rows, PairJudge(), {"text": ScriptedEngine(prefers_longer)})
    # the judge ties m-mid with m-worst everywhere; humans keep m-mid ahead
    judged = [{**j, "judge": 0.5} if {j["source1"], j["source2"]} == {"m-mid", "m-worst"} else j for j in judged]
    model = model_agreement(judged, rounds=50)
    judge, human = model["judge_ratings"], model["human_ratings"]
    x, y = [judge[m] for m in MODELS], [human[m] for m in MODELS]
    assert model["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert model["kendall"] == pytest.approx(stats.kendalltau(x, y, variant="b").statistic)
    assert model["undefined"] is None and model["shared"] == 3


def test_agreement_table_has_one_total_row(tmp_path: Path, scripted_cli_engine):
    rows = json.loads(_annotations(tmp_path).read_text())
    for row in rows:
        row.pop("cluster")
    path = tmp_path / "no_levels.json"
    path.write_text(json.dumps(rows))
    level = caption_agreement(
        judge_battles(read_annotations(path), PairJudge(), {"text": ScriptedEngine(prefers_longer)})
    )
    assert level["levels"] == {} and level["battles"] == 13  # no "all" level repeating the overall numbers
    argv = ["agreement", str(path), "--judge", "scripted:Tie", "--rounds", "20", "--results-dir", str(tmp_path / "r")]
    output = CliRunner(env={"COLUMNS": "250"}).invoke(main, argv, catch_exceptions=False).output
    table = [line for line in output.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in table] == ["all battles"]
    # battles with and without a level: the unlevelled ones get a row of their own, then the total
    rows[0]["cluster"] = "level 1"
    path.write_text(json.dumps(rows))
    level = caption_agreement(
        judge_battles(read_annotations(path), PairJudge(), {"text": ScriptedEngine(prefers_longer)})
    )
    assert {k: v["battles"] for k, v in level["levels"].items()} == {"level 1": 1, NO_LEVEL: 12}
