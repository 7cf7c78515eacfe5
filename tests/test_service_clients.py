"""Clients of the reward service: TRL's reward function, verl's reward functions, `capbench-rl train` pointed at it.

They run against a stand-in for `capbench serve` on 127.0.0.1 (``StandIn``), which answers the
contract's recorded request and response shapes (docs/rl.md, "Rewards from a service") from a
script and records every request, so each test can check what was sent and what came back.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import inspect
import json
import logging
import math
import pickle
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_line_error

from capbench.errors import ConfigError
from capbench_rl import service_client as S
from capbench_rl import verl_reward as V
from capbench_rl.cli import main
from capbench_rl.recipe import load_recipe

#: A response of the service as the contract records it: one result per item, a failure named, never 0.
RECORDED_RESPONSE = {
    "results": [
        {"id": "img-1", "rewards": {"balcap_precision": 0.75}, "errors": {}},
        {"id": "img-1", "rewards": {"balcap_precision": None}, "errors": {"balcap_precision": "judge timed out"}},
    ],
    "usage": {"judge_calls": 7, "cache_hits": 2, "failures": 1, "seconds": 0.4},
}
Reply = tuple[int, dict[str, str], Any]


class StandIn:
    """A stand-in for `capbench serve`: scripted replies first, then every item scored by ``value``.

    ``value(item, reward)`` gives a float, or None for a failure (named "judge failed").
    """

    def __init__(self, rewards: tuple[str, ...] = ("balcap_precision", "balcap_recall", "balcap_linguistic")) -> None:
        self.rewards = rewards
        self.script: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self.value: Callable[[dict[str, Any], str], float | None] = lambda item, reward: 0.5
        self.health: Reply = (200, {}, {"status": "ok", "rewards": list(rewards)})
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stand_in.requests.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
                self._send(*stand_in.health)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers),
                                          "body": body})  # fmt: skip
                self._send(*(stand_in.script.pop(0) if stand_in.script else stand_in.answer(body)))

            def _send(self, status: int, headers: dict[str, str], body: Any) -> None:
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, body: dict[str, Any]) -> Reply:
        results = []
        for item in body["items"]:
            values = {r: self.value(item, r) for r in item.get("rewards", body["rewards"])}
            errors = {r: "judge failed" for r, v in values.items() if v is None}
            results.append({"id": item.get("id"), "rewards": values, "errors": errors})
        usage = {"judge_calls": len(results), "cache_hits": 0, "failures": 0, "seconds": 0.01}
        return 200, {}, {"results": results, "usage": usage}

    @property
    def posts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]

    def __enter__(self) -> StandIn:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service() -> Iterator[StandIn]:
    with StandIn() as running:
        yield running


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png(path: Path, colour: str = "red") -> Path:
    from PIL import Image

    Image.new("RGB", (8, 8), colour).save(path)
    return path


def trl_call(reward: Any, completions: list[Any], **columns: Any) -> list[float | None]:
    """Call a reward as GRPOTrainer._calculate_rewards does (TRL 1.16): its own kwargs beside the columns."""
    extra = {"completion_ids": [[1]] * len(completions), "trainer_state": object(), "log_extra": print,
             "log_metric": print}  # fmt: skip
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]] * len(
        completions
    )
    return asyncio.run(reward(prompts=prompts, completions=completions, **extra, **columns))


# --- TRL ------------------------------------------------------------------------------------------


def test_the_trl_reward_sends_items_built_from_trls_columns_and_gives_none_for_a_null(service, tmp_path):
    image = png(tmp_path / "cat.png")
    service.script = [(200, {}, RECORDED_RESPONSE)]
    reward = S.ServiceReward("balcap_precision", service.url)
    question = {"question": "What colour?", "choices": ["red", "blue"], "answer": "red", "id": None, "category": None}
    completions = [
        [{"role": "assistant", "content": "A red cat sits."}],  # conversational
        [{"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}],  # typed parts
    ]
    out = trl_call(
        reward, completions, sample_id=["img-1", "img-1"], image_path=[str(image)] * 2,
        reference_caption=["A red cat on a mat."] * 2, reference_facts=[["The cat is red."]] * 2,
        questions=[[question]] * 2, domain=["animals"] * 2, image=[None, None],
    )  # fmt: skip
    assert out == [0.75, None]  # None, not 0: TRL leaves it out
    [post] = service.posts
    assert post["path"] == "/v1/score" and post["body"]["rewards"] == ["balcap_precision"]
    first, second = post["body"]["items"]
    assert first == {
        "id": "img-1",
        "caption": "A red cat sits.",
        "image": {"path": str(image.resolve())},
        "reference_caption": "A red cat on a mat.",
        "reference_facts": ["The cat is red."],
        "questions": [{"question": "What colour?", "choices": ["red", "blue"], "answer": "red"}],  # nulls left out
        "domain": "animals",
    }
    assert second["caption"] == "A cat."
    assert "Authorization" not in post["headers"]  # no token set, none sent
    assert S.service_usage()["judge_calls"] >= 7


def test_images_go_inline_when_told_or_when_only_held_in_memory(service, tmp_path):
    from PIL import Image

    image = png(tmp_path / "a.png", "blue")
    inline = S.ServiceReward("balcap_recall", service.url, images="base64")
    trl_call(inline, ["A blue square."], image_path=[str(image)], reference_caption=["A blue square."])
    sent = service.posts[-1]["body"]["items"][0]["image"]
    assert sent == {"base64": base64.b64encode(image.read_bytes()).decode(), "format": "png"}
    # a generic GRPOTrainer dataset: a PIL image column, no path, no references: the service's benchmark by id
    by_path = S.ServiceReward("balcap_recall", service.url)
    trl_call(by_path, ["A square."], image=[Image.new("RGB", (4, 4))], sample_id=["mini-3"])
    item = service.posts[-1]["body"]["items"][0]
    assert item["image"]["format"] == "png" and item["sample_id"] == "mini-3" and "reference_caption" not in item


def test_rollouts_outside_the_length_band_get_0_without_a_rating_request(service):
    reward = S.ServiceReward("balcap_linguistic", service.url, band=(0.5, 2.0))
    reference = ["one two three four"] * 4  # 4 words: the band is 2-8 words
    captions = ["one", "one two three", "a b c d e f g h i j", "one two three four five"]
    out = trl_call(reward, captions, reference_caption=reference, sample_id=["s"] * 4)
    assert out == [0.0, 0.5, 0.0, 0.5]
    [post] = service.posts
    assert [i["caption"] for i in post["body"]["items"]] == [captions[1], captions[3]]
    assert trl_call(reward, ["x", "y"], reference_caption=reference[:2]) == [0.0, 0.0]
    assert len(service.posts) == 1  # all masked: nothing sent


def test_a_429_is_retried_after_its_retry_after_seconds(service):
    service.script = [(429, {"Retry-After": "1"}, {"detail": "queue full"})]
    start = time.monotonic()
    assert S.score(service.url, [{"caption": "x"}], ["balcap_precision"]) == [
        {"id": None, "rewards": {"balcap_precision": 0.5}, "errors": {}}
    ]
    assert time.monotonic() - start >= 1.0 and len(service.posts) == 2
    service.script = [(429, {"Retry-After": "30"}, {"detail": "queue full"})]
    with pytest.raises(S.ServiceError, match="still busy"):  # the total wait is bounded
        S.score(service.url, [{"caption": "x"}], ["balcap_precision"], max_wait=5)


def test_a_503_is_retried_with_backoff_then_answered(service):
    service.script = [(503, {}, {"detail": "restarting"}), (502, {}, b"bad gateway")]
    assert S.score(service.url, [{"caption": "x"}], ["balcap_recall"])[0]["rewards"] == {"balcap_recall": 0.5}
    assert len(service.posts) == 3
    service.script = [(500, {}, {"detail": "boom"})] * 3
    with pytest.raises(S.ServiceError, match=r"did not answer after 3 tries \(HTTP 500: boom\)"):
        S.score(service.url, [{"caption": "x"}], ["balcap_recall"], retries=2)


def test_nothing_listening_is_retried_then_named():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(S.ServiceError, match=f"the reward service at {url} did not answer after 2 tries.*ConnectError"):
        S.score(url, [{"caption": "x"}], ["balcap_recall"], retries=1)


def test_a_400_raises_one_clear_error_with_the_servers_message(service):
    service.script = [(400, {}, {"detail": "item 0: caption is empty; give each item a caption"})]
    with pytest.raises(S.ServiceError) as caught:
        S.score(service.url, [{"caption": ""}], ["balcap_precision"])
    assert str(caught.value) == (
        f"the reward service at {service.url} refused the request (HTTP 400): item 0: caption is empty; "
        "give each item a caption"
    )
    assert len(service.posts) == 1  # not retried


def test_the_token_goes_in_the_header_and_nowhere_else(service, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MY_TOKEN", "s3cret-token")
    service.script = [(503, {}, {"detail": "restarting"})]
    S.score(service.url, [{"caption": "x"}], ["balcap_precision"], token_env="MY_TOKEN")
    assert [p["headers"]["Authorization"] for p in service.posts] == ["Bearer s3cret-token"] * 2
    service.script = [(401, {}, {"detail": "bad token"})]
    with pytest.raises(S.ServiceError) as caught:
        S.score(service.url, [{"caption": "x"}], ["balcap_precision"], token_env="MY_TOKEN")
    assert "bad token" in str(caught.value) and "$MY_TOKEN, which is set" in str(caught.value)
    assert "s3cret" not in str(caught.value) and "s3cret" not in caplog.text
    assert "trying again" in caplog.text  # the retry was logged, without the token


def test_the_trl_reward_pickles_and_trl_sees_it_as_a_named_async_reward(service):
    from trl.trainer.utils import get_callable_name, is_async_callable

    reward = S.ServiceReward("dcscore", service.url, name="dcscore_reward", band=None)
    clone = pickle.loads(pickle.dumps(reward))
    assert get_callable_name(clone) == "dcscore_reward" and is_async_callable(clone)
    assert get_callable_name(S.ServiceReward("balcap_recall", service.url)) == "balcap_recall"
    assert trl_call(clone, ["A cat."], reference_caption=["A cat."]) == [0.5]


def test_a_batch_larger_than_a_chunk_goes_as_several_requests_in_order(service):
    service.value = lambda item, reward: float(item["caption"])
    items = [{"caption": str(i)} for i in range(5)]
    assert [r["rewards"]["r"] for r in S.score(service.url, items, ["r"], chunk=2)] == [0, 1, 2, 3, 4]
    assert sorted(len(p["body"]["items"]) for p in service.posts) == [1, 2, 2]
    got = asyncio.run(S.ascore(service.url, items, ["r"], chunk=2))
    assert [r["rewards"]["r"] for r in got] == [0, 1, 2, 3, 4]


def test_a_wrong_number_of_results_or_a_bad_url_is_refused(service):
    service.script = [(200, {}, RECORDED_RESPONSE)]
    with pytest.raises(S.ServiceError, match="answered 2 results for 1 items"):
        S.score(service.url, [{"caption": "x"}], ["balcap_precision"])
    with pytest.raises(ConfigError, match="not a service address"):
        S.ServiceReward("balcap_precision", "127.0.0.1:8765")


def test_importing_the_client_loads_no_judge_nor_torch():
    code = (
        "import sys, capbench_rl.service_client, capbench_rl.verl_reward; "
        "print([m for m in sys.modules if m.split('.')[0] in ('torch', 'llama_cpp', 'transformers', 'trl') "
        "or m.startswith(('capbench.engines', 'capbench.metrics'))])"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- verl -----------------------------------------------------------------------------------------
# Argument shapes recorded from verl (verl-project/verl @ 1dda039): verl/trainer/ppo/reward.py
# get_custom_reward_fn loads `custom_reward_function.path`/`.name` and merges `reward_kwargs` into each
# call's kwargs; verl/experimental/reward_loop/reward_manager/naive.py (and the legacy
# verl/workers/reward_manager/naive.py) call compute_score(data_source=, solution_str=, ground_truth=,
# extra_info=) per rollout, awaiting it when inspect.iscoroutinefunction says so, after adding
# extra_info["num_turns"] and ["rollout_reward_scores"]; verl/workers/reward_manager/batch.py calls
# compute_score(data_sources=, solution_strs=, ground_truths=, extra_infos=, **reward_kwargs) with
# numpy object arrays from non_tensor_batch. A dict result needs a "score"; every rollout's dict
# must have the same keys (reward_loop.py stacks them with np.array per key).

WEIGHTS = {"balcap_precision": 1.0, "balcap_recall": 0.5, "balcap_linguistic": 2.0}


def load_like_verl(name: str, **reward_kwargs: Any) -> Callable[..., Any]:
    """verl's get_custom_reward_fn: the function loaded from the module's file, reward_kwargs merged in."""
    spec = importlib.util.spec_from_file_location("custom_module", V.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    raw = getattr(module, name)

    def call(raw_fn, extra, *args, **kwargs):
        return raw_fn(*args, **{**kwargs, **extra})

    async def acall(raw_fn, extra, *args, **kwargs):
        return await raw_fn(*args, **{**kwargs, **extra})

    return partial(acall if inspect.iscoroutinefunction(raw) else call, raw, reward_kwargs)


def extra_info(image_path: Any, **more: Any) -> dict[str, Any]:
    return {"split": "train", "index": 0, "image_path": image_path, "reference_facts": np.array(["The cat is red."]),
            "num_turns": None, "rollout_reward_scores": {}, **more}  # fmt: skip


def test_verls_per_rollout_function_sends_the_image_and_returns_the_weighted_score(service, tmp_path):
    image = png(tmp_path / "cat.png")
    service.value = lambda item, reward: {"balcap_precision": 0.8, "balcap_recall": 0.4}.get(reward, 0.5)
    fn = load_like_verl("compute_score", url=service.url, rewards=WEIGHTS)
    got = fn(data_source="capbench/mini", solution_str="A red cat sits on a mat.",
             ground_truth="A red cat on a mat.", extra_info=extra_info(str(image)))  # fmt: skip
    assert got == {"score": 0.8 + 0.5 * 0.4 + 2.0 * 0.5, "balcap_precision": 0.8, "balcap_recall": 0.4,
                   "balcap_linguistic": 0.5, "failed": 0, "errors": ""}  # fmt: skip
    [post] = service.posts
    assert post["body"]["rewards"] == list(WEIGHTS)
    assert post["body"]["items"] == [
        {"id": "rollout-0", "caption": "A red cat sits on a mat.", "reference_caption": "A red cat on a mat.",
         "reference_facts": ["The cat is red."], "image": {"path": str(image.resolve())}}
    ]  # fmt: skip


def test_verls_async_function_is_awaited_and_a_failure_is_counted_not_hidden(service, tmp_path):
    service.value = lambda item, reward: None if reward == "balcap_recall" else 0.5
    fn = load_like_verl("compute_score_async", url=service.url, rewards=WEIGHTS)
    assert inspect.iscoroutinefunction(fn)  # what verl's reward managers check, through its partial
    data = {"bytes": png(tmp_path / "x.png").read_bytes(), "path": None}  # a datasets image in extra_info
    got = asyncio.run(fn(data_source="d", solution_str="A red cat sits.", ground_truth="A red cat on a mat.",
                         extra_info=extra_info(None, image=data)))  # fmt: skip
    assert got["score"] == 1.0 * 0.5 + 2.0 * 0.5  # the failed reward adds nothing ...
    assert math.isnan(got["balcap_recall"]) and got["failed"] == 1  # ... and says so
    assert got["errors"] == "balcap_recall: judge failed"
    assert service.posts[0]["body"]["items"][0]["image"]["format"] == "png"


def test_verls_batch_function_answers_each_rollout_with_the_same_keys(service, tmp_path, monkeypatch):
    monkeypatch.setenv("CAPBENCH_SERVE_URL", service.url)  # settings from the environment
    monkeypatch.setenv("CAPBENCH_SERVE_REWARDS", "balcap_precision=1,balcap_linguistic=2")
    image = str(png(tmp_path / "cat.png"))
    fn = load_like_verl("compute_score_batch")
    reference = "one two three four"
    got = fn(
        data_sources=np.array(["capbench/mini"] * 3, dtype=object),
        solution_strs=["one", "one two three", "one two three four five"],
        ground_truths=[reference, {"reference_caption": reference, "questions": []}, reference],
        extra_infos=np.array([extra_info(image, sample_id="s1") for _ in range(3)], dtype=object),
    )
    assert [g["score"] for g in got] == [0.5, 0.5 + 2 * 0.5, 0.5 + 2 * 0.5]  # the first: linguistic masked, 0
    assert [g["balcap_linguistic"] for g in got] == [0.0, 0.5, 0.5]
    stacked = {key: np.array([g[key] for g in got]) for key in got[0]}  # as verl's reward loop does
    assert stacked["failed"].tolist() == [0, 0, 0]
    [post] = service.posts  # one request for the batch; the masked reward is left out of that item only
    assert [i.get("rewards") for i in post["body"]["items"]] == [["balcap_precision"], None, None]
    assert post["body"]["items"][0]["id"] == "s1"


def test_verls_settings_are_checked_in_one_line(monkeypatch):
    monkeypatch.delenv("CAPBENCH_SERVE_URL", raising=False)
    with pytest.raises(ConfigError, match=r"reward_kwargs\.url"):
        V.compute_score("d", "x", "y", {}, rewards=["balcap_precision"])
    with pytest.raises(ConfigError, match="name the rewards"):
        V.compute_score("d", "x", "y", {}, url="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="not a service address"):
        V.compute_score("d", "x", "y", {}, url="localhost:1", rewards=["r"])
    with pytest.raises(ConfigError, match="images must be path or base64, not 'inline'"):
        V.compute_score("d", "x", "y", {}, url="http://127.0.0.1:1", rewards=["r"], images="inline")
    with pytest.warns(UserWarning, match="ignores reward_kwargs urll"), pytest.raises(ConfigError):
        V.compute_score("d", "x", "y", {}, urll="http://127.0.0.1:1", rewards=["r"])


# --- capbench-rl train with reward_service -------------------------------------------------------


def run(*overrides: str, dry: bool = False):
    args = ["train", "--config", "toy-cpu", "--set", "model=org/name"]
    for item in overrides:
        args += ["--set", item]
    return CliRunner().invoke(main, [*args, "--dry-run"] if dry else args)


def test_a_recipe_with_a_reward_service_dry_runs_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the dry run reached for a server")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    result = run("reward_service=http://10.0.0.7:8765", "rewards={balcap_precision: 1, plugin_reward: 1}", dry=True)
    assert result.exit_code == 0, result.output  # a reward only the service knows is checked at start
    assert json.loads(result.output)["reward_service"] == "http://10.0.0.7:8765"
    one_line_error(run("reward_service=10.0.0.7:8765", dry=True), "recipe field reward_service", "http(s)://")


def test_train_refuses_at_start_when_the_service_is_down_or_lacks_a_reward(tmp_path, monkeypatch):
    from capbench_rl import train as train_module

    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded something before the service was checked")

    monkeypatch.setattr(train_module, "dataset", must_not_load)
    monkeypatch.setattr(train_module, "build_trainer", must_not_load)
    out = tmp_path / "run"
    down = f"http://127.0.0.1:{free_port()}"
    one_line_error(run(f"reward_service={down}", f"output_dir={out}"), "recipe field reward_service",
                   "is not answering", "capbench serve")  # fmt: skip
    with StandIn(rewards=("balcap_precision", "balcap_recall")) as service:
        one_line_error(run(f"reward_service={service.url}", f"output_dir={out}"),
                       "does not compute balcap_linguistic, caprl_qa_utility")  # fmt: skip
        assert [r["path"] for r in service.requests] == ["/health"]  # once; length_penalty is local
    assert not out.exists()


def test_train_builds_service_rewards_and_keeps_the_length_penalty_local(service):
    from trl.trainer.utils import get_callable_name

    from capbench_rl.train import reward_functions

    recipe = load_recipe("toy-cpu", ["model=org/name", f"reward_service={service.url}",
                                     "rewards={balcap_linguistic: 1, dcscore: 0.5, length_penalty: 0.2}"])  # fmt: skip
    funcs, weights = reward_functions(recipe)
    assert [get_callable_name(f) for f in funcs] == ["balcap_linguistic", "dcscore_reward", "length_penalty_reward"]
    assert weights == [1.0, 0.5, 0.2]
    linguistic, dcscore, _ = funcs
    assert isinstance(linguistic, S.ServiceReward) and linguistic.band == (0.5, 2.0) and dcscore.band is None
    assert recipe.precision_verified_by() == "reward service"


# --- against the real service ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`capbench serve` in a thread, judged by a loopback OpenAI-compatible server answering A or B.

    Those letters answer CapRL's questions (a value), and are no fact list (a failure with its reason).
    """
    for module in ("fastapi", "uvicorn"):
        pytest.importorskip(module, reason="the service needs: pip install 'capbench[serve]'")
    from loopback_judge import LoopbackJudge

    from capbench.serve import Running, ServeConfig

    images = tmp_path_factory.mktemp("service-images")
    with LoopbackJudge() as judge:
        config = ServeConfig(judge="openai:loopback", judge_options={"base_url": judge.base_url}, answer_mode="letter",
                             caprl_samples=2, cache=False, images_root=[str(images)], port=0)  # fmt: skip
        with Running(config, log=lambda line: None) as running:
            yield running.url, images


QUESTIONS = [
    {"question": "What colour is the square?", "choices": ["red", "blue", "green"], "answer": "red"},
    {"question": "Is there a square?", "choices": ["yes", "no"], "answer": "yes"},
]


def test_the_trl_reward_against_the_real_service(real_service):
    url, images = real_service
    image = png(images / "square.png")
    columns = {"sample_id": ["sq"] * 3, "image_path": [str(image)] * 3, "questions": [QUESTIONS] * 3,
               "reference_caption": ["A red square on a white background."] * 3}  # fmt: skip
    captions = ["A red square.", "A blue square on white.", "Nothing at all here, just words."]
    utility = trl_call(S.ServiceReward("caprl_qa_utility", url), captions, **columns)
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in utility)
    precision = trl_call(S.ServiceReward("balcap_precision", url, images="base64"), captions, **columns)
    assert precision == [None, None, None]  # "A"/"B" is no list of facts: unscored, never 0
    linguistic = S.ServiceReward("balcap_linguistic", url, band=(0.5, 2.0))
    assert trl_call(linguistic, ["A red square."], **{k: v[:1] for k, v in columns.items()}) == [0.0]  # masked
    with pytest.raises(S.ServiceError, match=r"HTTP 400\): body.rewards: unknown reward 'nosuch'"):
        trl_call(S.ServiceReward("nosuch", url), captions, **columns)


def test_verl_and_capbench_rl_against_the_real_service(real_service, tmp_path):
    url, images = real_service
    image = png(images / "verl.png")
    got = V.compute_score("capbench", "A red square.", "A red square on a white background.",
                          extra_info(str(image), questions=QUESTIONS), url=url,
                          rewards={"caprl_qa_utility": 1.0, "balcap_recall": 1.0})  # fmt: skip
    assert got["failed"] == 1 and math.isnan(got["balcap_recall"]) and got["errors"].startswith("balcap_recall: ")
    assert got["score"] == got["caprl_qa_utility"]  # the failed reward adds nothing, and is named
    from capbench_rl.checks import check_service_up

    recipe = load_recipe("toy-cpu", ["model=org/name", f"reward_service={url}"])
    check_service_up(recipe)  # offers every reward toy-cpu names
    recipe = load_recipe("toy-cpu", ["model=org/name", f"reward_service={url}", "rewards={plugin_reward: 1}"])
    with pytest.raises(ConfigError, match="does not compute plugin_reward; it offers balcap_linguistic"):
        check_service_up(recipe)


@pytest.mark.engine
def test_capbench_rl_trains_a_step_with_its_rewards_from_a_service(tmp_path):
    """One real GRPO step of a tiny policy: TRL awaits the service's rewards, a null is left out, not 0."""
    from tiny_models import build_tiny_qwen25vl

    from capbench_rl.train import train

    policy = build_tiny_qwen25vl(tmp_path / "policy")
    out = tmp_path / "run"
    with StandIn(rewards=("balcap_precision", "balcap_recall")) as service:
        seen: list[str] = []

        def value(item: dict[str, Any], reward: str) -> float | None:
            seen.append(item["caption"])
            return None if len(seen) == 1 else 0.25 * (len(seen) % 4)  # the first rollout's reward failed

        service.value = value
        recipe = load_recipe("toy-cpu", [
            f"model={policy}", f"output_dir={out}", "max_steps=1", "eval_benchmark=null", "num_generations=4",
            "per_device_train_batch_size=4", f"reward_service={service.url}", "reward_service_images=base64",
            "rewards={balcap_precision: 1, length_penalty: 0.5}",
        ])  # fmt: skip
        with pytest.warns(UserWarning, match="reward_service is set"):
            train(recipe)
        posts = service.posts
    assert [r["path"] for r in service.requests][:1] == ["/health"] and len(posts) == 1
    assert [i["image"]["format"] for i in posts[0]["body"]["items"]] == ["png"] * 4
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    [step] = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [r["rewards"]["balcap_precision"] for r in rollouts] == [None, 0.5, 0.75, 0.0]
    assert step["rewards"]["balcap_precision"]["unscored"] == 1 and step["judge"]["calls"] == 4
    assert step["precision_verified_by"] == "reward service"


def test_the_service_draws_the_same_caprl_questions_as_the_in_process_reward(real_service):
    # the client names each rollout by its sample_id, as the in-process reward does: the seeded draws agree
    from capbench_rl import rewards

    url, _ = real_service
    asked = [{**q, "id": f"q{k}"} for k, q in enumerate(QUESTIONS)]  # ids as capbench-rl's data rows carry them
    columns = {"sample_id": ["sq", "sq", "other"], "questions": [asked] * 3,
               "reference_caption": ["A red square on a white background."] * 3}  # fmt: skip
    captions = ["A red square.", "A blue square on white.", "A green square, small."]
    served = trl_call(S.ServiceReward("caprl_qa_utility", url), captions, **columns)
    from loopback_judge import LoopbackJudge

    with LoopbackJudge() as judge:  # the same answers as the service's judge (a function of the messages)
        setup = rewards.JudgeSetup(judge="openai:loopback", judge_options=(f"base_url={judge.base_url}",),
                                   cache=":memory:")  # fmt: skip
        local = trl_call(
            partial(rewards.caprl_qa_utility, setup=setup, metric_options=(("answer_mode", "letter"), ("samples", 2))),
            captions, **columns,
        )  # fmt: skip
    assert served == pytest.approx(local)
