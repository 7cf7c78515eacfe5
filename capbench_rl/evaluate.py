"""Score each saved checkpoint with capbench on a held-out set, beside the training logs.

When the trainer saves ``<output_dir>/checkpoint-<step>``, :class:`CheckpointEval` calls
:func:`capbench.evaluate` with the checkpoint as the captioning model, the recipe's prompt,
judge and protocol, into ``<output_dir>/eval/``. It runs in a child process of its own (its own
model copy and judges; the training process keeps its memory); the two speak through the
library: the child gets an :class:`capbench.EvalConfig` and returns the evaluation's report.
Each evaluation appends one line to ``<output_dir>/eval.jsonl`` (the step, the checkpoint, every
metric's summary, the judge calls) and its headline numbers to the trainer's log history as
``eval/<metric>``, so ``trainer_state.json`` holds them next to the training metrics. An
evaluation that fails is written down with its error and training goes on.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import capbench
from capbench.runs import JsonlLog
from capbench_rl.recipe import Recipe


def eval_config(recipe: Recipe, checkpoint: Path, name: str) -> capbench.EvalConfig:
    """The evaluation of ``checkpoint`` on the recipe's held-out set, as library settings."""
    assert recipe.eval_benchmark is not None
    loader = {
        key: value
        for key, value in (
            ("dataset", recipe.eval_dataset),
            ("split", recipe.eval_split),
            ("images_dir", recipe.eval_images_dir),
        )
        if value
    }
    return capbench.EvalConfig(
        benchmark=recipe.eval_benchmark,
        benchmark_options=loader,
        model=str(checkpoint),
        engine=recipe.eval_engine,
        model_options=list(recipe.eval_model_options),
        name=name,
        caption_prompt=recipe.prompt,
        caption_max_tokens=recipe.max_completion_length,
        metrics=list(recipe.eval_metrics),
        judge=recipe.judge,
        judge_options=list(recipe.judge_options),
        vision_judge=recipe.vision_judge,
        vision_judge_options=list(recipe.vision_judge_options),
        fact_protocol=recipe.fact_protocol,
        answer_mode=recipe.qa_answer_mode,
        caprl_samples=recipe.caprl_samples,
        seed=recipe.seed,
        results_dir=str(Path(recipe.output_dir) / "eval"),
        limit=recipe.eval_limit or None,
        regenerate=True,  # a rerun into the same output_dir has new weights under the same name
        overwrite=True,
    )


def _evaluate(settings: dict[str, Any]) -> dict[str, Any]:
    """In the child process: run the evaluation and return its report (what ``capbench eval --json`` prints)."""
    return capbench.evaluate(capbench.EvalConfig.from_dict(settings)).to_dict()


def evaluate_checkpoint(recipe: Recipe, checkpoint: Path, step: int) -> dict[str, Any]:
    """Evaluate one checkpoint in a child process; return the eval.jsonl entry (with ``error`` if it failed)."""
    start = time.perf_counter()
    entry: dict[str, Any] = {"step": step, "checkpoint": str(checkpoint)}
    try:
        config = eval_config(recipe, checkpoint, checkpoint.name)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            report = pool.submit(_evaluate, config.to_dict()).result()
        [run] = report["runs"]
    except Exception as exc:  # any failure of the evaluation is written down; training goes on
        entry["seconds"] = round(time.perf_counter() - start, 3)
        entry["error"] = f"evaluating {checkpoint.name} failed: {type(exc).__name__}: {exc}"
        return entry
    entry["seconds"] = round(time.perf_counter() - start, 3)
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
