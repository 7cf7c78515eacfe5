"""CaptionQA: how much of what a question needs can a text-only reader get from the caption?

Protocol (CaptionQA, arXiv 2511.21025, and its official ``qa.py``): a text LLM answers each
multiple-choice question about an image from the caption alone. Questions that are not yes/no
questions get an extra "cannot answer" option. Options are shuffled by a seeded stream. A
right answer scores 1, a wrong one 0, "cannot answer" 1/K + 0.05 where K is the number of real
options. Domain score = 100 × mean over the domain's questions; overall = unweighted mean of
the domain scores.

Where we differ from the official code (docs/metrics/captionqa.md says why):
- a reply that names no option is *unscored* (kept with its raw text and counted), not 0;
  ``score_unparsed_as_wrong`` gives the official treatment alongside;
- each question's option order comes from its own stream, seeded by (seed, sample id,
  question id), so that subsets, resumed runs and caches see the same prompts;
- prompt wording and the "cannot answer" option text are our own;
- an optional ``loglik`` answer mode, for judges too small to follow the one-letter
  instruction, ranks the presented options by how much the caption raises the judge's
  log-likelihood of giving each one as its answer (pointwise mutual information with the
  caption); it is recorded as ``answer_mode`` in the results.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from capbench.engines.base import Choice, Message, Request, Response, Sampling
from capbench.errors import ConfigError
from capbench.hashing import sha256_text
from capbench.metrics.base import Judges, Unit, mean, require_judge
from capbench.metrics.parsing import LETTERS, parse_choice
from capbench.metrics.templates import load_template
from capbench.records import Caption, Question, Sample, SampleScore

CANNOT_ANSWER = "Cannot be determined from the caption"
CANNOT_ANSWER_BONUS = 0.05

_YES_NO_STARTERS = (
    "is ", "are ", "was ", "were ", "do ", "does ", "did ", "have ", "has ", "had ",
    "can ", "could ", "will ", "would ", "should ", "shall ", "may ", "might ", "must ",
)  # fmt: skip

AnswerMode = Literal["letter", "loglik"]
Status = Literal["correct", "wrong", "cannot_answer", "unparsed", "failed"]


# ---------------------------------------------------------------- pure protocol pieces


def is_yes_no(question: str, choices: Sequence[str]) -> bool:
    """Tell whether CaptionQA treats a question as yes/no (and so adds no "cannot answer").

    The official rule, kept as is: some choice contains "yes" and some choice contains "no"
    as substrings (case-insensitive), or the question starts with an auxiliary verb.
    """
    folded = [c.strip().lower() for c in choices]
    if any("yes" in c for c in folded) and any("no" in c for c in folded):
        return True
    return question.strip().lower().startswith(_YES_NO_STARTERS)


def presented_options(question: Question, seed: int, sample_id: str) -> tuple[list[str], list[int]]:
    """Return the options as shown to the judge and, for each, its index before shuffling.

    The "cannot answer" option (index ``len(question.choices)``) is appended to non-yes/no
    questions, then all options are shuffled by a stream seeded with (seed, sample, question).
    """
    options = list(question.choices)
    if not is_yes_no(question.question, question.choices):
        options.append(CANNOT_ANSWER)
    order = list(range(len(options)))
    random.Random(f"captionqa:{seed}:{sample_id}:{question.id}").shuffle(order)
    return [options[i] for i in order], order


def question_score(status: Status, n_real_options: int) -> float | None:
    """Score one answer: 1 right, 0 wrong, 1/K + 0.05 for "cannot answer", None if unscored."""
    if status == "correct":
        return 1.0
    if status == "wrong":
        return 0.0
    if status == "cannot_answer":
        return 1.0 / n_real_options + CANNOT_ANSWER_BONUS
    return None


def answer_status(chosen_original: int | None, question: Question) -> Status:
    """Classify the option a judge chose, given as its index before shuffling."""
    if chosen_original is None:
        return "unparsed"
    if chosen_original == len(question.choices):
        return "cannot_answer"
    return "correct" if chosen_original == question.answer_index else "wrong"


def caption_pmi(with_caption: Sequence[float], without_caption: Sequence[float]) -> list[float]:
    """Return, per option, log p(option | caption, question) - log p(option | question).

    Subtracting what the judge would answer with no caption removes its prior for an option's
    wording and length (Holtzman et al., 2021, "Surface Form Competition"), so the option the
    caption supports most wins, and "cannot answer" wins when the caption supports none.
    """
    return [a - b for a, b in zip(with_caption, without_caption, strict=True)]


def read_answer(
    response: Response, baseline: Response | None, options: Sequence[str]
) -> tuple[int | None, dict[str, Any]]:
    """Read which presented option a judge chose: (its index or None, fields for the record).

    In letter mode (no ``baseline``) the reply is parsed; in loglik mode the option the caption
    raises most (:func:`caption_pmi`) is chosen. A failed call gives ``{"error": ...}``.
    """
    failed = next((r for r in (response, baseline) if r is not None and not r.ok), None)
    if failed is None and baseline is not None and None in (response.option_logprobs, baseline.option_logprobs):
        failed = Response(error="the judge returned no option scores")
    if failed is not None:
        return None, {"reply": None, "error": failed.error or "no response"}
    if baseline is None:
        return parse_choice(response.text, options), {"reply": response.text}
    pmi = caption_pmi(response.option_logprobs or (), baseline.option_logprobs or ())
    shown = max(range(len(pmi)), key=pmi.__getitem__)
    return shown, {"option_scores": [round(x, 6) for x in pmi], "reply": LETTERS[shown]}


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate per-question records into domain and overall scores (pure).

    Each record needs ``domain``, ``status`` and ``score``. Domain numbers are means over the
    domain's scored questions × 100; overall numbers are unweighted means of domain numbers.
    ``score_unparsed_as_wrong`` counts unparsed replies as 0, as the official script does.
    """
    by_domain: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        by_domain[str(record["domain"])].append(record)
    domains = {name: _domain_summary(rows) for name, rows in sorted(by_domain.items())}
    overall: dict[str, Any] = {}
    for key in ("score", "accuracy", "cannot_answer_rate", "score_unparsed_as_wrong"):
        values = [d[key] for d in domains.values() if d[key] is not None]
        overall[key] = mean(values)
    for key in ("questions", "scored", "unparsed", "failed"):
        overall[key] = sum(d[key] for d in domains.values())
    return {**overall, "domains": domains}


def _domain_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    scored = [r for r in rows if r["score"] is not None]
    unparsed = sum(1 for r in rows if r["status"] == "unparsed")
    failed = sum(1 for r in rows if r["status"] == "failed")
    strict_rows = [r for r in rows if r["status"] != "failed"]

    def pct(values: list[float]) -> float | None:
        m = mean(values)
        return None if m is None else 100.0 * m

    return {
        "score": pct([r["score"] for r in scored]),
        "accuracy": pct([1.0 if r["status"] == "correct" else 0.0 for r in scored]),
        "cannot_answer_rate": pct([1.0 if r["status"] == "cannot_answer" else 0.0 for r in scored]),
        "score_unparsed_as_wrong": pct([r["score"] or 0.0 for r in strict_rows]),
        "questions": len(rows),
        "scored": len(scored),
        "unparsed": unparsed,
        "failed": failed,
    }


# ---------------------------------------------------------------- the metric


@dataclass(frozen=True)
class CaptionQAConfig:
    """Settings of CaptionQA that change scores."""

    seed: int = 0
    """Seed of the option shuffle."""
    answer_mode: AnswerMode = "letter"
    """'letter': the judge writes a letter (the protocol); 'loglik': options ranked by caption PMI."""
    max_tokens: int = 4
    """Tokens the judge may write in letter mode (the official default is 4)."""
    temperature: float = 0.0
    """Judge sampling temperature in letter mode."""
    prompt_dir: str | None = None
    """Folder of replacement prompt templates (same file names), or None for ours."""

    def __post_init__(self) -> None:
        if self.answer_mode not in ("letter", "loglik"):
            raise ConfigError(f"answer_mode must be 'letter' or 'loglik', not {self.answer_mode!r}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class _Item:
    """One question of one captioned sample, ready to ask (with its no-caption twin in loglik mode)."""

    sample: Sample
    question: Question
    options: list[str]
    order: list[int]
    request: Request
    baseline: Request | None = None


class CaptionQA:
    """The CaptionQA metric over samples that carry multiple-choice questions."""

    name = "captionqa"
    higher_is_better = True
    value_range = (0.0, 100.0)
    needs = frozenset({"questions"})
    judge_roles = ("text",)
    title = "CaptionQA"
    description = "multiple-choice questions answered from the caption alone (CaptionQA)"
    unit = "points (0-100)"
    columns = (
        ("score", "score"),
        ("accuracy", "accuracy"),
        ("cannot %", "cannot_answer_rate"),
        ("unscored", "unparsed+failed"),
    )
    breakdowns = (("CaptionQA score by domain", "domains", "score"),)
    note = "judge {judge} ({answer_mode} answers); score = mean of domain scores, 0-100"
    rewards = (("captionqa", "score", 100.0),)

    def __init__(self, config: CaptionQAConfig | None = None) -> None:
        self.cfg = config or CaptionQAConfig()
        prefix = "captionqa.loglik" if self.cfg.answer_mode == "loglik" else "captionqa"
        self._system = load_template(f"{prefix}.system", self.cfg.prompt_dir)
        self._user = load_template(f"{prefix}.user", self.cfg.prompt_dir)

    def config(self) -> dict[str, Any]:
        """Return the settings that change scores."""
        return {
            "seed": self.cfg.seed,
            "answer_mode": self.cfg.answer_mode,
            "max_tokens": self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
            "cannot_answer_option": CANNOT_ANSWER,
            "cannot_answer_bonus": CANNOT_ANSWER_BONUS,
        }

    def prompt_hashes(self) -> dict[str, str]:
        """Return the hashes of the prompt templates in use."""
        return {t.name: t.sha256 for t in (self._system, self._user)}

    def build_request(self, caption: str, question: Question, options: Sequence[str], seed: int = 0) -> Request:
        """Build the judge request for one question: instructions, caption, then the question.

        In letter mode the options are listed and the judge writes a letter (sampled with
        ``seed``); in loglik mode the judge is asked the question and each option is scored as
        its answer.
        """
        lines = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))
        fields = {"caption": caption, "question": question.question}
        if self.cfg.answer_mode == "loglik":
            user = self._user.render(**fields)
            messages = (Message.text("system", self._system.render()), Message.text("user", user))
            return Request(messages, Sampling(max_tokens=1, temperature=0.0), Choice(tuple(options), loglik=True))
        user = self._user.render(**fields, options=lines)
        messages = (Message.text("system", self._system.render()), Message.text("user", user))
        return Request(messages, Sampling(max_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature, seed=seed))

    def planned_requests(self, samples: Sequence[Sample], captions: Sequence[Caption]) -> int:
        """One request per question (two in loglik mode: with and without the caption)."""
        per_question = 2 if self.cfg.answer_mode == "loglik" else 1
        return per_question * sum(len(s.questions) for s in samples)

    def score(self, samples: Sequence[Sample], captions: Sequence[Caption], judges: Judges) -> list[SampleScore]:
        """Ask every question of every sample in one batch, then score each sample."""
        judge = require_judge(judges, "text", self.name)
        if self.cfg.answer_mode == "loglik" and not judge.supports_loglik:
            raise ConfigError(
                f"answer mode 'loglik' needs an engine that scores options; {judge.backend} does not. "
                "Use --answer-mode letter"
            )
        # Records are gathered by position, not by sample id: a batch may hold several captions of
        # one image (a group of RL rollouts).
        owners = [(n, s, c, q) for n, (s, c) in enumerate(zip(samples, captions, strict=True)) for q in s.questions]
        items = [self._item(s, c, q) for _, s, c, q in owners]
        baselines = [item.baseline for item in items if item.baseline is not None]
        responses = judge.run([item.request for item in items] + baselines)
        answers, no_caption = responses[: len(items)], iter(responses[len(items) :])
        per_sample: list[list[dict[str, Any]]] = [[] for _ in samples]
        for (n, *_), item, response in zip(owners, items, answers, strict=True):
            baseline = next(no_caption) if item.baseline is not None else None
            per_sample[n].append(self._judgment(item, response, baseline))
        return [self._sample_score(s, c, per_sample[n]) for n, (s, c) in enumerate(zip(samples, captions, strict=True))]

    def _item(self, sample: Sample, caption: Caption, question: Question) -> _Item:
        options, order = presented_options(question, self.cfg.seed, sample.id)
        request = self.build_request(caption.text, question, options)
        # The no-caption twin does not depend on the caption: one per question, served from the
        # cache for every further caption set.
        baseline = self.build_request("", question, options) if self.cfg.answer_mode == "loglik" else None
        return _Item(sample, question, options, order, request, baseline)

    def _judgment(self, item: _Item, response: Response, baseline: Response | None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "question_id": item.question.id,
            "category": item.question.category,
            "domain": item.sample.domain,
            "options": item.options,
            "answer": LETTERS[item.order.index(item.question.answer_index)],
        }
        shown, read = read_answer(response, baseline, item.options)
        record.update(read)
        if "error" in read:
            status: Status = "failed"
            record.update(status=status, score=None)
            return record
        chosen = None if shown is None else item.order[shown]
        status = answer_status(chosen, item.question)
        record.update(
            chosen=None if shown is None else LETTERS[shown],
            status=status,
            score=question_score(status, len(item.question.choices)),
        )
        return record

    def _sample_score(self, sample: Sample, caption: Caption, records: list[dict[str, Any]]) -> SampleScore:
        scored = [r["score"] for r in records if r["score"] is not None]
        values = {
            "score": None if not scored else 100.0 * sum(scored) / len(scored),
            "accuracy": None if not scored else 100.0 * sum(r["status"] == "correct" for r in records) / len(scored),
            "cannot_answer_rate": None
            if not scored
            else 100.0 * sum(r["status"] == "cannot_answer" for r in records) / len(scored),
        }
        return SampleScore(
            sample_id=sample.id,
            metric=self.name,
            values=values,
            details={"domain": sample.domain, "questions": records},
            unscored=len(records) - len(scored),
            caption_sha256=sha256_text(caption.text),
            failed=sum(r["status"] == "failed" for r in records),
        )

    def summarize(self, scores: Sequence[SampleScore]) -> dict[str, Any]:
        """Return domain and overall scores from the per-question records of ``scores``."""
        return aggregate(r for s in scores for r in s.details.get("questions", []))

    def units(self, scores: Sequence[SampleScore]) -> list[Unit]:
        """One unit per image: its mean question score, weighted by its scored questions, per domain."""
        out: list[Unit] = []
        for s in scores:
            rows = [r["score"] for r in s.details.get("questions", []) if r["score"] is not None]
            if rows:
                out.append(
                    (s.sample_id, str(s.details.get("domain", "default")), 100.0 * sum(rows) / len(rows), len(rows))
                )
        return out
