"""A plugin package, built and installed here, is found by every part of capbench with no edit to capbench.

The package is ``examples/capbench-wordcount`` (the one ``docs/plugins.md`` walks through): a
judge-free metric that also declares an RL reward, a benchmark and an engine, declared as entry
points. It is pip-installed into a folder of its own that the commands see on ``PYTHONPATH``, so
the rest of the suite runs without it. A second package whose import fails shows that a broken
plugin is named and breaks nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "capbench-wordcount"
REFERENCES = {
    "red-square": "A red square on a white background.",
    "blue-square": "A blue square drawn in the middle of a plain white picture.",
    "green-square": "A small green square.",
}

pytestmark = pytest.mark.cli


def _install(source: Path, site: Path) -> None:
    """pip-install a package (a copy, so the build leaves nothing in the tree) into ``site``."""
    copy = site.parent / f"src-{source.name}"
    shutil.copytree(source, copy)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(copy)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("plugins")
    folder = base / "site"
    _install(EXAMPLE, folder)
    broken = base / "capbench-broken"
    (broken / "capbench_broken").mkdir(parents=True)
    (broken / "capbench_broken" / "__init__.py").write_text("raise ImportError('needs libfoo, which is missing')\n")
    (broken / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "capbench-broken"\nversion = "0.2.0"\n'
        '[project.entry-points."capbench.metrics"]\nbroken = "capbench_broken:Metric"\n'
        'words = "capbench_broken:Words"\n'  # a reserved name: left out with a notice
        '[tool.setuptools]\npackages = ["capbench_broken"]\n'
    )
    _install(broken, folder)
    return folder


def _run(args: list[str], cwd: Path, site: Path | None, program: str = "capbench") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(CAPBENCH_HOME=str(cwd / "home"), COLUMNS="200", HF_HUB_OFFLINE="1")
    if site is not None:
        env["PYTHONPATH"] = str(site)
    module = {"capbench": "capbench", "capbench-rl": "capbench_rl.cli"}[program]
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def _expected(caption: str) -> dict[str, float]:
    """The example metric's score of ``caption`` for each image, computed here from its definition."""
    return {
        i: 100.0 * max(0.0, 1.0 - abs(len(caption.split()) / len(ref.split()) - 1.0)) for i, ref in REFERENCES.items()
    }


def test_capbench_list_shows_the_plugins_and_names_a_broken_one(site: Path, tmp_path: Path):
    done = _run(["list", "--json"], tmp_path, site)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    origin = "capbench-wordcount 0.1.0"
    metric = next(m for m in info["metrics"] if m["name"] == "wordcount")
    assert metric["origin"] == origin and metric["judges"] == [] and metric["rewards"] == ["length_match"]
    assert metric["unit"] == "points (0-100)" and metric["higher_is_better"] is True
    bench = next(b for b in info["benchmarks"] if b["name"] == "tinyshapes")
    assert bench["origin"] == origin and bench["samples"] == 3
    engine = next(e for e in info["engines"] if e["name"] == "constant")
    assert engine["origin"] == origin and engine["available"] is True
    broken = next(m for m in info["metrics"] if m["name"] == "broken")
    assert "capbench-broken 0.2.0 failed to import" in broken["error"] and "libfoo" in broken["error"]
    assert any("'words'" in p and "reserved" in p for p in info["problems"])
    # the built-ins are all still there, and the table prints
    assert {"captionqa", "dcscore", "balcap", "caprl", "arena"} <= {m["name"] for m in info["metrics"]}
    table = _run(["list"], tmp_path, site)
    assert table.returncode == 0 and "capbench-wordcount 0.1.0" in table.stdout and "broken:" in table.stdout


def test_eval_and_leaderboard_with_a_plugins_metric_benchmark_and_engine(site: Path, tmp_path: Path):
    caption = "A red square."
    args = ["eval", "-b", "tinyshapes", "--engine", "constant", "--model", "any", "--model-opt", f"text={caption}",
            "-m", "wordcount"]  # fmt: skip
    done = _run([*args, "--json"], tmp_path, site)
    assert done.returncode == 0, done.stderr
    [run] = json.loads(done.stdout)["runs"]
    expected = _expected(caption)
    assert run["metrics"]["wordcount"]["score"] == pytest.approx(sum(expected.values()) / 3)
    assert run["judge_calls"] == 0  # a judge-free metric loads and calls no judge
    lines = [json.loads(x) for x in (tmp_path / "results/tinyshapes/any/wordcount.jsonl").read_text().splitlines()]
    assert {x["sample_id"]: x["values"]["score"] for x in lines} == pytest.approx(expected)
    # the printed table is the one the metric declares
    printed = _run(args, tmp_path, site)
    assert printed.returncode == 0, printed.stderr
    assert "Length match on tinyshapes" in printed.stdout and "length match" in printed.stdout
    assert f"{sum(expected.values()) / 3:.1f}" in printed.stdout
    # ranked by the leaderboard, with the plugin installed and without it
    for where in (site, None):
        board = _run(["leaderboard", "--json", "--no-figures"], tmp_path, where)
        assert board.returncode == 0, board.stderr
        [row] = _rows(json.loads(board.stdout), "tinyshapes")
        assert row["wordcount"] == pytest.approx(sum(expected.values()) / 3)


def _rows(report: Any, benchmark: str) -> list[dict[str, Any]]:
    boards = report["boards"] if isinstance(report, dict) else report
    board = next(b for b in boards if b["benchmark"] == benchmark)
    return board["rows"]


def test_a_broken_plugin_is_named_where_it_is_used_and_breaks_nothing_else(site: Path, tmp_path: Path):
    done = _run(["eval", "--example-captions", "-m", "broken"], tmp_path, site)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert "metric 'broken' from package capbench-broken 0.2.0 failed to import" in error and "libfoo" in error
    unknown = _run(["eval", "--example-captions", "-m", "bleu"], tmp_path, site)
    assert "unknown metric 'bleu'" in unknown.stderr and "wordcount" in unknown.stderr
    assert "'capbench.metrics' entry-point group" in unknown.stderr
    fine = _run(["eval", "--example-captions", "-m", "wordcount", "--json"], tmp_path, site)
    assert fine.returncode == 0, fine.stderr
    assert len(json.loads(fine.stdout)["runs"]) == 3


def test_capbench_rl_uses_the_plugins_reward(site: Path, tmp_path: Path):
    # the recipe check knows the reward a plugin's metric declares ...
    args = ["train", "--config", "toy-cpu", "--set", "model=org/policy", "--set", "rewards={length_match: 1.0}",
            "--dry-run"]  # fmt: skip
    done = _run(args, tmp_path, site, program="capbench-rl")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rewards"] == {"length_match": 1.0}
    without = _run(args, tmp_path, None, program="capbench-rl")
    assert without.returncode != 0 and "length_match" in without.stderr and "choose from" in without.stderr
    # ... and the trainer's reward function scores rollouts with it, as TRL calls it
    code = """
import asyncio, json, pickle, sys
from capbench_rl.recipe import load_recipe
from capbench_rl.train import reward_functions
recipe = load_recipe("toy-cpu", ["model=org/policy", "rewards={length_match: 1.0}"])
[func], weights = reward_functions(recipe)
func = pickle.loads(pickle.dumps(func))  # survives TRL's process boundaries
refs = json.loads(sys.argv[1])
out = asyncio.run(func(["p"] * 3, ["A red square."] * 3, reference_caption=list(refs.values()), sample_id=list(refs)))
from trl.trainer.utils import get_callable_name, is_async_callable
print(json.dumps({"rewards": out, "name": get_callable_name(func), "async": is_async_callable(func)}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), CAPBENCH_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    ran = subprocess.run([sys.executable, "-c", code, json.dumps(REFERENCES)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=600)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    got = json.loads(ran.stdout.strip().splitlines()[-1])
    assert got["name"] == "length_match" and got["async"] is True
    assert got["rewards"] == pytest.approx([v / 100 for v in _expected("A red square.").values()])


def test_the_api_evaluates_with_a_plugin_in_process(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from capbench import registry

    monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    try:
        import capbench

        results = capbench.evaluate(
            benchmark="tinyshapes",
            captions={"mine": {"red-square": "A red square on white.", "green-square": "A square."}},
            metrics={"wordcount": {"target": 0.5}},
            results_dir=tmp_path / "results",
        )
        mine = results["mine"]
        assert [s.sample_id for s in mine.samples] == ["red-square", "green-square"]
        assert mine.samples[0].scores["wordcount"].values["ratio"] == pytest.approx(5 / 7)
        assert mine.summary["wordcount"]["score"] == pytest.approx(
            100 * ((1 - abs(5 / 7 - 0.5)) + (1 - abs(2 / 4 - 0.5))) / 2
        )
        assert mine.info["wordcount"].title == "Length match"
        with pytest.raises(capbench.ConfigError, match=r"metric 'wordcount' has no setting 'tagret'; its settings"):
            capbench.evaluate(benchmark="tinyshapes", captions={"x": {"red-square": "A."}},
                              metrics={"wordcount": {"tagret": 0.5}}, results_dir=tmp_path / "r")  # fmt: skip
    finally:
        monkeypatch.undo()
        registry.refresh()
