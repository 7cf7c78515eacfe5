"""CapRL's QA utility: how often a text-only reader answers questions about the image from the caption.

Protocol (CapRL, arXiv 2509.22647, and the reward function of its public training code): for
each caption, N draws; each draw picks one of the image's multiple-choice questions at random
(with replacement), shuffles its options, appends a "cannot answer from the caption" option
last, and asks a text LLM (temperature 0.6, at most 10 tokens) for a letter. The utility is
the share of draws answered right; "cannot answer" and wrong answers count 0.

Where we differ (docs/metrics/caprl.md says why):
- the draws come from a stream seeded by (seed, sample id, caption), not a global generator,
  so a caption's utility is reproducible and its judge calls are cacheable; each draw's
  judge sampling has its own seed, so repeated draws are not one cache hit;
- a reply that names no option, or a failed call, is *unscored* (kept and counted, left out of
  the mean), not 0; a caption with no scored draw has no utility (None). ``parse="caprl"``
  reads replies by CapRL's rule instead (the first capital A-I anywhere) and scores a reply it
  cannot read as 0, as CapRL's reward does;
- prompt wording and the "cannot answer" text are CaptionQA's in capbench (our own), and a
  ``loglik`` answer mode serves judges too small to write a letter.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from capbench.engines.base import Response
from capbench.errors import ConfigError
from capbench.hashing import sha256_text
from capbench.metrics.base import Judges, Unit, mean, require_judge
from capbench.metrics.captionqa import CANNOT_ANSWER, CaptionQA, CaptionQAConfig, read_answer
from capbench.metrics.parsing import LETTERS
from capbench.records import Caption, Question, Sample, SampleScore


@dataclass(frozen=True)
class CapRLConfig:
    """Settings of the CapRL QA utility that change scores."""

    samples: int = 8
    """N: questions drawn (with replacement) per caption."""
    seed: int = 0
    """Seed of the draws, the option shuffles and the judge's sampling."""
    answer_mode: Literal["letter", "loglik"] = "letter"
    """'letter': the judge writes a letter (the protocol); 'loglik': options ranked by caption PMI."""
    temperature: float = 0.6
    """Judge sampling temperature in letter mode (CapRL's)."""
    max_tokens: int = 10
    """Tokens the judge may write in letter mode (CapRL's)."""
    prompt_dir: str | None = None
    """Folder of replacement CaptionQA prompt templates, or None for ours."""
    parse: Literal["capbench", "caprl"] = "capbench"
    """How a letter reply is read. 'capbench': the tolerant parser, and a reply naming no option
    is unscored (left out of the mean). 'caprl': CapRL's reward rule, the first capital A-I
    anywhere in the reply ("Answer: (B)" reads as A), and a reply naming no option scores 0."""

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"samples (N draws per caption) must be >= 1, got {self.samples}")
        if self.parse not in ("capbench", "caprl"):
            raise ConfigError(f"caprl parse must be 'capbench' or 'caprl', not {self.parse!r}")
        if self.parse == "caprl" and self.answer_mode != "letter":
            raise ConfigError(
                "caprl parse 'caprl' reads the letter a judge writes, and answer mode 'loglik' writes none: "
                "use answer_mode='letter', or parse='capbench'"
            )


_CAPRL_LETTER = re.compile(r"[A-I]")


def caprl_letter(reply: str) -> str | None:
    """Return the letter CapRL's reward reads in a reply: its first capital A-I, anywhere, or None.

    CapRL's rule, kept as it is: "Answer: (B)" reads as A and "I think it is B" as I; a
    lower-case "b" reads as nothing.
    """
    match = _CAPRL_LETTER.search(reply)
    return match.group() if match else None


def presented(question: Question, rng: random.Random) -> tuple[list[str], list[int]]:
    """Return the options as shown (real ones shuffled by ``rng``, "cannot answer" last) and their indices."""
    order = list(range(len(question.choices)))
    rng.shuffle(order)
    order.append(len(question.choices))
    options = [*question.choices, CANNOT_ANSWER]
    return [options[i] for i in order], order


class CapRL:
    """CapRL's QA utility over samples that carry multiple-choice questions (0-100)."""

    name = "caprl"
    higher_is_better = True
    value_range = (0.0, 100.0)
    needs = frozenset({"questions"})
    judge_roles = ("text",)
    title = "CapRL QA utility"
    description = "CapRL QA utility: share of N drawn questions a text LLM answers right from the caption"
    unit = "points (0-100)"
    columns = (
        ("utility", "score"),
        ("cannot %", "cannot_answer_rate"),
        ("unscored draws", "unscored_draws"),
        ("no utility", "no_utility"),
    )
    note = "judge {judge} ({answer_mode} answers); utility = 100 × share of draws answered right"
    rewards = (("caprl_qa_utility", "utility", 100.0),)

    def __init__(self, config: CapRLConfig | None = None) -> None:
        self.cfg = config or CapRLConfig()
        self._qa = CaptionQA(
            CaptionQAConfig(
                seed=self.cfg.seed,
                answer_mode=self.cfg.answer_mode,
                max_tokens=self.cfg.max_tokens,
                temperature=self.cfg.temperature,
                prompt_dir=self.cfg.prompt_dir,
            )
        )

    def config(self) -> dict[str, Any]:
        """Return the settings that change scores (``parse`` only when not the default, so older hashes hold)."""
        settings: dict[str, Any] = {
            "samples": self.cfg.samples,
            "seed": self.cfg.seed,
            "answer_mode": self.cfg.answer_mode,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
            "cannot_answer_option": CANNOT_ANSWER,
        }
        if self.cfg.parse != "capbench":
            settings["parse"] = self.cfg.parse
        return settings

    def prompt_hashes(self) -> dict[str, str]:
        """Return the hashes of the prompt templates in use (CaptionQA's)."""
        return self._qa.prompt_hashes()

    def planned_requests(self, samples: Sequence[Sample], captions: Sequence[Caption]) -> int:
        """N requests per captioned sample with questions (2N in loglik mode)."""
        per_draw = 2 if self.cfg.answer_mode == "loglik" else 1
        return per_draw * self.cfg.samples * sum(1 for s in samples if s.questions)

    def plan(self, sample: Sample, caption: Caption) -> list[dict[str, Any]]:
        """Return the caption's draws: the question, the options as shown and their original indices."""
        rng = random.Random(f"caprl:{self.cfg.seed}:{sample.id}:{sha256_text(caption.text)}")
        planned = []
        for k in range(self.cfg.samples):
            question = sample.questions[rng.randrange(len(sample.questions))]
            options, order = presented(question, rng)
            planned.append({"draw": k, "question": question, "options": options, "order": order})
        return planned

    def score(self, samples: Sequence[Sample], captions: Sequence[Caption], judges: Judges) -> list[SampleScore]:
        """Ask every draw of every caption in one batch, then take each caption's share answered right."""
        judge = require_judge(judges, "text", self.name)
        if self.cfg.answer_mode == "loglik" and not judge.supports_loglik:
            raise ConfigError(f"answer mode 'loglik' needs an engine that scores options; {judge.backend} does not")
        plans = [self.plan(s, c) if s.questions else [] for s, c in zip(samples, captions, strict=True)]
        requests = []
        for caption, planned in zip(captions, plans, strict=True):
            for d in planned:
                seed = self.cfg.seed * 1000 + d["draw"]
                requests.append(self._qa.build_request(caption.text, d["question"], d["options"], seed))
                if self.cfg.answer_mode == "loglik":
                    requests.append(self._qa.build_request("", d["question"], d["options"]))
        responses = iter(judge.run(requests))
        out = []
        for sample, caption, planned in zip(samples, captions, plans, strict=True):
            loglik = self.cfg.answer_mode == "loglik"  # each draw's request is followed by its no-caption twin
            records = [self._judgment(d, next(responses), next(responses) if loglik else None) for d in planned]
            out.append(self._sample_score(sample, caption, records))
        return out

    def _judgment(self, draw: dict[str, Any], response: Response, baseline: Response | None) -> dict[str, Any]:
        question: Question = draw["question"]
        order: list[int] = draw["order"]
        if self.cfg.parse == "caprl" and response.ok:
            letter = caprl_letter(response.text)
            index = None if letter is None else LETTERS.index(letter)
            shown = index if index is not None and index < len(order) else None
            read: dict[str, Any] = {"reply": response.text, "letter": letter}
        else:
            shown, read = read_answer(response, baseline, draw["options"])
        record: dict[str, Any] = {
            "draw": draw["draw"],
            "question_id": question.id,
            "options": draw["options"],
            "answer": LETTERS[order.index(question.answer_index)],
            **read,
        }
        if "error" in read:  # a failed call is not a reply: unscored under either parse rule
            record.update(status="failed", correct=None)
        elif shown is None:
            # CapRL's reward scores a reply naming no option 0; capbench leaves it out
            record.update(status="unparsed", correct=False if self.cfg.parse == "caprl" else None)
        else:
            chosen = order[shown]
            status = "cannot_answer" if chosen == len(question.choices) else "answered"
            record.update(chosen=LETTERS[shown], status=status, correct=chosen == question.answer_index)
        return record

    def _sample_score(self, sample: Sample, caption: Caption, records: list[dict[str, Any]]) -> SampleScore:
        scored = [r for r in records if r["correct"] is not None]
        utility = mean([1.0 if r["correct"] else 0.0 for r in scored])
        values = {
            "utility": None if utility is None else 100.0 * utility,
            "cannot_answer_rate": mean([100.0 if r["status"] == "cannot_answer" else 0.0 for r in scored]),
        }
        return SampleScore(
            sample_id=sample.id,
            metric=self.name,
            values=values,
            details={"domain": sample.domain, "draws": records},
            unscored=len(records) - len(scored),
            caption_sha256=sha256_text(caption.text),
            failed=sum(r["status"] == "failed" for r in records),
        )

    def summarize(self, scores: Sequence[SampleScore]) -> dict[str, Any]:
        """Mean utility over the captions that have one; unscored draws and utility-less captions counted.

        Under ``parse="caprl"`` the draws whose reply named no option, scored 0, are counted too
        (``unparsed_scored_0``): they are never scored as wrong without saying so.
        """
        values = [s.values["utility"] for s in scores if s.values.get("utility") is not None]
        summary = {
            "score": mean(values),
            "images": len(values),
            "no_utility": len(scores) - len(values),
            "unscored_draws": sum(s.unscored for s in scores),
            "cannot_answer_rate": mean(
                [s.values["cannot_answer_rate"] for s in scores if s.values.get("cannot_answer_rate") is not None]
            ),
        }
        if self.cfg.parse == "caprl":
            summary["unparsed_scored_0"] = sum(
                r["status"] == "unparsed" and r["correct"] is False for s in scores for r in s.details.get("draws", ())
            )
        return summary

    def units(self, scores: Sequence[SampleScore]) -> list[Unit]:
        """One unit per image with a utility, in one stratum (the headline is a plain mean)."""
        scored = [s for s in scores if s.values.get("utility") is not None]
        return [(s.sample_id, "all", float(s.values["utility"]), 1.0) for s in scored]
