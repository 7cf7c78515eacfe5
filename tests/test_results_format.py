"""The results format: real run folders match the documented schemas, and results rank without metric code.

Format 2 writes each metric's description into the manifest and each sample's headline units
into its score line, so the leaderboard ranks results of a metric this install does not have.
Formats 0 and 1 are read through the installed metric; a newer format is refused.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from jsonschema import Draft202012Validator

import capbench
from capbench import engines
from capbench import results as results_module
from capbench.leaderboard import leaderboard_report, load_results
from capbench.records import RESERVED_METRIC_NAMES, RESULTS_FORMAT, MetricInfo
from capbench.schemas import NAMES, load_schema

pytestmark = pytest.mark.cli

MODELS = ["detailed", "planted_errors", "short"]


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name))


def _errors(name: str, document: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in _validator(name).iter_errors(document)]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real `capbench eval` runs of the example caption sets with every built-in metric (test judges)."""
    root = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPBENCH_HOME", str(root.parent / "home"))
        patch.setitem(engines.ENGINES, "scripted", ("conftest", "FixedReplyEngine", "test engine"))
        patch.setitem(engines.ENGINES, "oracle", ("oracle_engine", "OracleEngine", "test engine"))
        for judge, metrics in (("oracle:truth", "dcscore,balcap"), ("scripted:A", "captionqa,caprl,arena")):
            run_cli("eval", "--example-captions", "--judge", judge, "-m", metrics, "--results-dir", str(root), "--json")
    return root


def _score_lines(folder: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        p.stem: [json.loads(line) for line in p.read_text().splitlines()]
        for p in sorted(folder.glob("*.jsonl"))
        if p.name != "captions.jsonl"
    }


# ---------------------------------------------------------------- the schemas


def test_schemas_are_valid_and_agree_with_the_code():
    for name in NAMES:
        Draft202012Validator.check_schema(load_schema(name))
        # A new results format needs new schemas (and a section in docs/results-format.md).
        assert load_schema(name)["properties"]["format"]["const"] == RESULTS_FORMAT
    manifest, report = load_schema("manifest"), load_schema("leaderboard")
    # One description of a metric, in both files; the names a metric may not take, as the code has them.
    assert manifest["$defs"]["metricInfo"] == report["$defs"]["metricInfo"]
    info = manifest["$defs"]["metricInfo"]
    assert set(info["required"]) == set(MetricInfo("m", "M").to_dict())
    assert info["properties"]["name"]["not"]["enum"] == sorted(RESERVED_METRIC_NAMES)
    # What a reader needs to rank without code is required, so dropping it from a schema fails here.
    assert {"info", "summary", "judges", "config_hash"} <= set(manifest["$defs"]["metricEntry"]["required"])
    assert {"format", "sample_id", "values", "units"} <= set(load_schema("score-line")["required"])
    with pytest.raises(KeyError, match="there are: manifest"):
        load_schema("nope")


def test_run_folders_match_the_schemas(results: Path):
    folders = sorted(p for p in (results / "mini").iterdir())
    assert [f.name for f in folders] == MODELS
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir() if p.suffix == ".json") == ["manifest.json"]
        assert not (folder / ".lock").exists()  # only while a run writes
        manifest = json.loads((folder / "manifest.json").read_text())
        assert _errors("manifest", manifest) == []
        lines = _score_lines(folder)
        assert set(lines) == set(manifest["metrics"]) == {"captionqa", "dcscore", "balcap", "caprl", "arena"}
        for metric, records in lines.items():
            assert len(records) == 18
            for record in records:
                assert _errors("score-line", record) == [], (metric, record["sample_id"])
        captions = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
        assert all(set(c) == {"id", "caption"} for c in captions) and len(captions) == 18


def _drop(document: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = copy.deepcopy(document)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def test_a_missing_required_field_fails_validation(results: Path):
    manifest = json.loads((results / "mini" / "short" / "manifest.json").read_text())
    line = _score_lines(results / "mini" / "short")["dcscore"][0]
    report = leaderboard_report(results)
    schema, board = load_schema("manifest"), load_schema("leaderboard")["$defs"]
    cases = [("manifest", manifest, (key,)) for key in schema["required"]]
    cases += [("manifest", manifest, ("caption_set", key)) for key in schema["properties"]["caption_set"]["required"]]
    cases += [("manifest", manifest, ("metrics", "dcscore", key)) for key in schema["$defs"]["metricEntry"]["required"]]
    cases += [
        ("manifest", manifest, ("metrics", "dcscore", "info", k)) for k in schema["$defs"]["metricInfo"]["required"]
    ]
    cases += [("score-line", line, (key,)) for key in load_schema("score-line")["required"]]
    cases += [("leaderboard", report, (key,)) for key in load_schema("leaderboard")["required"]]
    cases += [("leaderboard", report, ("boards", 0, key)) for key in board["board"]["required"]]
    cases += [("leaderboard", report, ("boards", 0, "rows", 0, key)) for key in board["row"]["required"]]
    cases += [
        ("leaderboard", report, ("boards", 0, "metrics", "dcscore", key)) for key in ("higher_is_better", "range")
    ]
    assert len(cases) > 60
    for name, document, path in cases:
        assert _errors(name, document) == [], name
        assert _errors(name, _drop(document, path)), f"{name} without {path} still validates"


def test_report_matches_its_schema_and_the_cli(results: Path):
    report = leaderboard_report(results, baseline="short", rounds=200)
    assert _errors("leaderboard", report) == []
    [board] = report["boards"]
    assert list(board["metrics"]) == ["captionqa", "dcscore", "balcap", "caprl", "arena"]  # the registry's order
    dcscore = board["metrics"]["dcscore"]
    assert dcscore["title"] == "DCScore" and dcscore["higher_is_better"] is True and dcscore["range"] == [0, 100]
    assert any(n.startswith("Metrics: captionqa = CaptionQA, points (0-100)") for n in board["notes"])
    args = ["leaderboard", str(results), "--json", "--no-figures", "--formats", "", "--baseline", "short"]
    printed = json.loads(run_cli(*args, "--rounds", "200").output)
    assert _errors("leaderboard", printed) == []
    printed.pop("timings"), report.pop("timings")
    assert printed == json.loads(json.dumps(report))
    assert capbench.leaderboard_report is leaderboard_report  # the public API is the same function


def test_format_2_results_rank_without_any_metric_code(results: Path, monkeypatch: pytest.MonkeyPatch):
    expected = leaderboard_report(results, rounds=200)

    def no_code(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("format-2 results were read with a metric's code")

    monkeypatch.setattr(results_module, "build_metric", no_code)
    monkeypatch.setattr(results_module, "describe", no_code)
    again = leaderboard_report(results, rounds=200)
    assert again["boards"] == expected["boards"] and again["warnings"] == []


# ---------------------------------------------------------------- hand-written results of metrics not installed

WORDCOUNT = MetricInfo(
    name="wordcount",
    title="Word count",
    description="words per caption, per stratum",
    unit="words",
    value_range=(0.0, 200.0),
    judge_roles=(),
)
TYPOS = MetricInfo(
    name="typos", title="Typos", unit="typos per caption", value_range=(0.0, 10.0), higher_is_better=False
)


def _write_run(
    root: Path, model: str, values: dict[str, dict[str, float]], infos: list[MetricInfo], fmt: int = 2
) -> Path:
    """Write a run folder by hand, as another tool would: format 2 has descriptions and units, 1 has neither."""
    folder = root / "synth" / model
    folder.mkdir(parents=True)
    ids = sorted({i for per in values.values() for i in per})
    (folder / "captions.jsonl").write_text(
        "".join(json.dumps({"id": i, "caption": f"{model} {i}"}) + "\n" for i in ids)
    )
    entries = {}
    for info in infos:
        scores = values[info.name]
        lines = []
        for index, (sample_id, value) in enumerate(sorted(scores.items())):
            line = {"format": fmt, "sample_id": sample_id, "metric": info.name, "values": {"score": value}}
            line.update(unscored=0, failed=0, caption_sha256="0" * 64, details={})
            if fmt >= 2:
                line["units"] = [["indoor" if index % 2 else "outdoor", value, 1.0]]
            lines.append(line)
        (folder / f"{info.name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        judges = {"text": {"backend": "rules", "model": "none"}}
        entry = {"benchmark": "synth", "metric": info.name, "config": {}, "prompts": {}, "judges": judges}
        entry.update(config_hash=f"cfg-{info.name}", samples=len(scores), summary={"score": None})
        if fmt >= 2:
            entry["info"] = info.to_dict()
        entries[info.name] = entry
    manifest = {
        "format": fmt,
        "capbench_version": "another tool 1.0",
        "benchmark": "synth",
        "caption_set": {"name": model, "source": "", "sha256": "", "samples": len(ids)},
        "command": ["another-tool"],
        "git_commit": None,
        "versions": {},
        "judges": {},
        "judge_specs": {},
        "metrics": entries,
        "sessions": [],
        "status": "complete",
        "updated": "2026-01-01T00:00:00+00:00",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _synthetic_board(root: Path) -> None:
    counts = {"terse": [8, 10, 9, 12, 7, 11], "verbose": [60, 85, 70, 95, 66, 90], "middling": [30, 41, 35, 38, 29, 45]}
    typos = {"terse": [0, 1, 0, 0, 1, 0], "verbose": [3, 5, 2, 4, 6, 3], "middling": [1, 2, 1, 3, 1, 2]}
    for model in counts:
        values = {
            "wordcount": {f"img{k}": float(v) for k, v in enumerate(counts[model])},
            "typos": {f"img{k}": float(v) for k, v in enumerate(typos[model])},
        }
        _write_run(root, model, values, [WORDCOUNT, TYPOS])


def test_results_of_a_metric_not_installed_are_ranked(tmp_path: Path):
    _synthetic_board(tmp_path)
    for folder in (tmp_path / "synth").iterdir():  # what another tool writes can follow the schema
        assert _errors("manifest", json.loads((folder / "manifest.json").read_text())) == []
        assert all(_errors("score-line", x) == [] for lines in _score_lines(folder).values() for x in lines)
    report = leaderboard_report(tmp_path, out=tmp_path / "out", formats=["md", "csv"], figures=True)
    assert _errors("leaderboard", report) == [] and report["warnings"] == []
    [board] = report["boards"]
    assert list(board["metrics"]) == ["typos", "wordcount"]  # no built-in: alphabetical
    assert (
        board["metrics"]["wordcount"]["title"] == "Word count"
        and board["metrics"]["typos"]["unit"] == "typos per caption"
    )
    # Sorted by the first metric, typos, where lower is better; by word count, higher is better.
    assert board["sort"] == "typos" and [r["model"] for r in board["rows"]] == ["terse", "middling", "verbose"]
    rows = {r["model"]: r for r in board["rows"]}
    # The headline is the mean over strata (outdoor: even images, indoor: odd ones) of the stratum means.
    assert rows["terse"]["wordcount"] == pytest.approx(((8 + 9 + 7) / 3 + (10 + 12 + 11) / 3) / 2)
    for row in board["rows"]:
        for metric in ("typos", "wordcount"):
            assert row[f"{metric}_low"] <= row[metric] <= row[f"{metric}_high"], (row["model"], metric)
            assert row[f"{metric}_images"] == 6
        assert row["wordcount_low"] < row["wordcount_high"]
    by_count = leaderboard_report(tmp_path, sort="wordcount")["boards"][0]
    assert [r["model"] for r in by_count["rows"]] == ["verbose", "middling", "terse"]
    written = {Path(f).name for f in report["files"]}
    assert written == {
        "leaderboard.md",
        "leaderboard.csv",
        "synth-scores.png",
        "synth-length.png",
        "synth-heatmap-typos.png",
    }
    assert (
        "Metrics: typos = Typos, typos per caption; wordcount = Word count, words."
        in (tmp_path / "out" / "leaderboard.md").read_text()
    )


def test_older_results_of_a_metric_not_installed_are_left_out_saying_what_to_do(tmp_path: Path):
    _synthetic_board(tmp_path)
    old = {"wordcount": {"img0": 50.0, "img1": 52.0}}
    _write_run(tmp_path, "old_tool", old, [WORDCOUNT], fmt=1)
    report = leaderboard_report(tmp_path)
    [warning] = report["warnings"]
    assert "old_tool" in warning and "'wordcount'" in warning and "predate results format 2" in warning
    assert "install the package that provides metric 'wordcount'" in warning and "--overwrite" in warning
    rows = {r["model"]: r for r in report["boards"][0]["rows"]}
    assert rows["old_tool"]["wordcount"] is None and rows["verbose"]["wordcount"] is not None
    # Printed too, not crashed.
    shown = run_cli("leaderboard", str(tmp_path), "--no-figures", "--formats", "")
    assert "install the package that provides metric 'wordcount'" in " ".join(shown.output.split())


def test_a_metric_with_a_reserved_name_is_left_out_not_crashed(tmp_path: Path):
    words = MetricInfo(name="words", title="Words")
    values = {"wordcount": {"a": 10.0, "b": 20.0}, "words": {"a": 1.0, "b": 2.0}}
    _write_run(tmp_path, "one", values, [WORDCOUNT, words])
    _write_run(tmp_path, "two", {"wordcount": {"a": 30.0, "b": 50.0}}, [WORDCOUNT])
    report = leaderboard_report(tmp_path)
    [warning] = report["warnings"]
    assert "'words'" in warning and "reserved name" in warning and "rename" in warning
    [board] = report["boards"]
    assert list(board["metrics"]) == ["wordcount"]
    assert [(r["model"], r["wordcount"], r["words"]) for r in board["rows"]] == [("two", 40.0, 2.0), ("one", 15.0, 2.0)]
    shown = run_cli("leaderboard", str(tmp_path), "--no-figures", "--formats", "")
    assert "reserved name" in shown.output


# ---------------------------------------------------------------- older and newer formats


def _downgrade(folder: Path, fmt: int) -> None:
    """Rewrite a format-2 run as format ``fmt`` wrote it: no descriptions, no units (format 0: no format)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["metrics"].values():
        del entry["info"]
    manifest.pop("format")
    (folder / "manifest.json").write_text(json.dumps({**manifest, **({"format": fmt} if fmt else {})}))
    for name, lines in _score_lines(folder).items():
        older = [{k: v for k, v in x.items() if k not in ("units", "format")} for x in lines]
        older = [{**x, **({"format": fmt} if fmt else {})} for x in older]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in older))


def test_older_results_of_installed_metrics_rank_as_before(results: Path, tmp_path: Path):
    root = tmp_path / "results"
    shutil.copytree(results, root)
    _downgrade(root / "mini" / "detailed", 1)
    _downgrade(root / "mini" / "short", 0)
    # A format-1 run resumed by this capbench: a description, but some lines without units.
    planted = root / "mini" / "planted_errors" / "dcscore.jsonl"
    lines = planted.read_text().splitlines()
    planted.write_text("\n".join([json.dumps({**json.loads(lines[0]), "format": 1, "units": None}), *lines[1:]]) + "\n")
    assert [r.format for r in load_results(root).runs] == [1, 2, 0]
    report, expected = leaderboard_report(root, rounds=200), leaderboard_report(results, rounds=200)
    assert report["warnings"] == []
    assert report["boards"] == json.loads(json.dumps(expected["boards"]).replace(str(results), str(root)))


def test_newer_results_are_left_out_saying_upgrade(results: Path, tmp_path: Path):
    root = tmp_path / "results"
    shutil.copytree(results, root)
    manifest = json.loads((root / "mini" / "short" / "manifest.json").read_text())
    (root / "mini" / "short" / "manifest.json").write_text(json.dumps({**manifest, "format": RESULTS_FORMAT + 1}))
    report = leaderboard_report(root)
    [warning] = report["warnings"]
    assert f"results format {RESULTS_FORMAT + 1} by a newer capbench" in warning and "upgrade capbench" in warning
    assert [r["model"] for r in report["boards"][0]["rows"]] == ["detailed", "planted_errors"]
