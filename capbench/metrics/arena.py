"""Pairwise judging (CapArena): which of two captions of one image is better, or a tie.

Protocol (CapArena, arXiv 2503.12329, and its official code): a judge sees the image, two
captions and the human reference caption, and answers "Caption 1 is better", "Caption 2 is
better" or "Tie". **CapArena-Auto** compares a model with one fixed baseline's caption per
image and scores 100 × (wins − losses) / pairs per baseline, averaged over baselines.

Where we differ from the official code (docs/metrics/arena.md says why):
- both orders are judged by default and combined: a win must survive the swap, and a
  disagreement counts as a tie (``order="single"`` reproduces the official one random order,
  from a seeded stream instead of an unseeded one);
- a failed or unreadable judgment is counted and listed, and the pair is left out of the
  score (the official score divides by a fixed 200 per baseline, so failures act as ties);
- ``Score_avg`` is the mean over the baselines the model was compared with; a caption equal
  to the baseline's (the model *is* the baseline) is not judged (the official code counts its
  own baseline as 0 in a mean over three);
- without a vision judge the judge reads the reference caption alone (``judge_mode``);
- an optional ``loglik`` answer mode for judges too small to follow the format ranks the three
  verdicts by mean token log-likelihood.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from capbench.engines.base import (
    Choice,
    ImagePart,
    JsonSchema,
    Message,
    Request,
    Response,
    Sampling,
    TextPart,
    affinity,
)
from capbench.errors import ConfigError
from capbench.hashing import sha256_text
from capbench.metrics.base import Judges, Unit, mean, require_judge
from capbench.metrics.parsing import parse_json
from capbench.metrics.templates import load_template
from capbench.records import Caption, Sample, SampleScore

Verdict = Literal["1", "2", "tie"]
VERDICTS: tuple[str, ...] = ("Caption 1 is better", "Caption 2 is better", "Tie")
_AS_VERDICT: dict[str, Verdict] = {"Caption 1 is better": "1", "Caption 2 is better": "2", "Tie": "tie"}
_SCHEMA = {
    "type": "object",
    "properties": {"reason": {"type": "string"}, "judgment": {"type": "string", "enum": list(VERDICTS)}},
    "required": ["reason", "judgment"],
}
_JUDGMENT_LINE = re.compile(r"judg(?:e)?ment\s*[:=]\s*(.+)", re.IGNORECASE)
_REASON = re.compile(r"reason\s*[:=]\s*(.*)", re.IGNORECASE | re.DOTALL)
_EVIDENCE = {
    "image": "You see the photograph itself, and a reference description of it written by a person.",
    "reference": "You cannot see the photograph. A reference description written by a person stands in for it: "
    "judge each caption against that reference.",
}

# ---------------------------------------------------------------- pure protocol pieces


def read_verdict(text: str) -> Verdict | None:
    """Return the verdict a judgment string states ("Caption 2 is better." → "2"), or None.

    Tolerates case, punctuation and markdown ("**Tie**", "<Caption 1 is better>"), a bare "1"
    or "2", and "caption 1"/"caption 2" with other words; a string naming both captions, or
    neither and no tie, says nothing.
    """
    folded = re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split()
    joined = " ".join(folded)
    if joined in ("1", "2"):
        return joined  # type: ignore[return-value]
    one, two = "caption 1" in joined, "caption 2" in joined
    if one != two:
        return "1" if one else "2"
    if not one and "tie" in folded:
        return "tie"
    return None


def parse_judgment(reply: str) -> tuple[Verdict | None, str]:
    """Read the verdict and the reason from a judge reply (JSON, or "Reason: … Judgment: …")."""
    data = parse_json(reply)
    if isinstance(data, dict) and isinstance(data.get("judgment"), str):
        return read_verdict(data["judgment"]), str(data.get("reason", "")).strip()
    # The judge's own verdict is its last "Judgment:" line: an earlier one may quote a caption.
    lines = list(_JUDGMENT_LINE.finditer(reply))
    last = lines[-1] if lines else None
    reason_match = _REASON.search(reply, 0, last.start() if last else len(reply))
    reason = reason_match.group(1).strip() if reason_match else ""
    if last:
        return read_verdict(last.group(1).strip()), reason
    return read_verdict(reply.strip()) if len(reply) < 80 else None, reason


def outcome_for_a(verdict: Verdict | None, a_first: bool) -> float | None:
    """Return caption A's result (1 win, 0.5 tie, 0 loss) from a verdict on one order."""
    if verdict is None:
        return None
    if verdict == "tie":
        return 0.5
    return 1.0 if (verdict == "1") == a_first else 0.0


def combine(outcomes: Sequence[float | None]) -> float | None:
    """Combine A's results over the orders judged: a result must survive the swap, else a tie.

    Any failed order makes the pair failed (None): the protocol needs every order.
    """
    if not outcomes or any(o is None for o in outcomes):
        return None
    return outcomes[0] if all(o == outcomes[0] for o in outcomes) else 0.5


def single_order(seed: int, sample_id: str, a: str, b: str) -> bool:
    """Return whether A is shown first, drawn from a stream seeded by (seed, image, pair)."""
    return random.Random(f"arena:{seed}:{sample_id}:{a}:{b}").random() < 0.5


# ---------------------------------------------------------------- the pairwise judge


@dataclass(frozen=True)
class ArenaConfig:
    """Settings of pairwise judging that change verdicts."""

    order: Literal["both", "single"] = "both"
    """'both': judge both orders and combine; 'single': one seeded random order (the official protocol)."""
    seed: int = 0
    """Seed of the single-order draw and of judge sampling."""
    answer_mode: Literal["generate", "loglik"] = "generate"
    """'generate': the judge writes a reason and a verdict; 'loglik': verdicts ranked by likelihood."""
    max_tokens: int = 512
    """Tokens the judge may write per judgment."""
    temperature: float = 0.0
    """Judge sampling temperature (the official code sends 0.1 with top-p 0.9)."""
    prompt_dir: str | None = None
    """Folder of replacement prompt templates (same file names), or None for ours."""

    def __post_init__(self) -> None:
        if self.order not in ("both", "single"):
            raise ConfigError(f"arena order must be 'both' or 'single', not {self.order!r}")
        if self.answer_mode not in ("generate", "loglik"):
            raise ConfigError(f"arena answer_mode must be 'generate' or 'loglik', not {self.answer_mode!r}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class PairTask:
    """Judge caption A against caption B of one image, in the given orders (True = A first)."""

    sample: Sample
    caption_a: str
    caption_b: str
    orders: tuple[bool, ...]


class PairJudge:
    """Builds pairwise judge requests, runs them in one batch, and reads the verdicts."""

    def __init__(self, config: ArenaConfig | None = None) -> None:
        self.cfg = config or ArenaConfig()
        user = "arena.loglik.user" if self.cfg.answer_mode == "loglik" else "arena.user"
        self._system = load_template("arena.system", self.cfg.prompt_dir)
        self._user = load_template(user, self.cfg.prompt_dir)

    def prompt_hashes(self) -> dict[str, str]:
        """Return the hashes of the prompt templates in use."""
        return {t.name: t.sha256 for t in (self._system, self._user)}

    def settings(self) -> dict[str, Any]:
        """Return the settings that change verdicts (prompts aside)."""
        cfg = self.cfg
        return {"order": cfg.order, "seed": cfg.seed, "answer_mode": cfg.answer_mode, "max_tokens": cfg.max_tokens,
                "temperature": cfg.temperature}  # fmt: skip

    def orders(self, sample_id: str, a: str, b: str) -> tuple[bool, ...]:
        """Return the orders to judge for a pair under this configuration."""
        return (True, False) if self.cfg.order == "both" else (single_order(self.cfg.seed, sample_id, a, b),)

    def request(self, sample: Sample, caption_1: str, caption_2: str, with_image: bool) -> Request:
        """Build one judgment request: instructions, then the image and reference, then the captions."""
        mode = "image" if with_image else "reference"
        system = self._system.render(evidence=_EVIDENCE[mode])
        # render() removes the template's fence tags from the captions: none can close its fence
        user = self._user.render(reference=sample.reference_caption, caption_1=caption_1, caption_2=caption_2)
        image = tuple(ImagePart(i) for i in sample.images) if with_image else ()
        messages = (Message.text("system", system), Message("user", (*image, TextPart(user))))
        # every battle over this sample shares the instructions, the image and the reference
        shared = affinity("arena", mode, sample.reference_caption, *(i.image.sha256 for i in image))
        if self.cfg.answer_mode == "loglik":
            sampling = Sampling(max_tokens=1, temperature=0.0)
            return Request(messages, sampling, Choice(VERDICTS, loglik=True), affinity=shared)
        sampling = Sampling(max_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature, seed=self.cfg.seed)
        return Request(messages, sampling, JsonSchema.of(_SCHEMA), affinity=shared)

    def judge(self, tasks: Sequence[PairTask], judges: Judges) -> tuple[list[dict[str, Any]], str]:
        """Judge every task in one batch; return a record per task and the judge mode."""
        judge, mode = self.pick_judge(judges)
        requests = [
            self.request(
                t.sample,
                *((t.caption_a, t.caption_b) if a_first else (t.caption_b, t.caption_a)),
                with_image=mode == "image",
            )
            for t in tasks
            for a_first in t.orders
        ]
        replies = iter(judge.run(requests))
        records = []
        for task in tasks:
            orders = [self._read(a_first, next(replies)) for a_first in task.orders]
            outcome = combine([o["outcome"] for o in orders])
            consistent = None if len(orders) < 2 or outcome is None else len({o["outcome"] for o in orders}) == 1
            records.append({"orders": orders, "outcome": outcome, "consistent": consistent})
        return records, mode

    def pick_judge(self, judges: Judges) -> tuple[Any, str]:
        """Return the judge to use (the vision judge when given) and the judge mode."""
        vision = judges.get("vision")
        if vision is not None:
            if not vision.accepts_images:
                raise ConfigError(f"the vision judge ({vision.backend}) cannot read images; choose one that can")
            judge, mode = vision, "image"
        else:
            judge, mode = require_judge(judges, "text", "arena"), "reference"
        if self.cfg.answer_mode == "loglik" and not judge.supports_loglik:
            raise ConfigError(
                f"arena answer mode 'loglik' needs an engine that scores options; {judge.backend} does not"
            )
        return judge, mode

    def _read(self, a_first: bool, response: Response) -> dict[str, Any]:
        record: dict[str, Any] = {"first": "a" if a_first else "b"}
        if not response.ok:
            return {**record, "verdict": None, "outcome": None, "reply": None, "error": response.error or "no response"}
        if response.option_logprobs is not None:
            # A loglik choice names its best option as the reply (the engine's per-token ranking).
            verdict = _AS_VERDICT.get(response.text)
            record.update(reply=response.text, option_logprobs=list(response.option_logprobs))
        else:
            verdict, reason = parse_judgment(response.text)
            record.update(reply=response.text, reason=reason)
        return {**record, "verdict": verdict, "outcome": outcome_for_a(verdict, a_first)}


# ---------------------------------------------------------------- the metric (CapArena-Auto)


class Arena:
    """CapArena-Auto: each caption against the fixed baselines' captions of its image."""

    name = "arena"
    higher_is_better = True
    value_range = (-100.0, 100.0)
    needs = frozenset({"reference_caption", "baselines"})
    judge_roles = ("text", "vision")
    title = "CapArena-Auto"
    description = "CapArena-Auto: pairwise judgments against fixed baseline captions, 100 × (wins − losses) / pairs"
    unit = "points (-100 to 100)"
    columns = (
        ("score", "score"),
        ("words", "length"),
        ("swap-proof %", "consistency"),
        ("unscored", "failed"),
        ("judge saw", "judge_mode"),
    )
    breakdowns = (("CapArena-Auto score per baseline", "baselines", "score"),)
    note = (
        "judge {judge} (order: {arena_order}; 'both' = a win must survive the swap); score = mean over baselines "
        "of 100 × (wins − losses) / judged pairs; swap-proof = verdicts the same in both orders"
    )

    def __init__(self, config: ArenaConfig | None = None) -> None:
        self.cfg = config or ArenaConfig()
        self.pairs = PairJudge(self.cfg)

    def config(self) -> dict[str, Any]:
        """Return the settings that change scores."""
        return self.pairs.settings()

    def prompt_hashes(self) -> dict[str, str]:
        """Return the hashes of the prompt templates in use."""
        return self.pairs.prompt_hashes()

    def planned_requests(self, samples: Sequence[Sample], captions: Sequence[Caption]) -> int:
        """Judgments per baseline and order; a caption equal to its baseline is not judged (as in ``score``)."""
        per_pair = 2 if self.cfg.order == "both" else 1
        return per_pair * sum(
            text.strip() != caption.text.strip()
            for sample, caption in zip(samples, captions, strict=True)
            for text in sample.baselines.values()
        )

    def score(self, samples: Sequence[Sample], captions: Sequence[Caption], judges: Judges) -> list[SampleScore]:
        """Judge every (caption, baseline) pair of the batch in one run, then score each sample."""
        tasks: list[PairTask] = []
        owners: list[tuple[int, str]] = []
        for index, (sample, caption) in enumerate(zip(samples, captions, strict=True)):
            for baseline, text in sorted(sample.baselines.items()):
                if text.strip() != caption.text.strip():
                    orders = self.pairs.orders(sample.id, "model", baseline)
                    tasks.append(PairTask(sample, caption.text, text, orders))
                    owners.append((index, baseline))
        records, mode = self.pairs.judge(tasks, judges) if tasks else ([], self._mode(judges))
        per_sample: dict[int, dict[str, dict[str, Any]]] = {}
        for (index, baseline), record in zip(owners, records, strict=True):
            per_sample.setdefault(index, {})[baseline] = record
        return [
            _sample_score(self.name, sample, caption, per_sample.get(index, {}), mode)
            for index, (sample, caption) in enumerate(zip(samples, captions, strict=True))
        ]

    def _mode(self, judges: Judges) -> str:
        return "image" if judges.get("vision") is not None else "reference"

    def summarize(self, scores: Sequence[SampleScore]) -> dict[str, Any]:
        """CapArena-Auto scores per baseline and their mean, with failures, consistency and caption length.

        The length is averaged over every captioned sample, images where the caption is the
        baseline's own (not judged) included, so every model's length covers the same images.
        """
        from capbench.ranking import caparena_auto

        pairs = [p for s in scores for p in s.details.get("pairs", []) if not p.get("self")]
        out = caparena_auto(((p["baseline"], p["outcome"]) for p in pairs), _baselines(scores))
        consistent = [p["consistent"] for p in pairs if p.get("consistent") is not None]
        out["consistency"] = None if not consistent else 100.0 * sum(consistent) / len(consistent)
        out["length"] = mean([s.details["caption_words"] for s in scores if "caption_words" in s.details])
        out["images"] = len(scores)
        out["failed_ids"] = sorted({s.sample_id for s in scores if s.unscored})
        out["judge_mode"] = sorted({str(s.details.get("judge_mode", "?")) for s in scores})
        return out

    def units(self, scores: Sequence[SampleScore]) -> list[Unit]:
        """One unit per judged pair: 100 for a win, 0 for a tie, −100 for a loss, by baseline."""
        return [
            (s.sample_id, p["baseline"], 100.0 * (2 * p["outcome"] - 1), 1.0)
            for s in scores
            for p in s.details.get("pairs", [])
            if not p.get("self") and p.get("outcome") is not None
        ]


def _baselines(scores: Sequence[SampleScore]) -> list[str]:
    return sorted({p["baseline"] for s in scores for p in s.details.get("pairs", [])})


def _sample_score(
    metric: str, sample: Sample, caption: Caption, judged: dict[str, dict[str, Any]], mode: str
) -> SampleScore:
    pairs = []
    for baseline in sorted(sample.baselines):
        record = judged.get(baseline)
        pairs.append({"baseline": baseline, "self": True} if record is None else {"baseline": baseline, **record})
    valid = [p["outcome"] for p in pairs if not p.get("self") and p["outcome"] is not None]
    values: dict[str, float | None] = {
        "score": mean([100.0 * (2 * o - 1) for o in valid]),
        "wins": float(sum(o == 1.0 for o in valid)),
        "losses": float(sum(o == 0.0 for o in valid)),
        "ties": float(sum(o == 0.5 for o in valid)),
    }
    unscored = sum(1 for p in pairs if not p.get("self") and p["outcome"] is None)
    calls_failed = sum(1 for p in pairs for o in p.get("orders", ()) if o.get("reply") is None and "error" in o)
    details = {"pairs": pairs, "judge_mode": mode, "caption_words": len(caption.text.split())}
    return SampleScore(sample.id, metric, values, details, unscored, sha256_text(caption.text), calls_failed)
