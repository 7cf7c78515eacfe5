"""`capbench-rl train` for real on the CPU: a tiny random Qwen2.5-VL, the embedded judge, capbench-mini."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from capbench.data import load_benchmark
from capbench.errors import ConfigError
from capbench_rl.advantages import advantages
from capbench_rl.cli import main
from capbench_rl.recipe import load_recipe
from capbench_rl.rewards import length_ratio


def test_recipes_load_and_bad_ones_say_what_to_fix(tmp_path):
    for name in ("toy-cpu", "balcaprl-qwen2.5-vl-3b", "balcaprl-qwen2.5-vl-7b", "balcaprl-llava-1.5-7b"):
        assert load_recipe(name).aggregation == "normalize_then_sum"
    recipe = load_recipe("toy-cpu", ["max_steps=5", "length_band=null", "aggregation=sum_then_normalize"])
    assert (recipe.max_steps, recipe.length_band, recipe.aggregation) == (5, None, "sum_then_normalize")
    with pytest.raises(ConfigError, match="unknown recipe key"):
        load_recipe("toy-cpu", ["max_stpes=5"])
    with pytest.raises(ConfigError, match="choose from"):
        load_recipe("toy-cpu", ["rewards={fluency: 1.0}"])
    with pytest.raises(ConfigError, match="length_band"):
        load_recipe("toy-cpu", ["length_band=[2, 1]"])
    with pytest.raises(ConfigError, match="no bundled recipe"):
        load_recipe("nope")


def test_a_policy_that_cannot_load_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["train", "--config", "toy-cpu", "--set", f"model={tmp_path / 'no-such-model'}",
                                       "--set", f"output_dir={tmp_path / 'run'}"])  # fmt: skip
    assert result.exit_code == 1 and "cannot load the policy" in result.output
    assert "Traceback" not in result.output


@pytest.mark.engine
def test_two_training_steps_log_trl_advantages_equal_to_cgdpo_and_the_masked_share(tmp_path):
    from tiny_models import build_tiny_qwen25vl

    model = build_tiny_qwen25vl(tmp_path / "tiny-qwen2.5-vl")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--config", "toy-cpu", "--set", f"model={model}",
                                       "--set", f"output_dir={out}"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    names = ["balcap_precision", "balcap_recall", "balcap_linguistic", "length_penalty_reward"]
    references = {s.reference_caption for s in load_benchmark("mini").samples[:2]}
    for step in (1, 2):
        batch = [r for r in rollouts if r["step"] == step]
        assert len(batch) == 3  # one prompt, a group of 3 rollouts
        table = [[r["rewards"][n] for n in names] for r in batch]
        # what TRL logged is c-GDPO computed by hand from the logged rewards
        expected = advantages(table, [1.0, 1.0, 1.0, 0.5], 3, "normalize_then_sum")
        assert any(abs(a) > 0.1 for a in expected)  # the check has something to check
        assert [r["advantage"] for r in batch] == pytest.approx(list(expected), abs=1e-4)
        # 8-token babble against 100-200-word references: every rollout is masked
        assert all(length_ratio(r["completion"], min(references, key=len)) < 0.5 for r in batch)
        assert all(r["rewards"]["balcap_linguistic"] == 0.0 for r in batch)
        figures = steps[step - 1]["rewards"]
        judge = steps[step - 1]["judge"]
        assert judge["calls"] > 0 and judge["cache_hits"] > 0  # precision's calls answer recall from the cache
        assert figures["balcap_linguistic"]["masked_share"] == 1.0 and figures["balcap_linguistic"]["rollouts"] == 3
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["model"] == str(model) and recipe["aggregation"] == "normalize_then_sum"
