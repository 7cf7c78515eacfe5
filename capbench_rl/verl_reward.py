"""capbench's reward service as a verl custom reward function, images included.

verl loads a reward function from a file (``reward.custom_reward_function.path`` and ``.name``;
``custom_reward_function`` at the top level in verl before its reward loop) and merges
``custom_reward_function.reward_kwargs`` into every call (``verl/trainer/ppo/reward.py``,
``get_custom_reward_fn``). This module offers the three forms verl's reward managers call:

- :func:`compute_score` ``(data_source, solution_str, ground_truth, extra_info=None, **kwargs)``,
  one rollout, for the ``naive`` manager (the reward loop's, which runs it in a thread, and the
  legacy one) and ``dapo``/``gdpo``;
- :func:`compute_score_async`, the same as a coroutine: the reward loop awaits it
  (``inspect.iscoroutinefunction``), so many rollouts are in flight at once and the service
  batches them;
- :func:`compute_score_batch` ``(data_sources, solution_strs, ground_truths, extra_infos, **kwargs)``,
  the legacy ``batch`` manager's form: one request for the whole batch.

Each returns, per rollout, a dict with a float ``score`` (verl's reward), one float per reward
(what verl logs as reward extra info, and what its ``gdpo`` estimator reads by
``algorithm.gdpo_reward_keys``), ``failed`` (how many rewards failed) and ``errors`` (their
reasons, ``""`` if none). Every rollout's dict has the same keys, as verl requires.

**A failed reward.** verl needs a float score, so ``score`` is the weighted sum over the rewards
that did not fail: a failed reward adds nothing to it, as if it were 0. The failure is not
hidden: its own key holds ``failed_value`` (NaN unless set), ``failed`` counts it and
``errors`` names its reason. NaN reaches verl's advantages if an estimator reads that key
(``gdpo``), so set ``failed_value`` for ``gdpo`` knowing what it means.

Settings come from ``reward_kwargs``, else from the environment:

| kwarg | environment | meaning |
|---|---|---|
| ``url`` | ``CAPBENCH_SERVE_URL`` | the service's base URL |
| ``rewards`` | ``CAPBENCH_SERVE_REWARDS`` | names (weight 1) or ``{name: weight}``; env: ``a=1,b=0.5`` |
| ``token_env`` | | the variable holding the bearer token (``CAPBENCH_SERVE_TOKEN``) |
| ``images`` | | ``path`` (shared file system) or ``base64`` (inline) |
| ``length_band`` | | [τ_l, τ_u] masking ``balcap_linguistic`` (default [0.5, 2]; null: none) |
| ``failed_value`` | | a failed reward's own key (default NaN) |
| ``timeout``, ``retries``, ``max_wait`` | | as :func:`capbench_rl.service_client.score` takes them |

The image comes from ``extra_info`` (``image_path``, or ``image``: a path, a URL, bytes, a
datasets image dict; or ``images``, the first of a list), the reference caption from
``ground_truth`` (a string, or a mapping with ``reference_caption``), and the reference facts,
questions, domain and sample id from ``extra_info`` (or a mapping ``ground_truth``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from capbench.errors import ConfigError
from capbench_rl import rewards as R
from capbench_rl import service_client as S
from capbench_rl import service_items as items_

URL_ENV = "CAPBENCH_SERVE_URL"
REWARDS_ENV = "CAPBENCH_SERVE_REWARDS"
#: The reward the length band masks (as capbench-rl masks it).
MASKED = "balcap_linguistic"
#: Keyword arguments verl itself adds to a call (with a reward model): accepted and not used.
VERL_KWARGS = frozenset({"reward_router_address", "reward_model_tokenizer"})
_SETTINGS = frozenset(
    {"url", "rewards", "token_env", "images", "length_band", "failed_value", "timeout", "retries", "max_wait"}
)
_warned: set[str] = set()


class Settings(NamedTuple):
    """Where the service is, which rewards it computes with which weights, and how failures are reported.

    A NamedTuple, not a dataclass: verl loads this file as a module it does not register in
    ``sys.modules`` (``verl.utils.import_utils.load_module``), where a dataclass cannot be built.
    """

    url: str
    weights: dict[str, float]
    token_env: str = S.TOKEN_ENV
    images: items_.ImageMode = "path"
    band: tuple[float, float] | None = (0.5, 2.0)
    failed_value: float = math.nan
    timeout: float = 600.0
    retries: int = 8
    max_wait: float = 600.0

    @classmethod
    def read(cls, kwargs: Mapping[str, Any]) -> Settings:
        """Settings from verl's ``reward_kwargs`` (merged into the call's kwargs), else the environment."""
        unknown = sorted(set(kwargs) - _SETTINGS - VERL_KWARGS - _warned)
        if unknown:
            _warned.update(unknown)
            warnings.warn(
                f"capbench's verl reward ignores reward_kwargs {', '.join(unknown)}; it reads "
                f"{', '.join(sorted(_SETTINGS))}", UserWarning, stacklevel=3,
            )  # fmt: skip
        url = kwargs.get("url") or os.environ.get(URL_ENV)
        if not url:
            raise ConfigError(
                f"set the reward service's URL: +reward.custom_reward_function.reward_kwargs.url=http://HOST:PORT, "
                f"or {URL_ENV}"
            )
        rewards = kwargs.get("rewards") or os.environ.get(REWARDS_ENV)
        if not rewards:
            raise ConfigError(f"name the rewards: reward_kwargs.rewards=[balcap_precision, …], or {REWARDS_ENV}")
        band = kwargs.get("length_band", (0.5, 2.0))
        band = None if band is None or str(band).lower() in ("null", "none") else tuple(float(b) for b in band)
        if band is not None and not (len(band) == 2 and 0 <= band[0] < band[1]):
            raise ConfigError(f"length_band must be [low, high] with 0 <= low < high, got {list(band)}")
        images = kwargs.get("images") or "path"
        if images not in ("path", "base64"):
            raise ConfigError(f"reward_kwargs.images must be path or base64, not {images!r}")
        failed = kwargs.get("failed_value")
        return cls(
            url=S.check_url(str(url), "the reward service's url"),
            weights=_weights(rewards),
            token_env=str(kwargs.get("token_env") or S.TOKEN_ENV),
            images=images,
            band=band,  # type: ignore[arg-type]
            failed_value=math.nan if failed is None else float(failed),
            timeout=float(kwargs.get("timeout", 600.0)),
            retries=int(kwargs.get("retries", 8)),
            max_wait=float(kwargs.get("max_wait", 600.0)),
        )

    def call(self) -> dict[str, Any]:
        """The keyword arguments of a scoring call."""
        return {"token_env": self.token_env, "timeout": self.timeout, "retries": self.retries,
                "max_wait": self.max_wait}  # fmt: skip


def _weights(rewards: Any) -> dict[str, float]:
    """Reward weights from a mapping, a list of names (weight 1), or text ``a=1,b=0.5`` / ``a,b``."""
    if isinstance(rewards, str):
        pairs = [part.strip().partition("=") for part in rewards.split(",") if part.strip()]
        return {name.strip(): float(weight) if sep else 1.0 for name, sep, weight in pairs}
    if isinstance(rewards, Mapping):
        return {str(name): float(weight) for name, weight in rewards.items()}
    return {str(name): 1.0 for name in rewards}


def _item(
    settings: Settings, index: int, solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None
) -> tuple[dict[str, Any] | None, bool]:
    """One rollout as an item (None when no reward is left to ask for), and whether the band masked it."""
    extra = dict(extra_info or {})
    truth = (
        dict(items_.plain(ground_truth)) if isinstance(ground_truth, Mapping) else {"reference_caption": ground_truth}
    )
    known = {**extra, **{k: v for k, v in truth.items() if v is not None}}
    reference = known.get("reference_caption")
    masked = False
    if settings.band is not None and MASKED in settings.weights:
        if reference is None:
            raise ConfigError("the length band needs the reference caption: give it as ground_truth")
        masked = not R.in_band(R.length_ratio(solution_str, str(reference)), settings.band)
    asked = [name for name in settings.weights if not (masked and name == MASKED)]
    if not asked:
        return None, masked
    sample = known.get("sample_id")
    item: dict[str, Any] = {"id": str(sample) if sample is not None else f"rollout-{index}", "caption": solution_str}
    if reference is not None:
        item.update(items_.reference_fields(reference, known.get("reference_facts"), known.get("questions"),
                                       known.get("domain")))  # fmt: skip
    elif sample is not None:
        item["sample_id"] = str(sample)
    source = next((known[k] for k in ("image_path", "image") if known.get(k) is not None), None)
    if source is None and known.get("images") is not None:
        source = (list(known["images"]) or [None])[0]
    image = items_.image_item(source, settings.images)
    if image is not None:
        item["image"] = image
    if len(asked) < len(settings.weights):
        item["rewards"] = asked
    return item, masked


def _result(settings: Settings, result: Mapping[str, Any] | None, masked: bool) -> dict[str, Any]:
    """verl's dict for one rollout: the weighted score over the rewards that did not fail, each reward, failures."""
    values: dict[str, float] = {}
    errors: list[str] = []
    total = 0.0
    for name, weight in settings.weights.items():
        if masked and name == MASKED:
            value: Any = 0.0
        else:
            value = (result or {}).get("rewards", {}).get(name)
        if value is None:
            reason = (result or {}).get("errors", {}).get(name, "no value and no reason given")
            errors.append(f"{name}: {reason}")
            values[name] = settings.failed_value
            continue
        values[name] = float(value)
        total += weight * float(value)
    return {"score": total, **values, "failed": len(errors), "errors": "; ".join(errors)}


def _prepare(
    settings: Settings, solution_strs: Sequence[str], ground_truths: Sequence[Any], extra_infos: Sequence[Any]
) -> tuple[list[dict[str, Any]], list[tuple[int | None, bool]]]:
    """The items to send, and per rollout: its index among them (None: nothing sent) and whether it was masked."""
    items: list[dict[str, Any]] = []
    where: list[tuple[int | None, bool]] = []
    for index, (text, truth, extra) in enumerate(zip(solution_strs, ground_truths, extra_infos, strict=True)):
        item, masked = _item(settings, index, str(text), truth, extra)
        where.append((len(items) if item is not None else None, masked))
        if item is not None:
            items.append(item)
    return items, where


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Score a batch of rollouts in one request (verl's ``batch`` reward manager); one dict per rollout."""
    settings = Settings.read(kwargs)
    extras = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    items, where = _prepare(settings, solution_strs, ground_truths, extras)
    results = S.score(settings.url, items, list(settings.weights), **settings.call()) if items else []
    return [_result(settings, results[i] if i is not None else None, masked) for i, masked in where]


def compute_score(
    data_source: Any, solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Score one rollout (verl's ``naive``, ``dapo`` and ``gdpo`` reward managers)."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]


async def compute_score_async(
    data_source: Any, solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Score one rollout without blocking verl's reward loop (it awaits a coroutine function)."""
    settings = Settings.read(kwargs)
    items, where = _prepare(settings, [solution_str], [ground_truth], [extra_info])
    results = await S.ascore(settings.url, items, list(settings.weights), **settings.call()) if items else []
    index, masked = where[0]
    return _result(settings, results[index] if index is not None else None, masked)
