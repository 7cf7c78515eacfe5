"""Build and run TRL's GRPOTrainer from a recipe, with capbench's metrics as rewards.

Each logged step appends to ``<output_dir>/rollouts.jsonl`` what TRL computed for the step's
rollouts (the sample each was generated for, every reward, the advantage, the caption) and to
``steps.jsonl`` the step's figures: its seconds and where they went (generation, rewards, the
rest of the rollout, the update, and reward time overlapping generation; see
:mod:`capbench_rl.timing`); per reward, its rollouts, the share masked by length, rollouts left
unscored by a judge failure and its seconds; the rollouts left out of their group's statistics
(a failed reward, see :mod:`capbench_rl.advantages`); the judges' calls, cache hits and failures;
and what the caption facts were verified against (``precision_verified_by``). With
``overlap_chunks`` above 1, rollouts are judged while the rest generate (:mod:`capbench_rl.overlap`),
and ``prefetch`` counts that judging per step.
With ``eval_benchmark`` set, every checkpoint is also scored by ``capbench eval``
(:mod:`capbench_rl.evaluate`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

from capbench.errors import ConfigError
from capbench.runs import JsonlLog, atomic_write_text
from capbench_rl import rewards as R
from capbench_rl.advantages import LeaveOutFailed
from capbench_rl.checks import check_recipe, check_service_up
from capbench_rl.data import dataset
from capbench_rl.evaluate import CheckpointEval, callback_base
from capbench_rl.overlap import Overlap, check_chunks, missing_support
from capbench_rl.recipe import TEXT_ONLY, TRL_FIELDS, Recipe
from capbench_rl.service_client import ServiceReward, service_usage
from capbench_rl.timing import PhaseTimer

#: The names TRL logs capbench's rewards under, where they differ from the reward's name.
LOGGED_AS = {"dcscore": "dcscore_reward", "captionqa": "captionqa_reward", "length_penalty": "length_penalty_reward"}


def reward_functions(recipe: Recipe) -> tuple[list[Any], list[float]]:
    """The recipe's reward functions, in its order, and their weights."""
    if recipe.reward_service is not None:
        return service_reward_functions(recipe)
    setup = R.JudgeSetup(
        judge=recipe.judge,
        judge_options=tuple(recipe.judge_options),
        vision_judge=recipe.vision_judge,
        vision_judge_options=tuple(recipe.vision_judge_options),
        fact_protocol=recipe.fact_protocol,
        seed=recipe.seed,
    )
    band = tuple(recipe.length_band) if recipe.length_band is not None else None
    length = {"unit": recipe.length_unit, "tokenizer": recipe.model if recipe.length_unit == "tokens" else None}
    qa = (("answer_mode", recipe.qa_answer_mode),)
    made = {
        "balcap_precision": lambda: R.reward(R.balcap_precision, setup=setup),
        "balcap_recall": lambda: R.reward(R.balcap_recall, setup=setup),
        "balcap_linguistic": lambda: R.reward(R.balcap_linguistic, setup=setup, band=band, **length),
        "length_penalty": lambda: R.reward(R.length_penalty_reward, coef=recipe.length_penalty_coef, **length),
        "caprl_qa_utility": lambda: R.reward(
            R.caprl_qa_utility, setup=setup, metric_options=(*qa, ("samples", recipe.caprl_samples))
        ),
        "dcscore": lambda: R.reward(R.dcscore_reward, setup=setup),
        "captionqa": lambda: R.reward(R.captionqa_reward, setup=setup, metric_options=qa),
    }
    # A reward a plugin's metric declares: scored the same way, logged under its own name.
    funcs = [made[name]() if name in made else R.MetricReward(name, setup=setup) for name in recipe.rewards]
    return funcs, [float(w) for w in recipe.rewards.values()]


def service_reward_functions(recipe: Recipe) -> tuple[list[Any], list[float]]:
    """The recipe's rewards scored by its reward service (the length penalty stays here), and their weights.

    Each is logged under the name its in-process twin has, and the linguistic reward is masked
    by the length band here, before anything is sent.
    """
    band = tuple(recipe.length_band) if recipe.length_band is not None else None
    length = {"unit": recipe.length_unit, "tokenizer": recipe.model if recipe.length_unit == "tokens" else None}
    funcs: list[Any] = []
    for name in recipe.rewards:
        if name == "length_penalty":
            funcs.append(R.reward(R.length_penalty_reward, coef=recipe.length_penalty_coef, **length))
            continue
        funcs.append(
            ServiceReward(
                name, recipe.reward_service or "", name=LOGGED_AS.get(name, name),
                token_env=recipe.reward_service_token_env, images=recipe.reward_service_images,
                band=band if name == "balcap_linguistic" else None, **length,  # type: ignore[arg-type]
            )
        )  # fmt: skip
    return funcs, [float(w) for w in recipe.rewards.values()]


def trl_config(recipe: Recipe, weights: list[float]) -> Any:
    """The recipe's GRPOConfig: its TRL fields, the rewards' weights, and ``trl:`` passed through.

    ``report_to`` (the trackers TRL logs to: tensorboard, wandb, …) is taken from ``trl:``, none
    by default.
    """
    from trl import GRPOConfig

    settings = {"report_to": [], **recipe.trl}
    try:
        return GRPOConfig(
            **{name: getattr(recipe, name) for name in TRL_FIELDS},
            reward_weights=weights,
            multi_objective_aggregation=recipe.aggregation,
            log_completions=True,
            logging_steps=1,
            **settings,
        )
    except (TypeError, ValueError) as exc:  # TRL's and transformers' own cross-field checks
        raise ConfigError(f"TRL refuses the recipe's settings: {exc}") from None


def build_trainer(recipe: Recipe) -> Any:
    """Return a ready GRPOTrainer (policy, processor, data, rewards, config) for ``recipe``."""
    from trl import GRPOTrainer

    from capbench.engines.hf_checkpoint import load_processor

    check_recipe(recipe)
    funcs, weights = reward_functions(recipe)
    config = trl_config(recipe, weights)
    overlap = overlap_for(recipe, config, funcs, GRPOTrainer)
    data = dataset(recipe)  # before the policy loads: bad data fails in seconds, not after the model
    try:
        processor = load_processor(recipe.model)
    except (OSError, ValueError) as exc:  # a hub id that is not there, or a folder that holds no checkpoint
        raise ConfigError(
            f"cannot load the policy {recipe.model!r} ({exc}); set model to a checkpoint folder or hub id"
        ) from None
    with warnings.catch_warnings():  # TRL calls rollout_func experimental; capbench-rl uses it knowingly
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'", category=UserWarning)
        trainer = GRPOTrainer(
            model=recipe.model, reward_funcs=funcs, args=config, train_dataset=data, processing_class=processor,
            **({"rollout_func": overlap.rollout} if overlap is not None else {}),
        )  # fmt: skip
    if overlap is not None:
        overlap.attach(trainer)  # inside the timer's wrapping: ending the prefetches counts in the rollout phase
    timer = PhaseTimer(trainer)
    if overlap is not None:
        overlap.record = timer.record
    rule = LeaveOutFailed(trainer) if recipe.aggregation == "sum_then_normalize" else None
    keep_sample_ids(trainer)
    trainer.add_callback(RolloutLog(trainer, recipe, timer, rule, overlap))
    if recipe.eval_benchmark is not None:
        trainer.add_callback(CheckpointEval(trainer, recipe))
    return trainer


def keep_sample_ids(trainer: Any) -> None:
    """Make TRL keep each rollout's sample id beside its completion, as an extra column of its logs.

    TRL (>= 1.16) gathers the columns its ``_log_completion_extra`` is given over all processes, in
    the order of the completions, into ``trainer._logs["extra"]`` and into its completions table.
    The ids are taken from the rows TRL scores, as its reward call gets them.
    """
    log = getattr(trainer, "_log_completion_extra", None)
    calculate = getattr(trainer, "_calculate_rewards", None)
    if log is None or calculate is None:
        return  # rollouts.jsonl then has "sample_id": null

    def calculate_rewards(inputs: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        log("sample_id", [row.get("sample_id") for row in inputs])
        return calculate(inputs, *args, **kwargs)

    trainer._calculate_rewards = calculate_rewards


def overlap_for(recipe: Recipe, config: Any, funcs: list[Any], trainer_class: type) -> Overlap | None:
    """The recipe's judging that overlaps generation, or None: ``overlap_chunks`` 1, or a TRL without the means.

    Raises:
        ConfigError: the chunks cannot split each process's rollouts on whole groups.
    """
    if recipe.overlap_chunks == 1:
        return None
    processes = max(1, int(config.world_size))
    rows = config.generation_batch_size // processes
    source = f"generation batch {config.generation_batch_size} over {processes} process(es)"
    check_chunks(recipe.overlap_chunks, rows, recipe.num_generations, source)
    missing = missing_support(trainer_class)
    if missing:
        warnings.warn(
            f"overlap_chunks {recipe.overlap_chunks}: this TRL's GRPOTrainer lacks {', '.join(missing)}; rollouts "
            "are generated in one batch and judged after it",
            UserWarning,
            stacklevel=2,
        )
        return None
    return Overlap(recipe.overlap_chunks, funcs)


def train(recipe: Recipe) -> dict[str, Any]:
    """Train; return the last step's log entry."""
    check_recipe(recipe)
    check_service_up(recipe)
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.json", json.dumps(recipe.to_dict(), indent=2, sort_keys=True) + "\n")
    if recipe.precision_verified_by() == TEXT_ONLY:
        warnings.warn(
            "text_only_precision: caption facts are verified against the reference caption, not the image, so a "
            "true fact the reference does not mention counts as wrong (steps.jsonl records it on every line)",
            UserWarning,
            stacklevel=2,
        )
    if recipe.reward_service is not None:
        warnings.warn(
            f"reward_service is set: {recipe.reward_service} scores the rewards with its own judges and metric "
            "settings; the recipe's judge, vision_judge, fact_protocol, qa_answer_mode and caprl_samples are not used",
            UserWarning,
            stacklevel=2,
        )
    R.STATS.clear()
    trainer = build_trainer(recipe)
    trainer.train()
    if trainer.is_world_process_zero():  # the whole log history, checkpoint evaluations included, in output_dir
        text = json.dumps(dataclasses.asdict(trainer.state), indent=2, sort_keys=True) + "\n"
        atomic_write_text(out / "trainer_state.json", text)
    return trainer.state.log_history[-1] if trainer.state.log_history else {}


class RolloutLog(callback_base()):  # type: ignore[misc]
    """Write each step's rollouts and reward figures next to the checkpoints."""

    def __init__(
        self, trainer: Any, recipe: Recipe, timer: PhaseTimer, rule: LeaveOutFailed | None = None,
        overlap: Overlap | None = None,
    ) -> None:  # fmt: skip
        self.trainer = trainer
        self.recipe = recipe
        self.timer = timer
        self.rule = rule
        self.overlap = overlap
        self.verified_by = recipe.precision_verified_by()
        out = Path(recipe.output_dir)
        self.rollouts = JsonlLog(out / "rollouts.jsonl")
        self.steps = JsonlLog(out / "steps.jsonl")
        self.seen: dict[str, dict[str, float]] = {}
        self.judge_seen = judge_usage()  # a reward service's figures count from this run's start

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Record the rollouts TRL scored for this step and the reward-side figures."""
        if logs is None or "loss" not in logs or not state.is_world_process_zero:
            return  # TRL gathers every process's rollouts into trainer._logs: the main process writes them
        # TRL keeps the latest generation batch in trainer._logs (what its completion table shows).
        batch = self.trainer._logs
        names = list(batch["rewards"])
        if self.rule is not None and self.rule.scored is not None:  # the rewards as scored, before GRPO's rule
            table = [[_none(v) for v in row] for row in self.rule.scored]
        else:
            table = [[_none(batch["rewards"][n][i]) for n in names] for i in range(len(batch["advantages"]))]
        texts = [R.completion_text(c) for c in batch["completion"]]
        ids = list(batch.get("extra", {}).get("sample_id", []))
        if len(ids) != len(texts):  # a TRL without extra columns
            ids = [None] * len(texts)
        self.rollouts.append_rows(
            {"step": state.global_step, "sample_id": sample_id, "completion": text,
             "rewards": dict(zip(names, row, strict=True)), "advantage": float(advantage)}
            for sample_id, text, row, advantage in zip(ids, texts, table, batch["advantages"], strict=True)
        )  # fmt: skip
        seconds = logs.get("step_time")
        row = {"step": state.global_step, "step_seconds": seconds, "phases": self.timer.take(seconds)}
        row["caption_words"] = _mean_std([float(len(t.split())) for t in texts])
        row["precision_verified_by"] = self.verified_by
        failed = any if self.recipe.aggregation == "sum_then_normalize" else all
        row["left_out"] = sum(failed(v is None for v in r) for r in table)  # advantage 0: a reward failed
        row.update(self._delta())
        row["prefetch"] = self.overlap.take() if self.overlap is not None else None
        for index, name in enumerate(names):  # each reward's mean and std over the gathered rollouts
            values = [r[index] for r in table if r[index] is not None]
            row["rewards"].setdefault(name, {}).update(_mean_std(values))
        self.steps.append_rows([row])
        text_prompts(batch["prompt"])

    def _delta(self) -> dict[str, Any]:
        """Reward figures since the last step, from the rewards' counters."""
        figures: dict[str, Any] = {}
        for name, counter in R.STATS.items():
            before = self.seen.get(name, {})
            now = {k: float(v) for k, v in counter.items()}
            rollouts = now.get("rollouts", 0) - before.get("rollouts", 0)
            figures[name] = {
                "rollouts": rollouts,
                "masked_share": (now.get("masked", 0) - before.get("masked", 0)) / rollouts if rollouts else None,
                "unscored": now.get("unscored", 0) - before.get("unscored", 0),
                "seconds": round(now.get("seconds", 0) - before.get("seconds", 0), 3),
            }
            self.seen[name] = now
        usage = judge_usage()
        judge = {k: v - self.judge_seen.get(k, 0) for k, v in usage.items()}
        self.judge_seen = usage
        return {"rewards": figures, "judge": judge}


def text_prompts(prompts: Any) -> None:
    """Turn each prompt's content parts into one text (an image part as ``<image>``), in place.

    TRL's completions table, logged after this callback, puts the prompts into a ``wandb.Table``,
    and W&B refuses a column of conversations whose content mixes image and text parts (a
    TypeError at the first logged step of any vision-language run with ``report_to: [wandb]``).
    With text content the prompt column is as loggable as the completion column.
    """
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, list):
            prompts[index] = [
                {**m, "content": _content_text(m["content"])} if isinstance(m, dict) and "content" in m else m
                for m in prompt
            ]


def _content_text(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    return "".join(
        "<image>" if isinstance(part, dict) and part.get("type") == "image" else str(part.get("text", ""))
        if isinstance(part, dict) else str(part)
        for part in content
    )  # fmt: skip


def judge_usage() -> dict[str, int]:
    """Judge calls, cache hits and failures: this process's judges', plus what a reward service reported.

    A prefetch's judging counts here as any other (in process, the judges count every call), so a step
    makes the same judge calls with and without overlap; TRL's call then finds the prefetch's
    answers in the cache, and they count as cache hits.
    """
    usage = R.judge_usage()
    for served in (service_usage(), service_usage(prefetch=True)):
        for ours, theirs in (("calls", "judge_calls"), ("cache_hits", "cache_hits"), ("failures", "failures")):
            if theirs in served:
                usage[ours] = usage.get(ours, 0) + int(served[theirs])
    return usage


def _mean_std(values: list[float]) -> dict[str, float | None]:
    """Mean and population standard deviation, None for no values."""
    if not values:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}


def _none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
