"""Score each saved checkpoint with ``capbench eval`` on a held-out set, beside the training logs.

When the trainer saves ``<output_dir>/checkpoint-<step>``, :class:`CheckpointEval` runs
``capbench eval --model <checkpoint>`` in a child process (its own model copy and judges; the
training process keeps its memory), with the recipe's prompt, judge and protocol, into
``<output_dir>/eval/``. Each evaluation appends one line to ``<output_dir>/eval.jsonl`` (the
step, the checkpoint, every metric's summary, the judge calls) and its headline numbers to the
trainer's log history as ``eval/<metric>``, so ``trainer_state.json`` holds them next to the
training metrics. An evaluation that fails is written down with its error and training goes on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from capbench.runs import JsonlLog
from capbench_rl.recipe import Recipe


def eval_command(recipe: Recipe, checkpoint: Path, name: str) -> list[str]:
    """The ``capbench eval`` command line that scores ``checkpoint`` on the recipe's held-out set."""
    assert recipe.eval_benchmark is not None
    command = [
        sys.executable, "-m", "capbench", "eval", "--benchmark", recipe.eval_benchmark,
        "--model", str(checkpoint), "--engine", recipe.eval_engine, "--name", name,
        "--caption-prompt", recipe.prompt, "--caption-max-tokens", str(recipe.max_completion_length),
        "--metrics", ",".join(recipe.eval_metrics), "--judge", recipe.judge,
        "--fact-protocol", recipe.fact_protocol, "--answer-mode", recipe.qa_answer_mode,
        "--caprl-samples", str(recipe.caprl_samples),
        "--seed", str(recipe.seed), "--results-dir", str(Path(recipe.output_dir) / "eval"), "--json",
        "--regenerate", "--overwrite",  # a rerun into the same output_dir has new weights under the same name
    ]  # fmt: skip
    for option in recipe.judge_options:
        command += ["--judge-opt", option]
    for option in recipe.eval_model_options:
        command += ["--model-opt", option]
    if recipe.vision_judge:
        command += ["--vision-judge", recipe.vision_judge]
    for flag, value in (
        ("--dataset", recipe.eval_dataset),
        ("--split", recipe.eval_split),
        ("--images-dir", recipe.eval_images_dir),
    ):
        if value:
            command += [flag, value]
    if recipe.eval_limit:
        command += ["--limit", str(recipe.eval_limit)]
    return command


def evaluate_checkpoint(recipe: Recipe, checkpoint: Path, step: int) -> dict[str, Any]:
    """Run ``capbench eval`` on one checkpoint; return the eval.jsonl entry (with ``error`` if it failed)."""
    start = time.perf_counter()
    entry: dict[str, Any] = {"step": step, "checkpoint": str(checkpoint)}
    done = subprocess.run(eval_command(recipe, checkpoint, checkpoint.name), capture_output=True, text=True)
    entry["seconds"] = round(time.perf_counter() - start, 3)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        entry["error"] = f"capbench eval exited with {done.returncode}: " + " | ".join(tail)
        return entry
    try:
        report = json.loads(done.stdout)
        [run] = report["runs"]
    except (json.JSONDecodeError, KeyError, ValueError) as exc:
        entry["error"] = f"capbench eval printed no readable report ({exc})"
        return entry
    entry.update(
        results_dir=run["results_dir"],
        samples=run["samples"],
        metrics=run["metrics"],
        unscored=run["unscored"],
        judge_calls=run.get("judge_calls"),
        generation=report.get("generation", {}),
    )
    return entry


def callback_base() -> type:
    """transformers' TrainerCallback, imported when a trainer is built (not when capbench-rl starts)."""
    from transformers import TrainerCallback

    return TrainerCallback


class CheckpointEval(callback_base()):  # type: ignore[misc]
    """Evaluate every checkpoint the trainer saves (on the main process only)."""

    def __init__(self, trainer: Any, recipe: Recipe) -> None:
        self.trainer = trainer
        self.recipe = recipe
        self.log = JsonlLog(Path(recipe.output_dir) / "eval.jsonl")
        self.failures = 0

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Score the checkpoint just written and log its headline numbers."""
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        entry = evaluate_checkpoint(self.recipe, checkpoint, state.global_step)
        self.log.append_rows([entry])
        if "error" in entry:
            self.failures += 1
            print(f"capbench-rl: evaluating {checkpoint.name} failed: {entry['error']}", file=sys.stderr)
            return
        headline = {f"eval/{name}": summary.get("score") for name, summary in entry["metrics"].items()}
        state.log_history.append({"step": state.global_step, **headline, "eval/seconds": entry["seconds"]})
