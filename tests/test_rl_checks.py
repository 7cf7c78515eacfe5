"""`capbench-rl train` refuses, in one line and before anything loads, a recipe a real run could only fail on.

Also: a benchmark's images and data come from recipe fields; TRL's vLLM-version warning is said
once, and only when the recipe uses TRL's vLLM; the embedded judge's OpenMP threads do not spin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import one_line_error

from capbench.errors import ConfigError, InputError
from capbench_rl.cli import main
from capbench_rl.recipe import load_recipe


def dry_run(*overrides: str, config: str = "toy-cpu"):
    args = ["train", "--config", config, "--dry-run"]
    for item in overrides:
        args += ["--set", item]
    return CliRunner().invoke(main, args)


# --- the policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("REPLACE-ME", ["model 'REPLACE-ME' is a placeholder", "--set model="]),  # the toy recipe's own
        ("path/to/your-model", ["placeholder"]),  # a documentation path copied as it is
        ("<model>", ["placeholder"]),
        ("/no/such/checkpoint", ["recipe field model: model folder /no/such/checkpoint not found", "hub id"]),
        ("./ckpt/step-9", ["model folder ./ckpt/step-9 not found"]),  # relative, starting with ./: a path
        ("runs/a/checkpoint-9", ["not found"]),  # two slashes: not org/name
    ],
)
def test_a_placeholder_or_missing_model_path_is_refused(model, words):
    one_line_error(dry_run(f"model={model}"), *words)


def test_a_model_that_is_a_file_is_refused_and_hub_ids_and_folders_pass(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    one_line_error(dry_run(f"model={tmp_path / 'weights.bin'}"), "is a file, not a model folder")
    for model in ("Qwen/Qwen2.5-VL-3B-Instruct", "gpt2", str(tmp_path)):  # offline, a hub id is taken on trust
        result = dry_run(f"model={model}")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["model"] == model


# --- typed fields -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("max_steps=abc", ["recipe field max_steps must be an integer, not 'abc'", "--set max_steps=10"]),
        ("use_cpu=maybe", ["use_cpu must be true or false"]),
        ("limit=2.5", ["limit must be an integer or null"]),
        ("num_generations=three", ["num_generations must be an integer"]),  # was a TypeError traceback
        ("rewards={balcap_precision: high}", ["rewards must be a mapping of names to numbers"]),
        ("judge_options=n_ctx=2048", ["judge_options must be a list of strings"]),
        ("aggregation=mean", ["aggregation must be one of normalize_then_sum, sum_then_normalize"]),
        ("trl=[use_vllm]", ["trl must be a mapping"]),
        ("learning_rate=fast", ["learning_rate must be a number"]),
    ],
)
def test_a_value_of_the_wrong_type_names_its_field(override, words):
    one_line_error(dry_run("model=org/name", override), *words)


def test_a_number_yaml_reads_as_text_is_taken_as_the_number():
    result = dry_run("model=org/name", "learning_rate=1e-6", "num_train_epochs=2")  # PyYAML: '1e-6' is a string
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["learning_rate"] == 1e-6 and shown["num_train_epochs"] == 2


# --- judges -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["judge=nosuch:x"], ["recipe field judge: unknown engine 'nosuch'", "llamacpp"]),
        (["judge=smollm2"], ["recipe field judge", "not ENGINE:MODEL"]),
        (
            ["judge_options=[n_thread=1]"],
            ["recipe field judge: engine 'llamacpp' takes no option n_thread", "n_threads"],
        ),
        (["judge_options=[api_key=sk-1]", "judge=openai:m"], ["judge", "looks like a secret"]),
        (["vision_judge=hff:Qwen/Qwen2.5-VL-7B-Instruct"], ["recipe field vision_judge: unknown engine 'hff'"]),
    ],
)
def test_a_bad_judge_spec_is_refused_before_anything_loads(overrides, words):
    one_line_error(dry_run("model=org/name", *overrides), *words)


# --- what caption facts are verified against ------------------------------------------------------

PAPER_RECIPES = ("balcaprl-qwen2.5-vl-3b", "balcaprl-qwen2.5-vl-7b", "balcaprl-llava-1.5-7b")


@pytest.mark.filterwarnings("ignore:trl.use_vllm is set")  # the recipes' vLLM rollouts, with this vLLM
@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_verify_precision_with_a_served_vision_judge_and_dry_run_offline(name, tmp_path, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the dry run reached for a server")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    data = tmp_path / "train.jsonl"
    data.write_text("")
    result = dry_run(f"data_file={data}", config=name)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["vision_judge"] == "openai:Qwen/Qwen2.5-VL-72B-Instruct" and not shown["text_only_precision"]
    assert "base_url=http://localhost:8001/v1" in shown["vision_judge_options"]
    assert load_recipe(name).precision_verified_by() == "image"


def test_facts_verified_against_the_reference_caption_alone_need_an_explicit_opt_in(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("")
    one_line_error(
        dry_run(f"data_file={data}", "vision_judge=null", config=PAPER_RECIPES[0]),
        "reward balcap_precision verifies caption facts against the image",
        "set vision_judge",
        "text_only_precision: true",
    )
    recipe = load_recipe(PAPER_RECIPES[0], ["vision_judge=null", "text_only_precision=true"])
    assert recipe.precision_verified_by() == "reference caption (text only)"
    assert load_recipe("toy-cpu", ["model=m"]).text_only_precision  # the embedded judge cannot see images
    for rewards in ("{dcscore: 1}", "{balcap_recall: 1}"):  # every reward that verifies facts
        one_line_error(dry_run("model=org/name", "text_only_precision=false", f"rewards={rewards}"), "verifies")
    result = dry_run("model=org/name", "text_only_precision=false", "rewards={caprl_qa_utility: 1}")
    assert result.exit_code == 0, result.output  # no fact to verify: nothing to opt in to
    assert load_recipe("toy-cpu", ["model=m", "rewards={caprl_qa_utility: 1}"]).precision_verified_by() is None
    one_line_error(
        dry_run("model=org/name", "vision_judge=llamacpp:smollm2"),
        "recipe field vision_judge: engine 'llamacpp' cannot see images",
    )


# --- enumerated fields, and TRL's version ---------------------------------------------------------


def _enumerated() -> list[tuple[str, tuple[str, ...]]]:
    import typing

    from capbench_rl.recipe import Recipe

    hints = typing.get_type_hints(Recipe)
    return [(n, typing.get_args(h)) for n, h in hints.items() if typing.get_origin(h) is typing.Literal]


def test_every_enumerated_recipe_field_is_checked_when_the_recipe_loads():
    enumerated = dict(_enumerated())
    names = {"fact_protocol", "aggregation", "length_unit", "qa_answer_mode", "eval_engine", "reward_service_images"}
    assert set(enumerated) == names
    for name, values in enumerated.items():
        typo = "normalise_then_sum" if name == "aggregation" else values[0] + "s"
        with pytest.raises(ConfigError, match=f"recipe field {name} must be one of {', '.join(values)}, not"):
            load_recipe("toy-cpu", ["model=m", f"{name}={typo}"])


TRL_ENUMERATED = ("scale_rewards", "loss_type", "importance_sampling_level", "vllm_mode", "vllm_model_impl",
                  "vllm_importance_sampling_mode")  # fmt: skip


@pytest.mark.parametrize("key", TRL_ENUMERATED)
def test_enumerated_trl_settings_that_trl_checks_late_are_checked_first(key):
    from dataclasses import fields

    from trl import GRPOConfig

    from capbench_rl.checks import TRL_CHOICES

    assert key in {f.name for f in fields(GRPOConfig)}
    valid = ", ".join(str(v).lower() for v in TRL_CHOICES[key])
    one_line_error(dry_run("model=org/name", f"trl={{{key}: typo}}"), f"trl.{key} must be one of {valid}, not 'typo'")
    # TRL itself takes the typo, and fails only where it uses it
    GRPOConfig(output_dir="unused", use_cpu=True, report_to=[], **{key: "typo"})


def test_a_trl_older_than_the_declared_lowest_is_refused_in_one_line(monkeypatch, tmp_path):
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.5.1" if name == "trl" else real(name))
    one_line_error(dry_run("model=org/name"), "TRL 1.5.1 is older than capbench-rl supports", "trl>=1.16")
    result = CliRunner().invoke(main, ["train", "--config", "toy-cpu", "--set", "model=org/name",
                                       "--set", f"output_dir={tmp_path / 'run'}"])  # fmt: skip
    one_line_error(result, "TRL 1.5.1")
    assert not (tmp_path / "run").exists()


# --- TRL's settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trl", "words"),
    [
        ("{nosuch_field: 1}", ["trl.nosuch_field is not a GRPOConfig field"]),
        (
            "{gradient_acumulation_steps: 4}",
            ["trl.gradient_acumulation_steps", "did you mean gradient_accumulation_steps"],
        ),
        ("{max_steps: 3}", ["trl.max_steps is a recipe field", "--set max_steps="]),  # was a TypeError traceback
        ("{reward_weights: [1, 2]}", ["trl.reward_weights cannot be set", "rewards"]),
    ],
)
def test_unknown_or_doubled_trl_fields_are_refused_with_close_matches(trl, words):
    one_line_error(dry_run("model=org/name", f"trl={trl}"), *words)


def test_report_to_passes_through_to_trl_and_a_tracker_not_installed_is_named(monkeypatch):
    import transformers.integrations

    from capbench_rl.train import trl_config

    # a tracker this machine lacks: one line naming the package, before anything loads
    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: [])
    one_line_error(dry_run("model=org/name", "trl={report_to: [tensorboard]}"), "trl.report_to names 'tensorboard'",
                   "pip install tensorboard")  # fmt: skip
    one_line_error(dry_run("model=org/name", "trl={report_to: 3}"), "trl.report_to must be a tracker name")
    # an installed one is handed to TRL as it is; none by default
    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: ["tensorboard"])
    assert dry_run("model=org/name", "trl={report_to: [tensorboard]}").exit_code == 0
    recipe = load_recipe("toy-cpu", ["model=org/name", "trl={report_to: [tensorboard]}"])
    assert trl_config(recipe, [1.0] * len(recipe.rewards)).report_to == ["tensorboard"]
    default = load_recipe("toy-cpu", ["model=org/name"])
    assert trl_config(default, [1.0] * len(default.rewards)).report_to in ([], ["none"], "none")


def test_good_trl_fields_pass_the_dry_run():
    result = dry_run("model=org/name", "trl={gradient_accumulation_steps: 2, scale_rewards: group}")
    assert result.exit_code == 0, result.output


def test_the_real_run_checks_before_loading_anything(tmp_path, monkeypatch):
    from capbench_rl import train as train_module

    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded something before the recipe was checked")

    monkeypatch.setattr(train_module, "dataset", must_not_load)
    monkeypatch.setattr(train_module, "build_trainer", must_not_load)
    out = tmp_path / "run"
    for override, words in (("trl={nosuch_field: 1}", "trl.nosuch_field"), ("judge=nosuch:x", "judge")):
        result = CliRunner().invoke(
            main, ["train", "--config", "toy-cpu", "--set", "model=org/name", "--set", override,
                   "--set", f"output_dir={out}"],
        )  # fmt: skip
        one_line_error(result, words)
    assert not out.exists()  # not even the output folder
    recipe = load_recipe("toy-cpu", ["model=REPLACE-ME", f"output_dir={out}"])
    with pytest.raises(ConfigError, match="placeholder"):  # train() itself checks, for scripts that call it
        train_module.train(recipe)
    assert not out.exists()


# --- where a benchmark's images and data are -----------------------------------------------------


def _decapbench_fixture(folder: Path) -> Path:
    """Two DeCapBench lines in its reference format, with their images."""
    from PIL import Image

    lines = []
    for index, colour in enumerate(("red", "blue")):
        name = f"aar_test_{index:05d}.jpg"
        Image.new("RGB", (16, 16), colour).save(folder / name)
        lines.append(
            {"image_name": name, "oracle_caption": f"A {colour} square.", "oracle_facts": [f"It is {colour}."]}
        )
    data = folder / "decapbench.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return data


def test_a_benchmarks_images_and_data_file_come_from_recipe_fields(tmp_path):
    from capbench_rl.data import rows

    data = _decapbench_fixture(tmp_path)
    base = ["model=m", "benchmark=decapbench", f"benchmark_file={data}", "rewards={balcap_precision: 1}", "limit=null"]
    got = rows(load_recipe("toy-cpu", [*base, f"images_dir={tmp_path}"]))
    assert [r["sample_id"] for r in got] == ["aar_test_00000.jpg", "aar_test_00001.jpg"]
    assert got[1]["image_path"] == str(tmp_path / "aar_test_00001.jpg") and got[1]["reference_facts"] == ["It is blue."]
    # without images_dir: the error names the recipe field, not `capbench eval`'s --images-dir
    with pytest.raises(ConfigError, match="pass recipe field images_dir") as caught:
        rows(load_recipe("toy-cpu", base))
    assert "--images-dir" not in str(caught.value)
    (tmp_path / "aar_test_00001.jpg").unlink()
    with pytest.raises(InputError, match=r"aar_test_00001.jpg: image missing; recipe field images_dir must hold"):
        rows(load_recipe("toy-cpu", [*base, f"images_dir={tmp_path}"]))


def test_benchmark_fields_a_loader_does_not_take_or_that_are_not_there_are_named(tmp_path):
    from capbench_rl.data import rows

    with pytest.raises(ConfigError, match="benchmark 'mini' takes no recipe field images_dir"):
        rows(load_recipe("toy-cpu", ["model=m", f"images_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"pass recipe field benchmark_file caparena_auto_600\.json"):
        rows(load_recipe("toy-cpu", ["model=m", "benchmark=caparena"]))
    one_line_error(
        dry_run("model=org/name", f"images_dir={tmp_path / 'nope'}"), "recipe field images_dir", "no such folder"
    )
    one_line_error(dry_run("model=org/name", f"benchmark_file={tmp_path / 'x.json'}"), "recipe field benchmark_file")
    one_line_error(
        dry_run("model=org/name", "benchmark=captionqa", f"dataset={tmp_path / 'cqa'}"), "recipe field dataset"
    )
    one_line_error(dry_run("model=org/name", f"eval_images_dir={tmp_path / 'nope'}"), "recipe field eval_images_dir")
    one_line_error(dry_run("model=org/name", "benchmark=minni"), "benchmark 'minni' is unknown")
    one_line_error(
        dry_run("model=org/name", "benchmark=null", f"data_file={tmp_path / 'x.jsonl'}"), "recipe field data_file"
    )
    with pytest.raises(ConfigError, match="images_dir go with benchmark, not data_file"):
        load_recipe("toy-cpu", ["model=m", "benchmark=null", "data_file=x.jsonl", f"images_dir={tmp_path}"])


def test_the_checkpoint_evaluation_gets_the_held_out_images(tmp_path):
    from capbench_rl.evaluate import eval_config

    recipe = load_recipe("toy-cpu", ["model=m", "eval_benchmark=decapbench", f"eval_images_dir={tmp_path}"])
    config = eval_config(recipe, tmp_path / "checkpoint-2", "checkpoint-2")
    assert config.benchmark_options["images_dir"] == str(tmp_path)


# --- TRL's vLLM-version warning, and the judge's OpenMP threads -----------------------------------


def _capbench_rl(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run capbench-rl in a process of its own (TRL's warnings are issued once per process, at import)."""
    code = "import sys; from capbench_rl.cli import main; main(sys.argv[1:])"
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environment.update(HF_HUB_OFFLINE="1", **env)
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=600
    )


@pytest.mark.cli
def test_trls_vllm_version_warning_is_not_printed_unless_the_recipe_uses_trls_vllm(tmp_path):
    # A real run, as far as it goes offline: GRPOTrainer is imported (TRL warned five times there),
    # the data is built, and the policy (a hub id) cannot be reached: one line, no warning.
    done = _capbench_rl(["train", "--config", "toy-cpu", "--set", "model=org/name"], tmp_path)
    assert done.returncode == 1, done.stderr
    assert "cannot load the policy 'org/name'" in done.stderr
    assert "supports vLLM" not in done.stderr + done.stdout
    # a recipe that asks for TRL's vLLM hears it once, in capbench-rl's words
    trl = "trl={use_vllm: true, vllm_mode: colocate}"
    done = _capbench_rl(
        ["train", "--config", "toy-cpu", "--set", "model=org/name", "--set", trl, "--dry-run"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    import warnings

    from trl.import_utils import is_vllm_available

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        is_vllm_available()
    if not any("supports vLLM" in str(w.message) for w in caught):
        return  # no vLLM, or one TRL supports: TRL has nothing to warn about
    assert done.stderr.count("supports vLLM") == 1 and "trl.use_vllm is set" in done.stderr, done.stderr


@pytest.mark.cli
def test_capbench_rl_makes_openmp_threads_wait_passively_unless_told(tmp_path):
    # libgomp prints its settings when it loads (OMP_DISPLAY_ENV): torch loads it as the trl check imports it.
    # Unset, libgomp spins 300000 times at a barrier before sleeping (and shows 'PASSIVE'); set, not at all.
    args = ["train", "--config", "toy-cpu", "--set", "model=org/name", "--set", "trl={scale_rewards: group}"]
    args.append("--dry-run")
    done = _capbench_rl(args, tmp_path, OMP_DISPLAY_ENV="VERBOSE")
    assert done.returncode == 0, done.stderr
    assert "GOMP_SPINCOUNT = '0'" in done.stderr, done.stderr[-2000:]
    done = _capbench_rl(args, tmp_path, OMP_DISPLAY_ENV="VERBOSE", OMP_WAIT_POLICY="ACTIVE")  # the user's choice stands
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in done.stderr, done.stderr[-2000:]


def _cases(test) -> list[str]:
    """The first argument of each case a parametrized test runs."""
    [mark] = [m for m in test.pytestmark if m.name == "parametrize"]
    return [str(case[0]) for case in mark.args[1]]


#: The kinds of bad input this file covers (counted in benchmarks/results/robustness.md).
KINDS = (
    *(f"model {m}" for m in _cases(test_a_placeholder_or_missing_model_path_is_refused)),
    "model that is a file",
    *_cases(test_a_value_of_the_wrong_type_names_its_field),
    *_cases(test_a_bad_judge_spec_is_refused_before_anything_loads),
    *(f"trl={t}" for t in _cases(test_unknown_or_doubled_trl_fields_are_refused_with_close_matches)),
    "benchmark images missing (no images_dir)",
    "an image missing from images_dir",
    "images_dir for a benchmark that takes none",
    "benchmark_file missing for caparena",
    "images_dir that does not exist",
    "benchmark_file that does not exist",
    "dataset folder that does not exist",
    "eval_images_dir that does not exist",
    "unknown benchmark",
    "data_file that does not exist",
    "images_dir beside data_file",
    "facts verified against text without text_only_precision",
    "a vision judge that cannot see images",
    # (aggregation's typo is counted above, with the values of the wrong type)
    *(f"recipe field {name} misspelt" for name in ("fact_protocol", "length_unit", "qa_answer_mode", "eval_engine")),
    *(f"trl.{key} misspelt" for key in TRL_ENUMERATED),
    "TRL older than the declared lowest",
)
