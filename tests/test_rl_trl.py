"""TRL as capbench-rl requires it: the declared lowest version, and TRL's own advantages on failed rewards.

Each training test runs one real GRPO step of a tiny random Qwen2.5-VL on the CPU, through
capbench-rl's trainer, with scripted rewards in place of the judges, and compares the advantages
TRL computed with capbench's rule (:func:`capbench_rl.advantages.advantages`).
"""

from __future__ import annotations

import json
import re
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

from capbench_rl.advantages import advantages
from capbench_rl.checks import MIN_TRL
from capbench_rl.recipe import load_recipe
from capbench_rl.rewards import reward

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_trl_is_the_declared_lowest_or_newer():
    text = (ROOT / "pyproject.toml").read_text()
    [extra] = re.findall(r"^rl = \[(.*)\]$", text, re.M)
    assert f'"trl>={MIN_TRL}"' in extra  # pyproject.toml and capbench-rl's start-up check say the same
    assert Version(version("trl")) >= Version(MIN_TRL)


async def first_reward(prompts, completions, *, values, **columns):
    """A scripted reward: ``values`` in rollout order (``None``: the judge failed)."""
    return list(values)


async def second_reward(prompts, completions, *, values, **columns):
    """A second scripted reward."""
    return list(values)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from tiny_models import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("policy") / "tiny-qwen2.5-vl")


def one_step(monkeypatch, out: Path, policy: Path, table: list[list[float | None]], aggregation: str):
    """Train one step on one prompt (a group of len(table) rollouts) whose rewards are ``table``'s columns."""
    from capbench_rl import train as train_module

    scripted = (first_reward, second_reward)[: len(table[0])]
    funcs = [reward(f, values=[row[i] for row in table]) for i, f in enumerate(scripted)]
    monkeypatch.setattr(train_module, "reward_functions", lambda recipe: (funcs, [1.0] * len(funcs)))
    n = len(table)
    overrides = [f"model={policy}", f"output_dir={out}", "max_steps=1", "eval_benchmark=null",
                 f"aggregation={aggregation}", f"num_generations={n}", f"per_device_train_batch_size={n}",
                 "rewards={balcap_precision: 1, balcap_recall: 1}"]  # fmt: skip
    recipe = load_recipe("toy-cpu", overrides)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_module.train(recipe)
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    [step] = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    told = [w for w in caught if "text_only_precision" in str(w.message)]
    return rollouts, step, told


@pytest.mark.engine
def test_trl_leaves_a_rollout_whose_rewards_all_failed_out_of_the_statistics(monkeypatch, tmp_path, policy):
    # The example: TRL 1.5 gives [1.414, -.707, -.707, 0], entering the failed rollout as 0.
    table = [[1.0], [0.0], [0.0], [None]]
    rollouts, step, _ = one_step(monkeypatch, tmp_path / "run", policy, table, "normalize_then_sum")
    got = [r["advantage"] for r in rollouts]
    assert got == pytest.approx(list(advantages(table, [1.0], 4)), abs=1e-4)
    assert got == pytest.approx([1.1547, -0.5773, -0.5773, 0.0], abs=1e-3)
    assert step["left_out"] == 1


@pytest.mark.engine
def test_grpo_leaves_a_rollout_whose_reward_failed_out_of_its_group_inside_trl(monkeypatch, tmp_path, policy):
    # The example: TRL alone sums the failed reward as 0 and gives [-1.14, .41, .73].
    table = [[None, 1.0], [0.5, 1.0], [0.6, 1.0]]
    rollouts, step, told = one_step(monkeypatch, tmp_path / "run", policy, table, "sum_then_normalize")
    got = [r["advantage"] for r in rollouts]
    assert got == pytest.approx(list(advantages(table, [1.0, 1.0], 3, "sum_then_normalize")), abs=1e-4)
    assert got[0] == 0.0 and got[1] == pytest.approx(-got[2], abs=1e-4) and got[2] == pytest.approx(0.706, abs=1e-3)
    # the logs keep the rewards as scored, and count the rollout left out
    logged = [list(r["rewards"].values()) for r in rollouts]
    assert logged[0] == [None, 1.0]
    for row, scored in zip(logged[1:], table[1:], strict=True):
        assert row == pytest.approx(scored)  # float32 in TRL's table
    assert step["left_out"] == 1 and step["rewards"]["first_reward"]["mean"] == pytest.approx(0.55)
    # the toy recipe verifies facts against text alone: said once at the start, and on every steps.jsonl line
    assert len(told) == 1 and step["precision_verified_by"] == "reference caption (text only)"
