"""capbench metrics as TRL reward functions, with length-conditional masking and a length penalty.

The rewards: BalCapRL's precision, recall and linguistic quality; CapRL's QA utility; for
ablations, DCScore and CaptionQA; and any reward an installed plugin's metric declares, each
scaled into [0, 1] (:func:`metric_rewards`, the table the metrics declare).

Each reward is a module-level ``async def f(prompts, completions, **columns) -> list[float | None]``
configured with :func:`functools.partial`: TRL detects coroutine functions with
:func:`inspect.iscoroutinefunction`, which sees through a partial; a partial pickles (so the
rewards survive TRL's and accelerate's process boundaries); and TRL logs a partial under the
wrapped function's name, so each reward has a function of its own (``balcap_precision``, …).

The judges are described by a :class:`JudgeSetup` (picklable) and built once per process, on
the first call, behind capbench's content-addressed cache: a caption judged during training is
not judged again in evaluation, and the three BalCapRL rewards of one rollout batch share one
set of judge calls (the second and third reward functions are answered by the cache).

A judge failure gives ``None`` for that rollout's reward, counted in :data:`STATS`. It is never
scored as 0: with c-GDPO, TRL leaves it out of that reward's group statistics; with GRPO,
capbench leaves the whole rollout out of its group and gives it advantage 0
(:class:`capbench_rl.advantages.LeaveOutFailed`), where TRL alone would sum the failed reward as 0.

A reward asks the judges only what its value needs: precision and recall run the BalCap
metric without its linguistic rating, and the linguistic reward rates only the rollouts inside
the length band; the stages they share (facts, matches, verdicts) are answered by the cache.

A call made while :data:`PREFETCH` is set (the judging that overlaps generation,
:mod:`capbench_rl.overlap`) counts nothing in :data:`STATS`: its rollouts are scored again, and
counted, when TRL asks for the step's rewards.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import capbench
from capbench.errors import ConfigError
from capbench.records import Caption, Question, Sample

Unit = Literal["words", "tokens"]
Options = tuple[tuple[str, Any], ...]
"""A metric's config fields as (name, value) pairs: hashable, so each set builds one metric per process."""

#: The per-sample values that read a fact metric's linguistic rating; a reward on any other value runs
#: its metric without the rating stage (a rating nobody reads is judge cost for nothing).
RATED_VALUES = ("linguistic", "b_capscore")

#: Per reward name: calls, rollouts, unscored (judge failed), masked (length), seconds.
STATS: dict[str, Counter[str]] = {}
_STATS_LOCK = threading.Lock()
#: Set in the context of a prefetch (:mod:`capbench_rl.overlap`): its calls add nothing to :data:`STATS`,
#: nor to a reward service's usage, and log no warning; TRL's own call for the step counts and reports them.
PREFETCH: ContextVar[bool] = ContextVar("capbench_rl_prefetch", default=False)


@dataclass(frozen=True)
class JudgeSetup:
    """Which judges score the rollouts: picklable, built into engines once per process."""

    judge: str = "llamacpp:smollm2"
    """Text judge as ENGINE:MODEL (or a YAML spec file)."""
    judge_options: tuple[str, ...] = ()
    """Its engine options, as KEY=VALUE strings."""
    vision_judge: str | None = None
    """Judge that sees the image, for fact verification; None verifies against the reference caption."""
    vision_judge_options: tuple[str, ...] = ()
    """The vision judge's engine options, as KEY=VALUE strings."""
    fact_protocol: str = "embedded"
    """DCScore/BalCap judge settings: official, greedy or embedded (see FactConfig.preset)."""
    cache: str | None = None
    """Path of the judge-call cache; None = $CAPBENCH_HOME/cache.sqlite (shared with `capbench eval`)."""
    seed: int = 0
    """Seed of judge sampling."""


@dataclass
class _Runtime:
    setup: JudgeSetup
    metrics: dict[Any, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    built: dict[str, Any] | None = None

    @property
    def judges(self) -> dict[str, Any]:
        """The judges, built (loaded) on first use: a reward whose metric needs no judge loads none."""
        if self.built is None:
            self.built = capbench.build_judges(config(self.setup))
        return self.built


_RUNTIMES: dict[JudgeSetup, _Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def runtime(setup: JudgeSetup) -> _Runtime:
    """Return this process's judges for ``setup``, building them on first use."""
    with _RUNTIMES_LOCK:
        if setup not in _RUNTIMES:
            _RUNTIMES[setup] = _Runtime(setup)
        return _RUNTIMES[setup]


def config(setup: JudgeSetup, metrics: Mapping[str, Mapping[str, Any]] | None = None) -> capbench.EvalConfig:
    """The library settings of ``setup``'s judges (and of ``metrics``, with their settings)."""
    return capbench.EvalConfig(
        judge=setup.judge,
        judge_options=list(setup.judge_options),
        vision_judge=setup.vision_judge,
        vision_judge_options=list(setup.vision_judge_options),
        fact_protocol=setup.fact_protocol,
        cache=setup.cache if setup.cache is not None else True,
        seed=setup.seed,
        metrics=dict(metrics or {}),
    )


def judge_usage() -> dict[str, int]:
    """Judge calls, cache hits and failures of every judge this process built, summed."""
    total: Counter[str] = Counter()
    with _RUNTIMES_LOCK:
        for state in _RUNTIMES.values():
            for judge in (state.built or {}).values():
                total.update(calls=judge.stats.calls, cache_hits=judge.stats.cache_hits, failures=judge.stats.failures)
    return dict(total)


def completion_text(completion: Any) -> str:
    """The caption of one completion: a string, or TRL's conversational list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # a list of typed parts
            return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
        return str(content)
    raise ConfigError(f"a completion must be a string or a list of chat messages, not {type(completion).__name__}")


def length_ratio(caption: str, reference: str, unit: Unit = "words", tokenizer: Any = None) -> float:
    """ρ = caption length / reference length, in words or in a tokenizer's tokens.

    Raises:
        ConfigError: an empty reference (ρ is undefined), or ``unit="tokens"`` without a tokenizer.
    """
    if unit == "tokens":
        if tokenizer is None:
            raise ConfigError("length unit 'tokens' needs a tokenizer")
        count: Callable[[str], int] = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    elif unit == "words":
        count = lambda text: len(text.split())  # noqa: E731
    else:
        raise ConfigError(f"length unit must be 'words' or 'tokens', not {unit!r}")
    reference_length = count(reference)
    if reference_length == 0:
        raise ConfigError("a reference caption is empty: the length ratio needs a reference length")
    return count(caption) / reference_length


@functools.cache
def _load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _tokenizer(unit: Unit, name: str | None) -> Any:
    """The policy's tokenizer when lengths are counted in tokens (loaded once per process), else None."""
    return _load_tokenizer(name) if unit == "tokens" and name else None


def in_band(rho: float, band: tuple[float, float]) -> bool:
    """Whether ρ lies in the closed band [τ_l, τ_u]."""
    low, high = band
    return low <= rho <= high


def linear_length_penalty(rho: float, coef: float = 1.0) -> float:
    """The length-penalty baseline: −coef × |ρ − 1| (0 at the reference's length).

    The BalCapRL paper compares masking with "a linear length penalty" without giving its
    form; this symmetric one is capbench's assumption (see docs/rl.md).
    """
    return -coef * abs(rho - 1.0)


def metric_rewards() -> dict[str, tuple[str, str, float]]:
    """Reward name -> (metric, the per-sample value that becomes the reward, divisor into [0, 1]).

    The table is what the installed metrics declare (``rewards`` in :class:`capbench.MetricInfo`),
    capbench's own and plugins' alike; see :func:`capbench.reward_table`.
    """
    return capbench.reward_table()


class MetricReward:
    """A reward a metric declares, as a TRL reward function: picklable, async, logged under the reward's name.

    capbench's own rewards are module-level functions (named for TRL's logs); a plugin's reward
    is an instance of this class, whose ``__name__`` is the reward name.
    """

    def __init__(self, name: str, **settings: Any) -> None:
        self.__name__ = name
        self.name = name
        self.settings = settings

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        """Score the rollouts with the reward's metric."""
        return await metric_reward(prompts, completions, name=self.name, **{**self.settings, **columns})


async def metric_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    name: str,
    setup: JudgeSetup,
    reference_caption: Sequence[str],
    metric_options: Options = (),
    band: tuple[float, float] | None = None,
    unit: Unit = "words",
    tokenizer: str | None = None,
    **columns: Any,
) -> list[float | None]:
    """Score each rollout with the capbench metric behind reward ``name`` (see :func:`metric_rewards`).

    The rollouts become capbench samples from the dataset columns TRL passes along
    (``sample_id``, ``reference_caption``, ``reference_facts``, ``questions``, ``domain``), so a
    caption scores exactly what ``capbench eval`` gives it, through the same cache. With
    ``band``, a rollout whose length ratio lies outside it gets 0 without asking the judge.
    """
    start = time.perf_counter()
    table = metric_rewards()
    if name not in table:
        raise ConfigError(f"no installed metric declares reward {name!r}; the rewards: {', '.join(sorted(table))}")
    metric, key, scale = table[name]
    captions = [completion_text(c) for c in completions]
    counter = _tokenizer(unit, tokenizer)
    masked = [
        band is not None and not in_band(length_ratio(c, r, unit, counter), band)
        for c, r in zip(captions, reference_caption, strict=True)
    ]
    samples = _samples(reference_caption, columns)
    todo = [i for i, m in enumerate(masked) if not m]
    values = await asyncio.to_thread(
        _score, setup, metric, metric_options, [samples[i] for i in todo], [captions[i] for i in todo],
        key in RATED_VALUES,
    )  # fmt: skip
    out: list[float | None] = [0.0] * len(captions)
    for i, value in zip(todo, values, strict=True):
        out[i] = None if value.get(key) is None else float(value[key]) / scale
    _count(name, len(captions), sum(v is None for v in out), sum(masked), start)
    return out


def _samples(reference_caption: Sequence[str], columns: Mapping[str, Any]) -> list[Sample]:
    """The rollouts as capbench samples (one per rollout; a group's rollouts share their image's id)."""
    n = len(reference_caption)
    ids = columns.get("sample_id") or [f"rollout-{i}" for i in range(n)]
    facts = columns.get("reference_facts") or [()] * n
    questions = columns.get("questions") or [()] * n
    domains = columns.get("domain") or ["default"] * n
    return [
        Sample(
            str(ids[i]),
            None,
            reference_caption=reference_caption[i],
            reference_facts=tuple(facts[i] or ()),
            questions=tuple(Question.from_dict(q) for q in questions[i] or ()),
            domain=str(domains[i]),
        )
        for i in range(n)
    ]


def _score(
    setup: JudgeSetup,
    metric_name: str,
    options: tuple[tuple[str, Any], ...],
    samples: list[Sample],
    captions: list[str],
    rated: bool = True,
) -> list[Mapping[str, Any]]:
    """Score captions with the metric (without a fact metric's linguistic rating unless ``rated``)."""
    if not samples:
        return []
    state = runtime(setup)
    with state.lock:  # built once per process; scoring itself runs concurrently (below)
        metric = state.metrics.get((metric_name, options, rated))
        if metric is None:
            [metric], _ = capbench.build_metrics(config(setup, {metric_name: dict(options)}))
            if not rated and getattr(metric, "linguistic", False):
                metric.linguistic = False  # FactMetric's switch of the rating stage, on this instance only
            state.metrics[(metric_name, options, rated)] = metric
        judges = state.judges if metric.judge_roles else {}
    # Rewards of one step score at the same time (TRL gathers them): their shared judge calls are
    # sent once, the others wait for the answer (CachedEngine), and a served judge answers them all
    # concurrently, so the CapRL reward does not wait for the BalCapRL ones.
    scores = metric.score(samples, [Caption(s.id, c) for s, c in zip(samples, captions, strict=True)], judges)
    return [s.values for s in scores]


async def length_penalty_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    reference_caption: Sequence[str],
    coef: float = 1.0,
    unit: Unit = "words",
    tokenizer: str | None = None,
    **columns: Any,
) -> list[float | None]:
    """The linear length penalty per rollout (the paper's baseline to masking)."""
    start = time.perf_counter()
    counter = _tokenizer(unit, tokenizer)
    out: list[float | None] = [
        linear_length_penalty(length_ratio(completion_text(c), r, unit, counter), coef)
        for c, r in zip(completions, reference_caption, strict=True)
    ]
    _count("length_penalty_reward", len(out), 0, 0, start)
    return out


async def balcap_precision(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """BalCapRL precision: share of the caption's facts judged correct and pointable."""
    return await metric_reward(prompts, completions, name="balcap_precision", **columns)


async def balcap_recall(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """BalCapRL recall: share of the reference's facts the caption covers."""
    return await metric_reward(prompts, completions, name="balcap_recall", **columns)


async def balcap_linguistic(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """BalCapRL linguistic quality, 0 outside the length band (``band=None`` masks nothing)."""
    return await metric_reward(prompts, completions, name="balcap_linguistic", **columns)


async def caprl_qa_utility(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """CapRL's QA utility: share of N drawn questions a text judge answers right from the caption."""
    return await metric_reward(prompts, completions, name="caprl_qa_utility", **columns)


async def dcscore_reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """The image's DCScore / 100 (ablations)."""
    return await metric_reward(prompts, completions, name="dcscore", **columns)


async def captionqa_reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """The image's CaptionQA score / 100, "cannot answer" credit included (ablations)."""
    return await metric_reward(prompts, completions, name="captionqa", **columns)


def reward(func: Callable[..., Any], **settings: Any) -> functools.partial[Any]:
    """Configure a reward function; TRL logs it under the wrapped function's name."""
    return functools.partial(func, **settings)


def balcap_rewards(
    setup: JudgeSetup, band: tuple[float, float] | None = (0.5, 2.0), unit: Unit = "words"
) -> list[functools.partial[Any]]:
    """The three BalCapRL rewards in order (precision, recall, linguistic masked by ``band``)."""
    return [
        reward(balcap_precision, setup=setup),
        reward(balcap_recall, setup=setup),
        reward(balcap_linguistic, setup=setup, band=band, unit=unit),
    ]


def _count(name: str, rollouts: int, unscored: int, masked: int, start: float) -> None:
    if PREFETCH.get():
        return
    with _STATS_LOCK:
        stats = STATS.setdefault(name, Counter())
        stats["calls"] += 1
        stats["rollouts"] += rollouts
        stats["unscored"] += unscored
        stats["masked"] += masked
        stats["seconds"] += time.perf_counter() - start
