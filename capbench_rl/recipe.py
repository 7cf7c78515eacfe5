"""Training recipes: one YAML file holds everything a run depends on, checked before anything loads.

A recipe names the policy model, the data, the judges, the rewards with their weights, how
they are combined (c-GDPO or vanilla GRPO), the length band of the linguistic reward, and
TRL's settings. ``capbench-rl train --config NAME_OR_FILE --set key=value`` reads one; every
field is documented below once, and the bundled recipes (``capbench_rl/recipes/``) mark each
value the BalCapRL paper does not state as capbench's assumption.
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

from capbench.errors import ConfigError

#: capbench's own rewards; installed plugins' metrics may declare more (:func:`reward_names`).
REWARDS = (
    "balcap_precision", "balcap_recall", "balcap_linguistic", "length_penalty", "caprl_qa_utility", "dcscore",
    "captionqa",
)  # fmt: skip
#: capbench's own rewards that ask questions about the image: the data must carry them (:func:`qa_rewards`).
QA_REWARDS = ("caprl_qa_utility", "captionqa")
#: Rewards that are not a metric's: computed from lengths alone.
LENGTH_REWARDS = ("length_penalty",)


def reward_names() -> list[str]:
    """Every reward a recipe may name: the length penalty, then what the installed metrics declare."""
    import capbench

    return [*LENGTH_REWARDS, *capbench.reward_table()]


def qa_rewards() -> list[str]:
    """The rewards whose metric needs multiple-choice questions (the training data must carry them)."""
    import capbench
    from capbench.metrics import metric_class

    table = capbench.reward_table()
    return [r for r, (metric, _, _) in table.items() if "questions" in capbench.describe(metric_class(metric)).needs]


#: What steps.jsonl says a text-only recipe verifies its facts against (``text_only_precision``).
TEXT_ONLY = "reference caption (text only)"
#: ... and a recipe whose rewards a reward service scores (its judges, its settings).
SERVICE = "reward service"


def verifying_rewards(rewards: dict[str, float]) -> list[str]:
    """The rewards whose metric verifies caption facts with a vision judge when there is one (balcap, dcscore)."""
    import capbench
    from capbench.metrics import metric_class

    table = capbench.reward_table()
    return [r for r in rewards if r in table and "vision" in capbench.describe(metric_class(table[r][0])).judge_roles]


#: Recipe fields that are GRPOConfig fields of the same name.
TRL_FIELDS = (
    "output_dir", "per_device_train_batch_size", "num_generations", "max_completion_length", "temperature",
    "learning_rate", "beta", "max_steps", "num_train_epochs", "seed", "use_cpu", "bf16", "save_steps",
)  # fmt: skip
#: Fields that only a benchmark's loader reads (as the `capbench eval` option of the same name).
BENCHMARK_OPTIONS = ("images_dir", "benchmark_file", "dataset", "split")


@dataclass(frozen=True)
class Recipe:
    """A capbench-rl training run."""

    model: str
    """The policy: a hub id or a local checkpoint folder (a vision-language model)."""
    output_dir: str = "runs/capbench-rl"
    """Where checkpoints, logs and rollouts.jsonl go."""
    benchmark: str | None = "mini"
    """Training data from a capbench benchmark (samples with images and reference captions) ..."""
    data_file: str | None = None
    """... or from a JSONL file of {"image": path, "caption": reference} lines (relative paths: to the file)."""
    images_dir: str | None = None
    """Folder of the benchmark's images where it bundles none, e.g. decapbench (`capbench eval --images-dir`)."""
    benchmark_file: str | None = None
    """The benchmark's own data file, e.g. caparena_auto_600.json (`capbench eval --data-file`)."""
    dataset: str | None = None
    """The benchmark's data as a hub id or local folder, for captionqa (`capbench eval --dataset`)."""
    split: str | None = None
    """The benchmark's split, for captionqa (`capbench eval --split`)."""
    limit: int | None = None
    """Use only the first N training samples."""
    prompt: str = "Describe this image in detail."
    """The captioning instruction each prompt holds."""
    image_size: int | None = None
    """Resize images so their longer side is at most this many pixels (None: as they are)."""
    judge: str = "llamacpp:smollm2"
    """Text judge of the rewards, as ENGINE:MODEL."""
    judge_options: list[str] = field(default_factory=list)
    """Its engine options, KEY=VALUE."""
    vision_judge: str | None = None
    """Judge that sees the image and verifies each caption fact for precision, as ENGINE:MODEL (a served VLM)."""
    vision_judge_options: list[str] = field(default_factory=list)
    """Its engine options, KEY=VALUE (e.g. base_url=http://localhost:8001/v1)."""
    text_only_precision: bool = False
    """Without vision_judge, allow verifying facts against the reference caption alone (true facts it omits: wrong)."""
    fact_protocol: Literal["official", "greedy", "embedded"] = "embedded"
    """Judge settings of the fact pipeline."""
    rewards: dict[str, float] = field(
        default_factory=lambda: {"balcap_precision": 1.0, "balcap_recall": 1.0, "balcap_linguistic": 1.0}
    )
    """Rewards and their weights (α, β, γ, and the length penalty's)."""
    aggregation: Literal["normalize_then_sum", "sum_then_normalize"] = "normalize_then_sum"
    """c-GDPO (normalize_then_sum) or vanilla GRPO (sum_then_normalize)."""
    length_band: list[float] | None = field(default_factory=lambda: [0.5, 2.0])
    """[τ_l, τ_u]: the linguistic reward is 0 when caption/reference length falls outside; null = no masking."""
    length_unit: Literal["words", "tokens"] = "words"
    """Unit of the length ratio."""
    length_penalty_coef: float = 1.0
    """Coefficient of the linear length penalty, when that reward is used."""
    qa_answer_mode: Literal["letter", "loglik"] = "letter"
    """How the judge answers in caprl_qa_utility and captionqa: a written letter, or options ranked by likelihood."""
    caprl_samples: int = 8
    """N: questions drawn per caption by caprl_qa_utility."""
    num_generations: int = 8
    """Rollouts per prompt (the group size)."""
    per_device_train_batch_size: int = 8
    """Rollouts per device per step (a multiple of num_generations over all devices)."""
    max_completion_length: int = 512
    """Most tokens per rollout."""
    overlap_chunks: int = 1
    """Generate each step's rollouts in this many chunks of whole groups, judging each while the next
    generates (1: one batch, judged after it; at most the groups each process generates; docs/rl.md)."""
    temperature: float = 1.0
    """Rollout sampling temperature."""
    learning_rate: float = 1e-6
    """Policy learning rate."""
    beta: float = 0.0
    """KL coefficient against the reference policy."""
    max_steps: int = -1
    """Training steps (-1: num_train_epochs)."""
    num_train_epochs: float = 1.0
    """Epochs over the data when max_steps is -1."""
    seed: int = 0
    """Seed of training, rollouts and judge sampling."""
    use_cpu: bool = False
    """Train on the CPU (toy runs and tests)."""
    bf16: bool = False
    """Train in bfloat16 (GPUs)."""
    save_steps: int = 500
    """Save a checkpoint every N steps (each is evaluated when eval_benchmark is set)."""
    eval_benchmark: str | None = None
    """Held-out capbench benchmark to score each checkpoint on with `capbench eval` (None: no evaluation)."""
    eval_dataset: str | None = None
    """Its data: a hub id or local folder (as `capbench eval --dataset`), where the benchmark needs one."""
    eval_split: str | None = None
    """Its split (as `capbench eval --split`)."""
    eval_images_dir: str | None = None
    """Its images, where the benchmark does not bundle them (as `capbench eval --images-dir`)."""
    eval_limit: int | None = None
    """Evaluate on the first N held-out samples only."""
    eval_metrics: list[str] = field(default_factory=lambda: ["balcap"])
    """Metrics of the evaluation (as `capbench eval --metrics`)."""
    eval_engine: Literal["hf", "vllm"] = "hf"
    """Engine that captions the held-out images with the checkpoint."""
    eval_model_options: list[str] = field(default_factory=list)
    """Its engine options, KEY=VALUE (as `capbench eval --model-opt`, e.g. gpu_memory_utilization=0.3)."""
    eval_log_samples: int = 4
    """Held-out samples (the same at every checkpoint) whose image, caption and scores go to eval.jsonl and the
    trackers of trl.report_to (0: none)."""
    trl: dict[str, Any] = field(default_factory=dict)
    """Further GRPOConfig settings, passed as they are (e.g. use_vllm, vllm_mode, gradient_accumulation_steps)."""
    reward_service: str | None = None
    """URL of a running `capbench serve` (http://HOST:PORT): it scores the metric rewards, with its own judges."""
    reward_service_token_env: str = "CAPBENCH_SERVE_TOKEN"
    """Environment variable holding the service's bearer token (unset: no token is sent)."""
    reward_service_images: Literal["path", "base64"] = "path"
    """How images reach the service: their paths (a shared file system) or inline base64."""

    def __post_init__(self) -> None:
        self._check_types()
        names = reward_names()
        # A service may compute rewards no metric installed here declares: it names its own at start (/health).
        unknown = [] if self.reward_service is not None else sorted(set(self.rewards) - set(names))
        if unknown or not self.rewards:
            raise ConfigError(
                f"recipe rewards {unknown or '{}'}: choose from {', '.join(names)} (installed metrics add rewards "
                "through the 'capbench.metrics' entry-point group)"
            )
        if (self.benchmark is None) == (self.data_file is None):
            raise ConfigError("a recipe needs exactly one of benchmark and data_file")
        if self.length_band is not None and not (
            len(self.length_band) == 2 and 0 <= self.length_band[0] < self.length_band[1]
        ):
            raise ConfigError(f"length_band must be [low, high] with 0 <= low < high, got {self.length_band}")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2: group normalisation needs a group")
        if self.caprl_samples < 1:
            raise ConfigError(f"caprl_samples must be >= 1, got {self.caprl_samples}")
        self._check_overlap()
        if self.data_file is not None:
            given = [name for name in BENCHMARK_OPTIONS if getattr(self, name) is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} go with benchmark, not data_file (it names its own images)")
        if self.benchmark is not None:
            from capbench.data import BENCHMARKS

            if self.benchmark not in BENCHMARKS:
                raise ConfigError(f"benchmark {self.benchmark!r} is unknown; choose from {', '.join(BENCHMARKS)}")
        if self.eval_benchmark is not None:
            self._check_evaluation()
        self._check_verification()

    def _check_types(self) -> None:
        """Refuse a value of the wrong type (YAML or --set gave text where a number belongs, …) by field name."""
        hints = typing.get_type_hints(Recipe)
        for item in fields(self):
            value = getattr(self, item.name)
            hint = hints[item.name]
            if isinstance(value, str) and _accepts(hint, float) and _number(value) is not None:
                # PyYAML reads 1e-6 (no dot) as text: take it as the number it is
                object.__setattr__(self, item.name, value := _number(value))
            expected = _expected(value, hint)
            if expected is not None:
                raise ConfigError(
                    f"recipe field {item.name} must be {expected}, not {value!r}; "
                    f"fix it in the recipe or with --set {item.name}={_example(hint)}"
                )

    def _check_overlap(self) -> None:
        """Refuse overlap_chunks that cannot split each process's rollouts on whole groups.

        Each process generates per_device_train_batch_size × steps_per_generation rollouts at once
        (TRL's default steps_per_generation: gradient_accumulation_steps). With a
        generation_batch_size in trl, that depends on the number of processes, and the check runs
        when the trainer is built.
        """
        from capbench_rl.overlap import check_chunks

        if self.overlap_chunks < 1 or "generation_batch_size" not in self.trl:
            steps = self.trl.get("steps_per_generation") or self.trl.get("gradient_accumulation_steps") or 1
            if not isinstance(steps, int):
                return  # TRL's own check names it
            source = f"per_device_train_batch_size {self.per_device_train_batch_size} × steps_per_generation {steps}"
            check_chunks(self.overlap_chunks, self.per_device_train_batch_size * steps, self.num_generations, source)

    def _check_evaluation(self) -> None:
        """Refuse an evaluation that could only fail at the first checkpoint, hours into training."""
        from capbench.data import BENCHMARKS
        from capbench.metrics import METRICS

        if self.eval_benchmark not in BENCHMARKS:
            raise ConfigError(f"eval_benchmark {self.eval_benchmark!r} is unknown; choose from {', '.join(BENCHMARKS)}")
        unknown = [m for m in self.eval_metrics if m not in METRICS]
        if unknown or not self.eval_metrics:
            raise ConfigError(f"eval_metrics {unknown or '[]'}: choose from {', '.join(METRICS)}")
        if self.eval_log_samples < 0:
            raise ConfigError(f"eval_log_samples must be >= 0, got {self.eval_log_samples}")

    def _check_verification(self) -> None:
        """Refuse facts verified against text alone unless the recipe says so (BalCapRL verifies against the image)."""
        if self.reward_service is not None:
            return  # the service's judges verify the facts, not the recipe's
        verifying = verifying_rewards(self.rewards)
        if verifying and self.vision_judge is None and not self.text_only_precision:
            raise ConfigError(
                f"reward {verifying[0]} verifies caption facts against the image: set vision_judge to a served "
                "VLM (e.g. openai:Qwen/Qwen2.5-VL-72B-Instruct with vision_judge_options [base_url=URL]), or set "
                "text_only_precision: true to verify against the reference caption alone"
            )

    def precision_verified_by(self) -> str | None:
        """What the rewards' caption facts are verified against (None: no reward verifies facts)."""
        if not verifying_rewards(self.rewards):
            return None
        if self.reward_service is not None:
            return SERVICE
        return "image" if self.vision_judge is not None else TEXT_ONLY

    def to_dict(self) -> dict[str, Any]:
        """Return the recipe as a JSON-ready dict (it is saved beside the run's outputs)."""
        return asdict(self)


_KINDS: dict[Any, tuple[str, str, str]] = {
    # type -> (a value of it, several of them, an example as --set takes it)
    int: ("an integer", "integers", "10"),
    float: ("a number", "numbers", "0.5"),
    bool: ("true or false", "true/false values", "true"),
    str: ("a string", "strings", "TEXT"),
}


def _expected(value: Any, hint: Any) -> str | None:
    """What a value of type ``hint`` must be, or None when ``value`` is one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        wanted = [_expected(value, a) for a in args if a is not type(None)]
        if None in wanted:
            return None
        return " or ".join(str(w) for w in wanted) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return None if value in args else "one of " + ", ".join(str(a) for a in args)
    if origin is list:
        if isinstance(value, list) and all(_expected(v, args[0]) is None for v in value):
            return None
        return f"a list of {_KINDS[args[0]][1]}"
    if origin is dict:
        if isinstance(value, dict) and all(
            isinstance(k, str) and _expected(v, args[1]) is None for k, v in value.items()
        ):
            return None
        return "a mapping of names to " + ("values" if args[1] is Any else _KINDS[args[1]][1])
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    return None if ok else _KINDS[hint][0]


def _accepts(hint: Any, kind: type) -> bool:
    """Whether ``hint`` is ``kind``, or ``kind`` or None."""
    return hint is kind or set(typing.get_args(hint)) == {kind, type(None)}


def _number(text: str) -> float | None:
    """``text`` as a finite number, or None."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if number not in (float("inf"), float("-inf")) and number == number else None


def _example(hint: Any) -> str:
    """A value of type ``hint`` as --set takes it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return _example(next(a for a in args if a is not type(None)))
    if origin is Literal:
        return str(args[0])
    if origin is list:
        return f"[{_KINDS[args[0]][2]}]"
    if origin is dict:
        return "{NAME: " + ("VALUE" if args[1] is Any else _KINDS[args[1]][2]) + "}"
    return _KINDS.get(hint, ("", "", "VALUE"))[2]


def bundled(name: str) -> Path:
    """The path of a recipe shipped with capbench-rl, by name (without .yaml)."""
    return Path(str(resources.files("capbench_rl") / "recipes" / f"{name}.yaml"))


def load_recipe(source: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe file (or a bundled recipe's name), then apply ``key=value`` overrides (YAML values).

    Raises:
        ConfigError: a missing or unreadable file, an unknown key, or a value that fails the checks.
    """
    import yaml

    path = Path(source)
    if not path.is_file():
        path = bundled(source)
        if not path.is_file():
            names = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise ConfigError(f"no recipe file {source!r}, and no bundled recipe of that name ({', '.join(names)})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not readable YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of field names to values, not {type(data).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value (e.g. max_steps=10)")
        try:
            data[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: its value is not readable YAML; quote text (prompt='…')") from None
    known = {f.name for f in fields(Recipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown recipe key(s) {', '.join(unknown)}; see capbench_rl/recipe.py")
    if "model" not in data:
        raise ConfigError(f"{path}: a recipe needs a model")
    try:
        return Recipe(**data)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
