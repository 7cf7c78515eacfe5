"""Engine specs: ENGINE:MODEL with KEY=VALUE options, YAML spec files, and the checks on them."""

from __future__ import annotations

import pytest

from capbench.engines import build_engine, parse_engine
from capbench.errors import ConfigError


def test_options_are_read_as_yaml_scalars_and_a_base_url_is_added():
    spec = parse_engine(
        "vllm:Qwen/Qwen2.5-VL-7B-Instruct",
        ["tensor_parallel_size=2", "enforce-eager=true", "dtype=bfloat16", "max_model_len=null"],
    )
    assert (spec.backend, spec.model, spec.label) == (
        "vllm",
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "vllm:Qwen/Qwen2.5-VL-7B-Instruct",
    )
    assert spec.options == {
        "tensor_parallel_size": 2,
        "enforce_eager": True,
        "dtype": "bfloat16",
        "max_model_len": None,
    }
    served = parse_engine("openai:judge", base_url="http://a:8000/v1,http://b:8000/v1")
    assert served.options == {"base_url": "http://a:8000/v1,http://b:8000/v1"}


def test_a_yaml_file_names_the_engine_and_the_command_line_overrides_it(tmp_path):
    path = tmp_path / "judge.yaml"
    path.write_text(
        "engine: openai\nmodel: Qwen/Qwen2.5-72B-Instruct\noptions:\n"
        "  base_url: [http://n1:8000/v1, http://n2:8000/v1]\n  concurrency: 32\n"
    )
    spec = parse_engine(str(path), ["concurrency=4"])
    assert spec.label == "openai:Qwen/Qwen2.5-72B-Instruct"
    assert spec.options == {"base_url": ["http://n1:8000/v1", "http://n2:8000/v1"], "concurrency": 4}
    assert spec.to_dict() == {"engine": "openai", "model": "Qwen/Qwen2.5-72B-Instruct", "options": spec.options}


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("vllm", [], "not ENGINE:MODEL"),  # no model
        ("nope:model", [], "unknown engine 'nope'"),
        ("openai:m", ["api_key=sk-123"], "looks like a secret"),  # keys come from the environment
        ("openai:m", ["auth_token=abc"], "looks like a secret"),
        ("openai:m", ["concurrency"], "not KEY=VALUE"),
    ],
)
def test_bad_specs_say_what_to_change(text, options, message):
    with pytest.raises(ConfigError, match=message):
        parse_engine(text, options)


def test_api_key_env_names_a_variable_and_is_allowed():
    assert parse_engine("openai:m", ["api_key_env=MY_KEY"]).options == {"api_key_env": "MY_KEY"}


def test_a_broken_yaml_file_is_named(tmp_path):
    path = tmp_path / "judge.yaml"
    path.write_text("engine: openai\n")
    with pytest.raises(ConfigError, match=r"judge.yaml: an engine spec file needs 'engine' and 'model'"):
        parse_engine(str(path))
    path.write_text("engine: openai\nmodel: m\nmodle_options: {}\n")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_engine(str(path))


def test_an_option_the_engine_does_not_take_is_refused_with_the_list():
    with pytest.raises(
        ConfigError, match=r"engine 'openai' takes no option tensor_parallel_size; its options: base_url"
    ):
        build_engine(parse_engine("openai:m", ["tensor_parallel_size=2"]))
