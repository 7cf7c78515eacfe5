"""Check a recipe before anything loads: the policy's name, the judges, TRL's settings, the data's paths.

``capbench-rl train`` runs these checks on ``--dry-run`` and before a real run loads a model,
so a recipe that could only fail later (after the policy has loaded, after a hub's retries, at
the first reward) fails at once, in one line that names the field and the fix. Nothing here
loads a model, reads an image or reaches a network, except :func:`check_service_up`, which a
real run (not ``--dry-run``) calls once at its start.
"""

from __future__ import annotations

import difflib
import re
import warnings
from pathlib import Path
from typing import Any

from capbench.engines import check_options, engine_class, is_hub_id, local_model_folder, parse_engine
from capbench.errors import ConfigError
from capbench_rl.recipe import TRL_FIELDS, Recipe

#: Placeholders a recipe template leaves for the user to fill (REPLACE-ME, <model>, PATH/TO/MODEL).
_PLACEHOLDER = re.compile(r"replace[-_ ]?me|change[-_ ]?me|fill[-_ ]?me|path/to/|[<>]", re.IGNORECASE)
#: GRPOConfig fields that capbench-rl sets itself, and where a recipe sets them instead.
_SET_BY_CAPBENCH = {
    "reward_weights": "the weights come from the recipe's rewards",
    "multi_objective_aggregation": "set the recipe's aggregation",
    "log_completions": "capbench-rl sets it: rollouts.jsonl needs it",
    "logging_steps": "capbench-rl sets it to 1: steps.jsonl needs every step",
}


#: The oldest TRL whose GRPOTrainer behaves as capbench-rl relies on and docs/rl.md describes (the
#: ``trl`` requirement of the ``rl`` extra in pyproject.toml says the same): the one the tests run on.
MIN_TRL = "1.16"
#: GRPOConfig settings that take one of a few values, which TRL checks only where it uses them (after
#: the first generation and judge calls, or never): the values TRL 1.16 takes.
TRL_CHOICES: dict[str, tuple[Any, ...]] = {
    "scale_rewards": ("group", "batch", "none", True, False),
    "loss_type": ("grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo"),
    "importance_sampling_level": ("token", "sequence"),
    "vllm_mode": ("server", "colocate"),
    "vllm_model_impl": ("transformers", "vllm"),
    "vllm_importance_sampling_mode": ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
}


def check_recipe(recipe: Recipe) -> None:
    """Refuse a recipe that a real run could only fail on later.

    Raises:
        ConfigError: one line naming the recipe field and how to fix it.
    """
    check_trl_version()
    check_model(recipe.model)
    check_judges(recipe)
    check_trl(recipe.trl)
    check_paths(recipe)
    check_service(recipe)


def check_model(model: str) -> None:
    """Refuse a placeholder or a local path that is not there; accept a hub id (it cannot be checked offline).

    The path rules are capbench's own (:func:`capbench.engines.local_model_folder`), so a model
    that ``capbench eval --model`` refuses is refused here in the same words.
    """
    if not model.strip() or _PLACEHOLDER.search(model):
        raise ConfigError(
            f"model {model!r} is a placeholder; set model to a checkpoint folder or a hub id (org/name), "
            "e.g. --set model=Qwen/Qwen2.5-VL-3B-Instruct"
        )
    local_model_folder(model, "recipe field model")


def check_trl_version() -> None:
    """Refuse a TRL older than :data:`MIN_TRL` (or none), by its installed metadata: nothing is imported."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        installed = version("trl")
    except PackageNotFoundError:
        raise ConfigError(f"capbench-rl needs TRL >= {MIN_TRL}; pip install 'capbench[rl]'") from None
    if Version(installed) < Version(MIN_TRL):
        raise ConfigError(
            f"TRL {installed} is older than capbench-rl supports: its GRPO statistics differ from what capbench-rl "
            f"documents (docs/rl.md); pip install 'trl>={MIN_TRL}'"
        )


def check_judges(recipe: Recipe) -> None:
    """Parse each judge spec and its options as capbench does, without building the engine (nor reaching it)."""
    for name, spec, options in (
        ("judge", recipe.judge, recipe.judge_options),
        ("vision_judge", recipe.vision_judge, recipe.vision_judge_options),
    ):
        if spec is None:
            continue
        try:
            parsed = parse_engine(spec, options)
            engine = engine_class(parsed.backend)  # capbench's own or a plugin's, as capbench eval finds it
            check_options(engine, parsed)
        except ConfigError as exc:
            raise ConfigError(f"recipe field {name}: {exc}") from None
        if name == "vision_judge" and False in (
            getattr(engine, "accepts_images", None),
            parsed.options.get("accepts_images"),
        ):
            raise ConfigError(
                f"recipe field vision_judge: engine {parsed.backend!r} cannot see images; serve a vision-language "
                "model (e.g. vllm serve Qwen/Qwen2.5-VL-72B-Instruct) and set vision_judge: openai:<model>"
            )


def _check_report_to(value: Any) -> None:
    """Refuse a ``trl.report_to`` tracker that is not installed here (transformers would fail at the trainer)."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"trl.report_to must be a tracker name or a list of them (e.g. [tensorboard]), not {value!r}")
    from transformers.integrations import get_available_reporting_integrations

    available = get_available_reporting_integrations()
    for name in names:
        if name not in ("none", "all") and name not in available:
            package = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow"}.get(name, name)
            raise ConfigError(
                f"trl.report_to names {name!r}, which is not installed here: pip install {package} "
                f"(installed trackers: {', '.join(available) or 'none'}), or leave it out of report_to"
            )


def check_trl(settings: dict[str, Any]) -> None:
    """Refuse ``trl`` keys that are not GRPOConfig fields, or that the recipe sets elsewhere."""
    for key in settings:
        if key in TRL_FIELDS:
            raise ConfigError(f"trl.{key} is a recipe field: set {key} at the recipe's top level (or --set {key}=…)")
        if key in _SET_BY_CAPBENCH:
            raise ConfigError(f"trl.{key} cannot be set: {_SET_BY_CAPBENCH[key]}")
    if not settings:
        return
    from dataclasses import fields

    from trl import GRPOConfig

    _check_report_to(settings.get("report_to", []))
    known = {f.name for f in fields(GRPOConfig) if f.init}
    for key, value in settings.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "see TRL's GRPOConfig for its fields"
            raise ConfigError(f"trl.{key} is not a GRPOConfig field; {hint}")
        choices = TRL_CHOICES.get(key, (value,))
        if not any(value == c and type(value) is type(c) for c in choices):
            valid = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
            raise ConfigError(f"trl.{key} must be one of {valid}, not {value!r}")
    if settings.get("use_vllm"):
        _warn_vllm_version()


def _warn_vllm_version() -> None:
    """Say once, in capbench-rl's words, what TRL says five times about the installed vLLM (see cli.py)."""
    try:
        from trl.import_utils import is_vllm_available
    except ImportError:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        is_vllm_available()  # not installed: TRL says so itself when the trainer starts
    for warning in caught[:1]:
        warnings.warn(
            f"trl.use_vllm is set, so TRL drives vLLM for rollouts: {warning.message} Its generation may "
            "fail or change with this vLLM; install a vLLM in TRL's range, or drop trl.use_vllm",
            UserWarning,
            stacklevel=2,
        )


def check_paths(recipe: Recipe) -> None:
    """Refuse local files and folders the recipe names that are not there."""
    for name in ("data_file", "benchmark_file"):
        value = getattr(recipe, name)
        if value is not None and not Path(value).expanduser().is_file():
            raise ConfigError(f"recipe field {name}: {value}: no such file; fix the path (relative to where you run)")
    for name in ("images_dir", "eval_images_dir"):
        value = getattr(recipe, name)
        if value is not None and not Path(value).expanduser().is_dir():
            raise ConfigError(f"recipe field {name}: {value}: no such folder; set it to the folder of the images")
    for name in ("dataset", "eval_dataset"):
        value = getattr(recipe, name)
        if value is not None and not Path(value).expanduser().exists() and not is_hub_id(value):
            raise ConfigError(f"recipe field {name}: {value}: no such folder; set it to a local copy or a hub id")


def check_service(recipe: Recipe) -> None:
    """Refuse a ``reward_service`` that is not an http(s) address; it is not contacted (dry runs stay offline)."""
    if recipe.reward_service is not None:
        from capbench_rl.service_client import check_url

        check_url(recipe.reward_service, "recipe field reward_service")


def check_service_up(recipe: Recipe) -> None:
    """Ask the recipe's reward service for ``/health`` once; refuse if it is down or lacks a reward the recipe names.

    The length penalty is computed here, not by the service. A ``/health`` that lists no
    rewards cannot be checked against; the first step then names a missing one.
    """
    if recipe.reward_service is None:
        return
    from capbench_rl.recipe import LENGTH_REWARDS
    from capbench_rl.service_client import ServiceError, health

    try:
        body = health(recipe.reward_service, token_env=recipe.reward_service_token_env)
    except ServiceError as exc:
        raise ConfigError(f"recipe field reward_service: {exc}; start `capbench serve` there, or fix the URL") from None
    offered = body.get("rewards")
    if not isinstance(offered, (list, dict)):
        return
    missing = [name for name in recipe.rewards if name not in LENGTH_REWARDS and name not in offered]
    if missing:
        raise ConfigError(
            f"recipe field reward_service: the service at {recipe.reward_service} does not compute "
            f"{', '.join(missing)}; it offers {', '.join(sorted(offered)) or 'no rewards'}"
        )
