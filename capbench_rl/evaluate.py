"""Score each saved checkpoint with capbench on a held-out set, beside the training logs.

When the trainer saves ``<output_dir>/checkpoint-<step>``, :class:`CheckpointEval` calls
:func:`capbench.evaluate` with the checkpoint as the captioning model, the recipe's prompt,
judge and protocol, into ``<output_dir>/eval/``. It runs in a child process of its own (its own
model copy and judges; the training process keeps its memory); the two speak through the
library: the child gets an :class:`capbench.EvalConfig` and returns the evaluation's report.
Each evaluation appends one line to ``<output_dir>/eval.jsonl`` (the step, the checkpoint, every
metric's summary, the judge calls, a few sampled rows) and its headline numbers to the trainer's
log history as ``eval/<metric>``; ``trainer_state.json`` is written again, in the checkpoint and
in ``output_dir``, so it holds them next to the training metrics. The headline numbers also go
to every tracker TRL logs to (``report_to``), at the checkpoint's step, and the sampled rows
(image, caption, per-sample values) to W&B as a table and to TensorBoard as text and images
(:mod:`capbench.trackers`). An evaluation that fails is written down with its error and training
goes on.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import capbench
from capbench import trackers
from capbench.runs import JsonlLog, atomic_write_text
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


def _evaluate(settings: dict[str, Any], shown: int) -> dict[str, Any]:
    """In the child process: run the evaluation; return its report (what ``capbench eval --json`` prints).

    The report also holds ``examples``: ``shown`` of the held-out samples, drawn with the config's
    seed from all of them (so every checkpoint shows the same ones), as :class:`capbench.trackers.SampleRow`
    dicts.
    """
    from capbench.api import run

    plan = capbench.prepare(capbench.EvalConfig.from_dict(settings))
    evaluation = run(plan)
    report = evaluation.to_dict()
    limit = plan.config.limit
    samples = trackers.with_images(plan.benchmark.samples, plan.benchmark.name, plan.config.benchmark_options)
    held_out = list(samples[:limit] if limit else samples)
    ids = trackers.choose([s.id for s in held_out], shown, plan.config.seed)
    report["examples"] = [
        row.to_dict() for result in evaluation.values() for row in trackers.sample_rows(result, held_out, ids)
    ]
    return report


def evaluate_checkpoint(recipe: Recipe, checkpoint: Path, step: int) -> dict[str, Any]:
    """Evaluate one checkpoint in a child process; return the eval.jsonl entry (with ``error`` if it failed)."""
    start = time.perf_counter()
    entry: dict[str, Any] = {"step": step, "checkpoint": str(checkpoint)}
    try:
        config = eval_config(recipe, checkpoint, checkpoint.name)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            report = pool.submit(_evaluate, config.to_dict(), recipe.eval_log_samples).result()
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
        examples=report.get("examples", []),
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
        headline = {name: summary.get("score") for name, summary in entry["metrics"].items()}
        eval_entry = {f"eval/{name}": value for name, value in headline.items()}
        state.log_history.append({"step": state.global_step, **eval_entry, "eval/seconds": entry["seconds"]})
        # trainer_state.json was written with the checkpoint, before this ran: write it again, there and in output_dir
        text = json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True) + "\n"
        for folder in (checkpoint, Path(args.output_dir)):
            if folder.is_dir():
                atomic_write_text(folder / "trainer_state.json", text)
        self.report(args, state, control, headline, entry)

    def report(self, args: Any, state: Any, control: Any, headline: dict[str, Any], entry: dict[str, Any]) -> None:
        """Send the evaluation to the trackers TRL logs to: the numbers to all, the sampled rows to W&B and TensorBoard.

        The numbers go through the trainer's callbacks as ``eval_<metric>``, which transformers'
        tracker callbacks log as ``eval/<metric>`` at the global step (as they log ``Trainer.evaluate``'s).
        """
        numbers = {f"eval_{name}": value for name, value in headline.items() if isinstance(value, (int, float))}
        numbers["eval_seconds"] = entry["seconds"]
        self.trainer.callback_handler.on_log(args, state, control, logs=numbers)
        rows = [trackers.SampleRow.from_dict(row) for row in entry.get("examples") or []]
        if not rows:
            return
        try:
            send_rows(self.trainer, args, state.global_step, rows)
        except Exception as exc:  # a tracker's failure costs the table, not the training
            step = state.global_step
            print(f"capbench-rl: sending the sampled captions of step {step} failed: {exc}", file=sys.stderr)


def send_rows(trainer: Any, args: Any, step: int, rows: list[trackers.SampleRow]) -> None:
    """Log sampled rows of a checkpoint evaluation to the W&B run and TensorBoard writer TRL's trainer logs to."""
    report_to = list(args.report_to or [])
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            table = trackers.wandb_table(wandb, rows, {"step": step})
            wandb.run.log({"eval/samples": table, "train/global_step": step})
    for callback in trainer.callback_handler.callbacks:
        writer = getattr(callback, "tb_writer", None)  # transformers' TensorBoardCallback and its SummaryWriter
        if type(callback).__name__ == "TensorBoardCallback" and writer is not None:
            trackers.tensorboard_samples(writer, "eval/samples", rows, step)
            writer.flush()
