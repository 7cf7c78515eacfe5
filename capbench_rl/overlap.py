"""Judging that overlaps generation: a step's rollouts go to the judges chunk by chunk while the rest generate.

TRL generates a step's whole batch, then calls every reward function, so the judges' time comes
after generation, in full. :class:`Overlap` is TRL's (experimental) ``rollout_func``: it
generates the process's prompts in ``chunks`` pieces of whole GRPO groups, each exactly as TRL's
own path generates the batch (``_tokenize_prompts``, then ``_generate_single_turn``), and sends
each piece, as soon as it is generated, to every reward function in the background (a
*prefetch*, on an event loop of its own) while the next piece generates.

The prefetch's values are thrown away. When TRL then scores the whole batch, each judge request
is answered from capbench's judge-call cache, or joins the prefetch's identical request still in
flight (capbench's cached engine sends it once), and a reward service answers from its own
cache: the rewards are those of a step without overlap, by construction. A prefetch that fails,
or misses (a completion decoded otherwise), costs time, never a value: TRL's call computes it
again and reports a failure as it always does.

A prefetch counts nothing in the rewards' figures (:data:`capbench_rl.rewards.PREFETCH`). Every
rollout phase ends its prefetches before it returns: it waits for them (they are done, or nearly:
TRL's call needed the same judge requests), cancels any still running after a grace period, and
cancels them at once when the phase raises (KeyboardInterrupt included).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from capbench.errors import ConfigError
from capbench_rl import rewards as R

#: The GRPOTrainer methods the overlap calls or wraps, besides its ``rollout_func`` argument.
METHODS = ("_tokenize_prompts", "_generate_single_turn", "_generate_and_score_completions")
#: TRL's reward arguments a rollout's dataset columns never become.
NOT_COLUMNS = ("prompt", "completion", "completion_ids")
#: Seconds a rollout phase waits, after TRL's rewards, for prefetches still running before it cancels them.
GRACE_SECONDS = 10.0

log = logging.getLogger(__name__)


def missing_support(trainer_class: type) -> list[str]:
    """What ``trainer_class`` (TRL's GRPOTrainer) lacks for the overlap: empty when it has everything."""
    try:
        parameters = inspect.signature(trainer_class.__init__).parameters  # type: ignore[misc]
    except (TypeError, ValueError):
        parameters = {}  # type: ignore[assignment]
    missing = [] if "rollout_func" in parameters else ["rollout_func"]
    return missing + [name for name in METHODS if not callable(getattr(trainer_class, name, None))]


def check_chunks(chunks: int, rows: int, group: int, source: str) -> None:
    """Refuse ``chunks`` that cannot split ``rows`` rollouts per process on whole groups of ``group``.

    Args:
        chunks: The recipe's ``overlap_chunks``.
        rows: Rollouts each process generates at once.
        group: Rollouts per prompt (``num_generations``).
        source: Where ``rows`` comes from, in the recipe's words, for the error.

    Raises:
        ConfigError: ``chunks`` below 1, or above the number of whole groups each process generates.
    """
    if chunks < 1:
        raise ConfigError(f"overlap_chunks must be at least 1 (1: no overlap), not {chunks}")
    if chunks == 1:
        return
    groups, rest = divmod(rows, group)
    if rest or chunks > groups:
        whole = f"{groups} whole group(s)" if not rest else f"no whole groups ({rows} rollouts)"
        raise ConfigError(
            f"overlap_chunks {chunks}: each process generates {whole} of num_generations {group} per step "
            f"({source}); set overlap_chunks to {'at most ' + str(groups) if not rest and groups else '1'}"
        )


def chunk_bounds(rows: int, group: int, chunks: int) -> list[tuple[int, int]]:
    """Row ranges of at most ``chunks`` chunks on whole groups, the larger first.

    The last chunk's judging is what generation cannot hide, so it gets the fewest groups. Rows
    that are not whole groups (a group split over processes, an odd evaluation batch) make one chunk.
    """
    groups, rest = divmod(rows, group)
    count = 1 if rest or groups == 0 else max(1, min(chunks, groups))
    if count == 1:
        return [(0, rows)]
    size, extra = divmod(groups, count)
    bounds, start = [], 0
    for index in range(count):
        end = start + (size + (index < extra)) * group
        bounds.append((start, end))
        start = end
    return bounds


def decode(trainer: Any, prompts: Sequence[Any], prompt_ids: Sequence[Any], completion_ids: Sequence[Any]) -> list[Any]:
    """The completions as TRL's ``_generate`` decodes them after the rollout function returns."""
    from trl.data_utils import is_conversational

    if not is_conversational({"prompt": prompts[0]}):
        return list(trainer.processing_class.batch_decode(completion_ids, skip_special_tokens=True))
    tokenizer = getattr(trainer, "_tokenizer", trainer.processing_class)
    if getattr(tokenizer, "response_template", None) is not None or getattr(tokenizer, "response_schema", None):
        from trl.chat_template_utils import parse_response

        tools = getattr(trainer, "tools", None)
        return [
            [parse_response(tokenizer, ids, prefix=prompt_ids[i], tools=tools)] for i, ids in enumerate(completion_ids)
        ]
    contents = trainer.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
    return [[{"role": "assistant", "content": content}] for content in contents]


def _ignore(*args: Any, **kwargs: Any) -> None:
    """TRL's ``log_extra`` and ``log_metric`` for a prefetch: it logs nothing."""


class Overlap:
    """TRL's ``rollout_func``: generate in chunks of whole groups and judge each chunk while the next generates.

    Args:
        chunks: Chunks per rollout phase (at most the groups each process generates).
        reward_funcs: The trainer's reward functions; the async ones are prefetched.
        grace: Seconds to wait, after TRL's rewards, for prefetches still running before cancelling them.
    """

    def __init__(self, chunks: int, reward_funcs: Sequence[Any], grace: float = GRACE_SECONDS) -> None:
        from trl.trainer.utils import is_async_callable

        self.chunks = chunks
        self.funcs = [f for f in reward_funcs if is_async_callable(f)]
        self.grace = grace
        #: Receives each prefetch's interval (a :class:`capbench_rl.timing.PhaseTimer`'s ``record``).
        self.record: Callable[[str, float, float], None] | None = None
        self.inputs: list[dict[str, Any]] | None = None  # the rollout phase's rows, aligned with its prompts
        self.running: _Prefetches | None = None
        self.figures: Counter[str] = Counter()
        self.lock = threading.Lock()

    def attach(self, trainer: Any) -> None:
        """Wrap the trainer's rollout phase: keep its rows for the prefetch, end the prefetches with it."""
        phase = trainer._generate_and_score_completions

        @functools.wraps(phase)
        def rollout_phase(inputs: list[dict[str, Any]]) -> Any:
            self.inputs = inputs
            try:
                result = phase(inputs)
            except BaseException:
                self._end(cancel=True)
                raise
            finally:
                self.inputs = None
            self._end(cancel=False)
            return result

        trainer._generate_and_score_completions = rollout_phase

    def rollout(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        """Generate ``prompts`` chunk by chunk as TRL would in one batch, prefetching each chunk's rewards."""
        group = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
        prompt_ids: list[Any] = []
        completion_ids: list[Any] = []
        logprobs: list[Any] = []
        bounds = chunk_bounds(len(prompts), group, self.chunks)
        for start, end in bounds:
            ids, images, fields = trainer._tokenize_prompts(prompts[start:end])
            done, probs = trainer._generate_single_turn(ids, images, fields, group)
            prompt_ids += list(ids)
            completion_ids += list(done)
            logprobs.append(probs)
            self._prefetch(trainer, prompts[start:end], list(ids), list(done), start)
        with self.lock:
            self.figures["chunks"] += len(bounds)
        has_logprobs = all(p is not None for p in logprobs)
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": completion_ids,
            "logprobs": [row for part in logprobs for row in part] if has_logprobs else None,
        }

    def take(self) -> dict[str, int]:
        """The prefetch figures since the last call: generation calls, rollouts prefetched, errors, cancelled."""
        with self.lock:
            figures = {key: int(self.figures[key]) for key in ("chunks", "rollouts", "errors", "cancelled")}
            self.figures.clear()
        return figures

    def _prefetch(self, trainer: Any, prompts: list[Any], prompt_ids: list[Any], done: list[Any], start: int) -> None:
        """Start every async reward on one chunk in the background, with the arguments TRL will pass them."""
        rows = self.inputs[start : start + len(prompts)] if self.inputs is not None else []
        if not self.funcs or len(rows) != len(prompts):
            return  # no rows to score with (the rollout function was called outside a rollout phase)
        try:
            completions = decode(trainer, prompts, prompt_ids, done)
        except Exception as exc:  # TRL decodes again after generation; without a prefetch, that is all
            log.warning("prefetch skipped: decoding a chunk failed (%s: %s)", type(exc).__name__, exc)
            with self.lock:
                self.figures["errors"] += 1
            return
        columns = {key: [row[key] for row in rows] for key in rows[0] if key not in NOT_COLUMNS}
        arguments = {
            **columns, "prompts": prompts, "completions": completions, "completion_ids": done,
            "trainer_state": trainer.state, "log_extra": _ignore, "log_metric": _ignore,
        }  # fmt: skip
        if self.running is None:
            self.running = _Prefetches()
        self.running.submit(self._score(arguments))
        with self.lock:
            self.figures["rollouts"] += len(prompts)

    async def _score(self, arguments: dict[str, Any]) -> list[str]:
        """Call every reward on one chunk, flagged as a prefetch; return its errors in words."""
        start = time.perf_counter()
        R.PREFETCH.set(True)  # this task's context only: the calls it makes, and their threads, inherit it
        try:
            results = await asyncio.gather(*(func(**arguments) for func in self.funcs), return_exceptions=True)
        finally:
            if self.record is not None:
                self.record("prefetch", start, time.perf_counter())
        return [
            f"{getattr(func, '__name__', func)}: {type(result).__name__}: {result}"
            for func, result in zip(self.funcs, results, strict=True)
            if isinstance(result, BaseException)
        ]

    def _end(self, cancel: bool) -> None:
        """End this rollout phase's prefetches: wait for them (after TRL's rewards) or cancel them (on an error)."""
        running, self.running = self.running, None
        if running is None:
            return
        errors, cancelled = running.end(0.0 if cancel else self.grace)
        with self.lock:
            self.figures["errors"] += len(errors)
            self.figures["cancelled"] += cancelled
        if errors and not cancel:
            log.warning(
                "%d prefetch(es) failed (%s); TRL's reward call scored those rollouts again", len(errors), errors[0]
            )


class _Prefetches:
    """One rollout phase's prefetches: an event loop on a daemon thread of its own, ended with the phase."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="capbench-rl-prefetch", daemon=True)
        self.thread.start()
        self.futures: list[concurrent.futures.Future[list[str]]] = []

    def submit(self, coroutine: Coroutine[Any, Any, list[str]]) -> None:
        """Run ``coroutine`` on the loop."""
        self.futures.append(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def end(self, grace: float) -> tuple[list[str], int]:
        """Wait ``grace`` s, cancel what still runs, stop the loop; return the errors and the cancelled count."""
        done, pending = concurrent.futures.wait(self.futures, timeout=grace)
        if pending:
            with contextlib.suppress(concurrent.futures.TimeoutError):  # a task that ignores cancelling
                asyncio.run_coroutine_threadsafe(_cancel_tasks(), self.loop).result(timeout=10)
        errors: list[str] = []
        for future in done:
            try:
                errors += future.result()
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            if not pending:  # the reward threads are done: let the executor's threads end with the phase
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()  # a cancelled reward's thread finishes its judge call, then ends (not waited for)
        return errors, len(pending)


async def _cancel_tasks() -> None:
    """Cancel every task of the running loop but this one, and let them finish cancelling."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
