"""Evaluations where people watch them: W&B (offline) and TensorBoard, read back from what they wrote.

``capbench eval --report-to`` and capbench-rl's checkpoint evaluation are run for real: captions
scored by CapRL with a judge served on 127.0.0.1 (:mod:`loopback_judge`), a tiny random
Qwen2.5-VL trained one GRPO step by TRL. The W&B run is read back from its ``.wandb`` file (a
LevelDB-style log of protobuf records), TensorBoard's with its own ``EventAccumulator``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import one_line_error
from loopback_judge import LoopbackJudge

from capbench.cli import main
from capbench.data import load_benchmark
from capbench.errors import ConfigError
from capbench.trackers import SampleRow, choose, markdown_table, parse_trackers, scalars
from capbench_rl.recipe import load_recipe
from capbench_rl.rewards import reward


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B in offline mode, every folder it writes in tmp_path."""
    for variable in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        folder = tmp_path / "wandb-home" / variable.lower()
        folder.mkdir(parents=True)
        monkeypatch.setenv(variable, str(folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    import wandb

    wandb.teardown()  # W&B reads its settings (folders, mode) once per process: read this test's
    yield tmp_path / "wandb-home"
    wandb.teardown()


def wandb_records(folder: Path) -> list:
    """Every record of the one offline W&B run under ``folder``, parsed (the ``.wandb`` file's log format)."""
    from wandb.proto import wandb_internal_pb2

    [path] = list(folder.rglob("run-*.wandb"))
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        chunk, position = data[position + 7 : position + 7 + length], position + 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_history(records: list) -> list[dict]:
    """The run's logged rows (``wandb.log``), values decoded from JSON."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def wandb_table(records: list, key: str) -> tuple[dict, list[str]]:
    """The last table logged under ``key``: its JSON (as W&B stores it in the run's artifact) and its files."""
    [artifact] = [
        r.artifact
        for r in records
        if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "run_table"
        and any(c.path == f"{key}.table.json" for c in r.artifact.manifest.contents)
    ][-1:]  # fmt: skip
    files = {c.path: c.local_path for c in artifact.manifest.contents}
    return json.loads(Path(files[f"{key}.table.json"]).read_text()), sorted(files)


def tensorboard(logdir: Path):
    """An EventAccumulator over ``logdir`` with every image and text kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def text_of(accumulator, tag: str) -> list[tuple[int, str]]:
    """(step, text) of a TensorBoard text summary."""
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in accumulator.Tensors(tag)]


# ---------------------------------------------------------------- pieces


def test_trackers_are_checked_before_anything_runs(monkeypatch):
    assert parse_trackers("wandb, tensorboard,wandb") == ("wandb", "tensorboard")
    assert parse_trackers(None) == ()
    with pytest.raises(ConfigError, match="unknown tracker; choose from wandb, tensorboard"):
        parse_trackers("wandb,mlflow")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install wandb"):
        parse_trackers("tensorboard,wandb")
    assert parse_trackers("tensorboard") == ("tensorboard",)


def test_an_uninstalled_tracker_is_one_line_before_any_scoring(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    results = tmp_path / "results"
    result = CliRunner().invoke(main, ["eval", "--example-captions", "--results-dir", str(results),
                                       "--report-to", "tensorboard"])  # fmt: skip
    one_line_error(result, "--report-to tensorboard needs the tensorboard package: pip install tensorboard")
    assert not results.exists()  # nothing was scored
    result = CliRunner().invoke(main, ["eval", "--example-captions", "--report-dir", str(tmp_path)])
    one_line_error(result, "--report-dir and --report-name go with --report-to")


def test_summary_numbers_are_flattened_and_the_markdown_table_escapes_cells():
    summary = {"captionqa": {"score": 41.5, "n": 3, "domains": {"natural": {"score": 40.0}}, "failed_ids": ["x"],
                             "exact": True, "note": "text"}}  # fmt: skip
    assert scalars(summary) == {"captionqa/score": 41.5, "captionqa/n": 3.0, "captionqa/domains/natural/score": 40.0}
    row = SampleRow("a|b", None, "A <b>cat</b> | a\nmat", "ref \\ text", {"caprl/utility": 50.0, "caprl/x": None})
    table = markdown_table([row])
    assert table.splitlines()[0] == "| sample | caption | reference | caprl/utility | caprl/x |"
    assert table.splitlines()[2] == "| a\\|b | A &lt;b&gt;cat&lt;/b&gt; \\| a mat | ref \\\\ text | 50 | — |"
    ids = [f"s{i}" for i in range(10)]
    assert choose(ids, 3, 0) == choose(ids, 3, 0) and len(set(choose(ids, 3, 0))) == 3
    assert choose(ids, 3, 0) == sorted(choose(ids, 3, 0), key=ids.index) and choose(ids, 20, 0) == ids


# ---------------------------------------------------------------- capbench eval --report-to


def test_capbench_eval_sends_its_summary_and_samples_to_wandb_and_tensorboard(tmp_path, offline_wandb):
    samples = load_benchmark("mini").samples[:3]
    captions = tmp_path / "mine.jsonl"
    captions.write_text("".join(json.dumps({"id": s.id, "caption": f"caption {i} of <{s.id}>"}) + "\n"
                                for i, s in enumerate(samples)))  # fmt: skip
    report = tmp_path / "report"
    with LoopbackJudge() as judge:
        result = CliRunner().invoke(main, [
            "eval", "-c", str(captions), "-m", "caprl", "--judge", "openai:loopback", "--judge-base-url",
            judge.base_url, "--answer-mode", "letter", "--caprl-samples", "2", "--limit", "3",
            "--results-dir", str(tmp_path / "results"), "--report-to", "wandb,tensorboard",
            "--report-dir", str(report), "--json",
        ])  # fmt: skip
    assert result.exit_code == 0, result.output
    [run] = json.loads(result.stdout)["runs"]  # the trackers print nothing to stdout: --json stays JSON
    score = run["metrics"]["caprl"]["score"]
    assert "sent to tensorboard" in result.stderr and "sent to wandb" in result.stderr

    board = tensorboard(report / "tensorboard" / "mini" / "mine")
    assert [(e.step, e.value) for e in board.Scalars("caprl/score")] == [(0, pytest.approx(score))]
    [(_, table)] = text_of(board, "samples")
    for i, sample in enumerate(samples):
        assert f"caption {i} of &lt;{sample.id}&gt;" in table and sample.id in table
    assert sorted(board.Tags()["images"]) == sorted(f"samples/{s.id}" for s in samples)
    image = board.Images(f"samples/{samples[0].id}")[0]
    assert max(image.width, image.height) <= 256 and image.encoded_image_string.startswith(b"\x89PNG")

    records = wandb_records(report / "wandb")
    [row] = wandb_history(records)
    assert row["caprl/score"] == pytest.approx(score)
    [config] = [r.run.config for r in records if r.WhichOneof("record_type") == "run"][:1]
    settings = {item.key: json.loads(item.value_json) for item in config.update}
    assert settings["benchmark"] == "mini" and settings["metrics"] == ["caprl"]
    logged, files = wandb_table(records, "samples")
    assert logged["columns"][:4] == ["sample_id", "image", "caption", "reference"]
    assert [r[0] for r in logged["data"]] == [s.id for s in samples]
    assert [r[2] for r in logged["data"]] == [f"caption {i} of <{s.id}>" for i, s in enumerate(samples)]
    assert all(r[1]["_type"] == "image-file" for r in logged["data"])
    assert len([f for f in files if f.startswith("media/images/")]) == 3
    per_sample = [r[logged["columns"].index("caprl/utility")] for r in logged["data"]]
    assert sum(per_sample) / 3 == pytest.approx(score)


# ---------------------------------------------------------------- capbench-rl


async def scripted_reward(prompts, completions, *, values, seen, **columns):
    """A scripted reward that notes the sample ids TRL passed it."""
    seen.extend(columns["sample_id"])
    return list(values)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from tiny_models import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("policy") / "tiny-qwen2.5-vl")


class InProcess:
    """The checkpoint evaluation's pool, run in this process (the child's start-up is the slow part of a tiny run)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, function, *args):
        from concurrent.futures import Future

        future = Future()
        future.set_result(function(*args))
        return future


@pytest.mark.engine
def test_checkpoint_evaluations_reach_the_trackers_and_trainer_state(monkeypatch, tmp_path, policy, offline_wandb):
    from capbench_rl import evaluate as evaluate_module
    from capbench_rl import train as train_module

    # the child process is tested by test_rl_train's two-step run; here what comes back from it counts
    monkeypatch.setattr(evaluate_module, "ProcessPoolExecutor", InProcess)
    seen: list[str] = []
    funcs = [reward(scripted_reward, values=[1.0, 0.0, 0.5], seen=seen)]
    monkeypatch.setattr(train_module, "reward_functions", lambda recipe: (funcs, [1.0]))
    out = tmp_path / "run"
    with LoopbackJudge() as judge:
        recipe = load_recipe("toy-cpu", [
            f"model={policy}", f"output_dir={out}", "max_steps=1", "save_steps=1", "max_completion_length=4",
            "eval_limit=3", "eval_log_samples=2", "qa_answer_mode=letter", "caprl_samples=2", "judge=openai:loopback",
            f"judge_options=[base_url={judge.base_url}]", "trl={report_to: [tensorboard, wandb]}",
        ])  # fmt: skip
        train_module.train(recipe)
    import wandb

    # W&B writes its run file from a service process: finish the run (as the process's exit would) before
    # reading it back, or the last rows may still be on their way (seen under load)
    wandb.finish()

    # rollout rows carry the sample each was generated for (the ids TRL's reward call got)
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [r["sample_id"] for r in rollouts] == seen and len(set(seen)) == 1
    assert seen[0] in {s.id for s in load_benchmark("mini").samples[:2]}

    [evaluation] = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert "error" not in evaluation, evaluation
    score = evaluation["metrics"]["caprl"]["score"]
    examples = evaluation["examples"]
    held_out = [s.id for s in load_benchmark("mini").samples[:3]]
    assert [e["sample_id"] for e in examples] == choose(held_out, 2, recipe.seed)
    assert all(Path(e["image"]).is_file() and "caprl/utility" in e["values"] for e in examples)

    # trainer_state.json, in the checkpoint and in output_dir, holds the evaluation beside the training metrics
    for state_file in (out / "checkpoint-1" / "trainer_state.json", out / "trainer_state.json"):
        history = json.loads(state_file.read_text())["log_history"]
        assert any("loss" in entry for entry in history)
        [entry] = [e for e in history if "eval/caprl" in e]
        assert entry["step"] == 1 and entry["eval/caprl"] == pytest.approx(score)

    # TensorBoard: eval/caprl at step 1 next to the training curves; the sampled captions as text and images
    [logdir] = [p.parent for p in (out / "runs").rglob("events.out.tfevents.*")][:1]
    board = tensorboard(logdir)
    assert [(e.step, e.value) for e in board.Scalars("eval/caprl")] == [(1, pytest.approx(score))]
    assert "train/loss" in board.Tags()["scalars"]
    [(step, table)] = text_of(board, "eval/samples/text_summary")  # torch's SummaryWriter adds /text_summary
    assert step == 1 and all(e["caption"].split()[0] in table for e in examples if e["caption"].split())
    assert sorted(board.Tags()["images"]) == sorted(f"eval/samples/{e['sample_id']}" for e in examples)

    # W&B: the same, at train/global_step 1
    records = wandb_records(offline_wandb)
    rows = wandb_history(records)
    [evaluated] = [r for r in rows if "eval/caprl" in r]
    assert evaluated["eval/caprl"] == pytest.approx(score) and evaluated["train/global_step"] == 1
    assert any("train/loss" in r for r in rows)
    logged, files = wandb_table(records, "eval/samples")
    assert logged["columns"][:3] == ["step", "sample_id", "image"]
    assert [(r[0], r[1], r[3]) for r in logged["data"]] == [(1, e["sample_id"], e["caption"]) for e in examples]
    assert len([f for f in files if f.startswith("media/images/")]) == 2
