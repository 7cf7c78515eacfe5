"""`capbench-rl train` for real on the CPU: a tiny random Qwen2.5-VL, the embedded judge, capbench-mini."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from capbench.data import load_benchmark
from capbench.errors import ConfigError, InputError
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
    with pytest.raises(ConfigError, match="eval_benchmark 'minni' is unknown"):
        load_recipe("toy-cpu", ["eval_benchmark=minni"])
    with pytest.raises(ConfigError, match=r"eval_metrics \['bleu'\]: choose from captionqa"):
        load_recipe("toy-cpu", ["eval_metrics=[caprl, bleu]"])


def test_a_policy_that_cannot_load_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for model, words in (
        (tmp_path / "no-such-model", "not found"),  # refused before anything loads
        (tmp_path / "empty", "cannot load the policy"),  # a folder without a checkpoint (was a ValueError traceback)
    ):
        result = CliRunner().invoke(main, ["train", "--config", "toy-cpu", "--set", f"model={model}",
                                           "--set", f"output_dir={tmp_path / 'run'}"])  # fmt: skip
        assert result.exit_code == 1 and words in result.output, result.output
        assert "Traceback" not in result.output and result.output.count("\n") == 1


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
    names = ["balcap_precision", "balcap_recall", "balcap_linguistic", "caprl_qa_utility", "length_penalty_reward"]
    references = {s.reference_caption for s in load_benchmark("mini").samples[:2]}
    mini_ids = {s.id for s in load_benchmark("mini").samples[:2]}
    for step in (1, 2):
        batch = [r for r in rollouts if r["step"] == step]
        assert len(batch) == 3  # one prompt, a group of 3 rollouts
        assert len({r["sample_id"] for r in batch}) == 1 and batch[0]["sample_id"] in mini_ids  # its image's id
        table = [[r["rewards"][n] for n in names] for r in batch]
        # what TRL logged is c-GDPO computed by hand from the logged rewards
        expected = advantages(table, [1.0, 1.0, 1.0, 1.0, 0.5], 3, "normalize_then_sum")
        assert any(abs(a) > 0.1 for a in expected)  # the check has something to check
        assert [r["advantage"] for r in batch] == pytest.approx(list(expected), abs=1e-4)
        # 8-token babble against 100-200-word references: every rollout is masked
        assert all(length_ratio(r["completion"], min(references, key=len)) < 0.5 for r in batch)
        assert all(r["rewards"]["balcap_linguistic"] == 0.0 for r in batch)
        figures = steps[step - 1]["rewards"]
        judge = steps[step - 1]["judge"]
        assert judge["calls"] > 0 and judge["cache_hits"] > 0  # precision's calls answer recall from the cache
        assert figures["balcap_linguistic"]["masked_share"] == 1.0 and figures["balcap_linguistic"]["rollouts"] == 3
        caprl = [r["rewards"]["caprl_qa_utility"] for r in batch]
        assert figures["caprl_qa_utility"]["mean"] == pytest.approx(sum(caprl) / 3)
        assert steps[step - 1]["caption_words"]["mean"] == pytest.approx(
            sum(len(r["completion"].split()) for r in batch) / 3
        )
        # CapRL's utility scored every rollout (4 draws each: a multiple of 1/4)
        assert all(r["rewards"]["caprl_qa_utility"] in (0.0, 0.25, 0.5, 0.75, 1.0) for r in batch)
        # where the step's time went: measured phases that add up to the step
        phases = steps[step - 1]["phases"]
        assert phases["generation"] > 0 and phases["rewards"] > 0 and phases["update"] > 0
        parts = phases["generation"] + phases["rewards"] + phases["rollout_other"] + phases["update"]
        assert parts == pytest.approx(steps[step - 1]["step_seconds"], abs=0.01)
        assert phases["reward_overlap"] == 0.0  # TRL scores rollouts after generating them
    # the checkpoint of step 2 was scored by `capbench eval`, beside the training metrics
    [evaluation] = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert "error" not in evaluation, evaluation
    assert evaluation["step"] == 2 and evaluation["checkpoint"].endswith("checkpoint-2")
    assert evaluation["samples"] == 1 and evaluation["generation"]["generated"] == 1
    utility = evaluation["metrics"]["caprl"]["score"]
    assert 0.0 <= utility <= 100.0 and utility * 4 / 100 == int(utility * 4 / 100)  # 4 draws
    for state in (out / "checkpoint-2" / "trainer_state.json", out / "trainer_state.json"):
        history = json.loads(state.read_text())["log_history"]
        assert any("loss" in entry for entry in history)
        assert [e["eval/caprl"] for e in history if "eval/caprl" in e] == [utility]  # beside the training metrics
    [example] = evaluation["examples"]  # eval_log_samples 4 of the 1 held-out image: it, from the child process
    assert example["sample_id"] == load_benchmark("mini").samples[0].id and Path(example["image"]).is_file()
    assert example["values"]["caprl/utility"] == utility
    state = json.loads((out / "eval" / "mini" / "checkpoint-2" / "manifest.json").read_text())
    assert state["metrics"]["caprl"]["config"]["samples"] == 4
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["model"] == str(model) and recipe["aggregation"] == "normalize_then_sum"


def test_training_rows_carry_questions_and_qa_rewards_need_them(tmp_path):
    from PIL import Image

    from capbench_rl.data import rows

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    lines = [
        {"id": "a", "image": "a.png", "caption": "A black square.",
         "questions": [{"question": "What colour?", "choices": ["black", "white"], "answer": "black"}]},
        {"image": "a.png", "caption": "Dark."},
    ]  # fmt: skip
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    recipe = load_recipe("toy-cpu", ["model=m", "benchmark=null", f"data_file={data}", "limit=null"])
    with pytest.raises(
        ConfigError, match=r"caprl_qa_utility asks questions .* 1 training sample\(s\) have none \(line-2\)"
    ):
        rows(recipe)
    plain = rows(load_recipe("toy-cpu", ["model=m", "benchmark=null", f"data_file={data}", "rewards={dcscore: 1}"]))
    assert [r["sample_id"] for r in plain] == ["a", "line-2"]
    assert plain[0]["questions"] == [
        {"id": "1-0", "question": "What colour?", "choices": ["black", "white"], "answer": "black", "category": ""}
    ]
    data.write_text(json.dumps({**lines[0], "questions": [{"question": "Q?", "choices": ["x", "y"], "answer": "z"}]}))
    with pytest.raises(InputError, match=r"train.jsonl:1: .*answer 'z' is not one of its choices"):
        rows(recipe)
    mini = rows(load_recipe("toy-cpu", ["model=m"]))
    assert len(mini) == 2 and all(len(r["questions"]) >= 10 for r in mini)


def test_the_checkpoint_evaluation_carries_the_recipes_protocol(tmp_path):
    from capbench_rl.evaluate import eval_config

    recipe = load_recipe("toy-cpu", ["model=m", f"output_dir={tmp_path}", "judge_options=[n_ctx=2048]",
                                     "eval_split=natural", "eval_metrics=[caprl, balcap]",
                                     "eval_model_options=[max_pixels=65536]"])  # fmt: skip
    config = eval_config(recipe, tmp_path / "checkpoint-7", "checkpoint-7")
    assert config.model == str(tmp_path / "checkpoint-7") and config.engine == "hf"
    assert list(config.metrics) == ["caprl", "balcap"] and config.caprl_samples == 4
    assert config.answer_mode == "loglik" and config.caption_max_tokens == 8
    assert list(config.judge_options) == ["n_ctx=2048"] and config.benchmark_options == {"split": "natural"}
    assert config.limit == 1 and list(config.model_options) == ["max_pixels=65536"]
    assert config.regenerate and config.overwrite and config.name == "checkpoint-7"
    assert config.results_dir == str(tmp_path / "eval")
    # the settings cross the process boundary as plain data and come back the same
    import capbench

    assert capbench.EvalConfig.from_dict(config.to_dict()) == capbench.EvalConfig.from_dict(config.to_dict())
    assert capbench.EvalConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


@pytest.mark.parametrize(
    ("first", "second", "seconds"),
    [
        ([(0.0, 2.0)], [(2.0, 3.0)], 0.0),  # one after the other
        ([(0.0, 2.0)], [(1.5, 3.0)], 0.5),  # half a second together
        ([(0.0, 1.0), (2.0, 4.0)], [(0.5, 2.5)], 1.0),  # across two calls
    ],
)
def test_overlap_of_intervals(first, second, seconds):
    from capbench_rl.timing import overlap

    assert overlap(first, second) == pytest.approx(seconds)


def test_phase_timer_times_the_wrapped_methods_and_derives_the_update(monkeypatch):
    from capbench_rl import timing

    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def work(seconds):
        clock[0] += seconds

    class Trainer:
        def _generate(self):
            work(2.0)

        def _calculate_rewards(self):
            work(3.0)

        def _generate_and_score_completions(self):
            work(0.5)
            self._generate()
            self._calculate_rewards()
            work(0.5)

    trainer = Trainer()
    timer = timing.PhaseTimer(trainer)
    trainer._generate_and_score_completions()
    phases = timer.take(step_seconds=10.0)
    assert phases == {"generation": 2.0, "rewards": 3.0, "rollout_other": 1.0, "update": 4.0, "reward_overlap": 0.0,
                      "prefetch": 0.0, "prefetch_during_generation": 0.0}  # fmt: skip
    assert timer.take(0.0)["generation"] == 0.0  # taken figures are forgotten

    class OtherTRL:  # a TRL without these methods: a warning, and no split instead of a wrong one
        pass

    with pytest.warns(UserWarning, match="not timed"):
        blind = timing.PhaseTimer(OtherTRL())
    assert set(blind.take(1.0).values()) == {None}
