"""Training recipes: one YAML file holds everything a run depends on, checked before anything loads.

A recipe names the policy model, the data, the judges, the rewards with their weights, how
they are combined (c-GDPO or vanilla GRPO), the length band of the linguistic reward, and
TRL's settings. ``capbench-rl train --config NAME_OR_FILE --set key=value`` reads one; every
field is documented below once, and the bundled recipes (``capbench_rl/recipes/``) mark each
value the BalCapRL paper does not state as capbench's assumption.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from capbench.errors import ConfigError

REWARDS = (
    "balcap_precision", "balcap_recall", "balcap_linguistic", "length_penalty", "caprl_qa_utility", "dcscore",
    "captionqa",
)  # fmt: skip
#: Rewards that ask questions about the image: the data must carry them.
QA_REWARDS = ("caprl_qa_utility", "captionqa")


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
    """Judge that sees the image for fact verification (None: verified against the reference caption)."""
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
    eval_limit: int | None = None
    """Evaluate on the first N held-out samples only."""
    eval_metrics: list[str] = field(default_factory=lambda: ["balcap"])
    """Metrics of the evaluation (as `capbench eval --metrics`)."""
    eval_engine: Literal["hf", "vllm"] = "hf"
    """Engine that captions the held-out images with the checkpoint."""
    eval_model_options: list[str] = field(default_factory=list)
    """Its engine options, KEY=VALUE (as `capbench eval --model-opt`, e.g. gpu_memory_utilization=0.3)."""
    trl: dict[str, Any] = field(default_factory=dict)
    """Further GRPOConfig settings, passed as they are (e.g. use_vllm, vllm_mode, gradient_accumulation_steps)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rewards) - set(REWARDS))
        if unknown or not self.rewards:
            raise ConfigError(f"recipe rewards {unknown or '{}'}: choose from {', '.join(REWARDS)}")
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
        if self.eval_benchmark is not None:
            self._check_evaluation()

    def _check_evaluation(self) -> None:
        """Refuse an evaluation that could only fail at the first checkpoint, hours into training."""
        from capbench.data import BENCHMARKS
        from capbench.metrics import METRICS

        if self.eval_benchmark not in BENCHMARKS:
            raise ConfigError(f"eval_benchmark {self.eval_benchmark!r} is unknown; choose from {', '.join(BENCHMARKS)}")
        unknown = [m for m in self.eval_metrics if m not in METRICS]
        if unknown or not self.eval_metrics:
            raise ConfigError(f"eval_metrics {unknown or '[]'}: choose from {', '.join(METRICS)}")

    def to_dict(self) -> dict[str, Any]:
        """Return the recipe as a JSON-ready dict (it is saved beside the run's outputs)."""
        return asdict(self)


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
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value (e.g. max_steps=10)")
        data[key.strip()] = yaml.safe_load(value)
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
