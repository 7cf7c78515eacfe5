"""CaptionQA: how much of what a question needs can a text-only reader get from the caption?

Protocol (CaptionQA, arXiv 2511.21025, and its official ``qa.py``): a text LLM answers each
multiple-choice question about an image from the caption alone. Questions that are not yes/no
questions get an extra "cannot answer" option. Options are shuffled by a seeded stream. A
right answer scores 1, a wrong one 0, "cannot answer" 1/K + 0.05 where K is the number of real
options. Domain score = 100 × mean over the domain's questions; overall = unweighted mean of
the domain scores (the unweighted mean is the leaderboard script's; ``qa.py`` prints a mean over
all questions).

Where we differ from the official code (docs/metrics/captionqa.md says why):
- a reply that names no option is *unscored* (kept with its raw text and counted), not 0;
  ``score_unparsed_as_wrong`` gives the official treatment alongside;
- scores are exact; ``aggregation="official"`` adds the leaderboard's numbers (rounded per
  question and per domain, "cannot answer" told by the option's text, qa.py's letter parser);
- each question's option order comes from its own stream, seeded by (seed, sample id,
  question id), so that subsets, resumed runs and caches see the same prompts;
  ``shuffle="official"`` draws qa.py's single stream over the whole loaded split instead;
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

from capbench.engines.base import Choice, Message, Request, Response, Sampling, affinity
from capbench.errors import ConfigError
from capbench.hashing import sha256_text
from capbench.metrics.base import Judges, Unit, mean, require_judge
from capbench.metrics.parsing import LETTERS, parse_choice, parse_choice_official
from capbench.metrics.templates import load_template
from capbench.records import Caption, Question, Sample, SampleScore

CANNOT_ANSWER = "Cannot be determined from the caption"
CANNOT_ANSWER_BONUS = 0.05
#: The official option text; the official scorer scores any chosen option with this text as "cannot answer".
OFFICIAL_CANNOT_ANSWER = "Cannot answer from the caption"
#: The leaderboard's domains (the loader's splits): it shows an overall only when all four have a score.
OFFICIAL_DOMAINS = ("natural", "document", "ecommerce", "embodiedai")

_YES_NO_STARTERS = (
    "is ", "are ", "was ", "were ", "do ", "does ", "did ", "have ", "has ", "had ",
    "can ", "could ", "will ", "would ", "should ", "shall ", "may ", "might ", "must ",
)  # fmt: skip

AnswerMode = Literal["letter", "loglik"]
Aggregation = Literal["exact", "official"]
Shuffle = Literal["per_question", "official", "official_per_domain"]
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


def all_options(question: Question) -> list[str]:
    """Return the question's options before shuffling: its choices, then "cannot answer" unless yes/no."""
    options = list(question.choices)
    if not is_yes_no(question.question, question.choices):
        options.append(CANNOT_ANSWER)
    return options


def presented_options(question: Question, seed: int, sample_id: str) -> tuple[list[str], list[int]]:
    """Return the options as shown to the judge and, for each, its index before shuffling.

    The "cannot answer" option (index ``len(question.choices)``) is appended to non-yes/no
    questions, then all options are shuffled by a stream seeded with (seed, sample, question).
    """
    options = all_options(question)
    order = list(range(len(options)))
    random.Random(f"captionqa:{seed}:{sample_id}:{question.id}").shuffle(order)
    return [options[i] for i in order], order


def official_orders(
    entries: Iterable[tuple[str, str, Sequence[Question]]], seed: int, per_domain: bool = False
) -> dict[str, list[int]]:
    """Return each question's option order (question id -> indices before shuffling) as ``qa.py`` draws it.

    One ``random.Random(seed)`` stream (one per domain with ``per_domain``, as separate
    ``qa.py --split <domain>`` runs) shuffles ``range(n)`` for every question of the (entry id,
    domain, questions) ``entries`` in turn, n being its option count with "cannot answer"; so an
    order depends on every question before it. ``entries``: a whole split in dataset order.
    """
    streams: dict[str, random.Random] = {}
    orders: dict[str, list[int]] = {}
    for _, domain, questions in entries:
        key = domain if per_domain else ""
        if key not in streams:
            streams[key] = random.Random(seed)
        for question in questions:
            orders[question.id] = order = list(range(len(all_options(question))))
            streams[key].shuffle(order)
    return orders


def question_score(status: Status, n_real_options: int) -> float | None:
    """Score one answer: 1 right, 0 wrong, 1/K + 0.05 for "cannot answer", None if unscored."""
    if status == "correct":
        return 1.0
    if status == "wrong":
        return 0.0
    if status == "cannot_answer":
        return 1.0 / n_real_options + CANNOT_ANSWER_BONUS
    return None


def official_question_score(chosen_original: int | None, question: Question) -> float:
    """Score one answer as the official ``qa.py`` stores it: rounded to 4 decimals, no answer 0.

    "Cannot answer" is told by the chosen option's text, so a real option that reads
    :data:`OFFICIAL_CANNOT_ANSWER` scores 1/K + 0.05 even when it is the right answer.
    """
    if chosen_original is None:
        return 0.0
    k = len(question.choices)
    if chosen_original == k or question.choices[chosen_original] == OFFICIAL_CANNOT_ANSWER:
        return round(1.0 / k + CANNOT_ANSWER_BONUS, 4)
    return 1.0 if chosen_original == question.answer_index else 0.0


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


def aggregate_official(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Return the numbers the CaptionQA leaderboard shows for per-question records (pure).

    Each record needs ``domain``, ``status`` and ``official_score``. As the leaderboard script:
    domain = round(100 × sum / questions, 2), summed in record order; overall = round(sum of the
    four domains / 4, 2), only when natural, document, ecommerce and embodiedai all have a score.
    A domain with a failed judge call has none (the official script has no failed calls).
    Returns ``official_score`` (None without an overall), ``official_note`` (why) and ``domains``.
    """
    by_domain: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        by_domain[str(record["domain"])].append(record)
    domains: dict[str, float] = {}
    why = [f"no questions of {d}" for d in OFFICIAL_DOMAINS if d not in by_domain]
    for name, rows in sorted(by_domain.items()):
        total = 0.0
        for row in rows:  # one by one, as the script: sum() is compensated from Python 3.12
            total += row["official_score"] or 0.0
        failed = sum(row["status"] == "failed" for row in rows)
        if failed:
            why.append(f"{name} has {failed} failed judge call(s), to retry by running again")
        else:
            domains[name] = round(100 * total / len(rows), 2)
    if why:
        note = "the leaderboard shows an overall only when all four domains have a score: " + "; ".join(why)
        return {"official_score": None, "official_note": note, "domains": domains}
    overall = round(sum(domains[d] for d in OFFICIAL_DOMAINS) / 4, 2)
    return {"official_score": overall, "official_note": None, "domains": domains}


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
    aggregation: Aggregation = "exact"
    """'exact': the headline keeps every digit; 'official': also the leaderboard's numbers
    (``official_score``, per domain too), rounded as the official scripts round them."""
    shuffle: Shuffle = "per_question"
    """Option order: 'per_question' (a stream per question); 'official': qa.py's one stream over the
    loaded split ('all' or one domain); 'official_per_domain': qa.py's stream restarted per domain."""

    def __post_init__(self) -> None:
        if self.answer_mode not in ("letter", "loglik"):
            raise ConfigError(f"answer_mode must be 'letter' or 'loglik', not {self.answer_mode!r}")
        if self.aggregation not in ("exact", "official"):
            raise ConfigError(f"aggregation must be 'exact' or 'official', not {self.aggregation!r}")
        if self.shuffle not in ("per_question", "official", "official_per_domain"):
            raise ConfigError(
                f"shuffle must be 'per_question', 'official' or 'official_per_domain', not {self.shuffle!r}"
            )
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
        self._orders: dict[int, tuple[Any, dict[str, list[int]]]] = {}
        if self.cfg.aggregation == "official":
            # The headline stays the exact score (the one units give); the leaderboard's number sits beside it.
            self.columns = (CaptionQA.columns[0], ("official", "official_score"), *CaptionQA.columns[1:])
            self.breakdowns = (
                *CaptionQA.breakdowns,
                ("CaptionQA official (leaderboard) score by domain", "domains", "official_score"),
            )
            self.note = CaptionQA.note + "; official = the CaptionQA leaderboard's rounded number"

    def config(self) -> dict[str, Any]:
        """Return the settings that change scores (new settings only when not their default, so older hashes hold)."""
        config: dict[str, Any] = {
            "seed": self.cfg.seed,
            "answer_mode": self.cfg.answer_mode,
            "max_tokens": self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
            "cannot_answer_option": CANNOT_ANSWER,
            "cannot_answer_bonus": CANNOT_ANSWER_BONUS,
        }
        if self.cfg.aggregation != "exact":
            config["aggregation"] = self.cfg.aggregation
        if self.cfg.shuffle != "per_question":
            config["shuffle"] = self.cfg.shuffle
        return config

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
        shared = affinity("captionqa", self.cfg.answer_mode, caption)  # the caption's questions share its prefix
        if self.cfg.answer_mode == "loglik":
            user = self._user.render(**fields)
            messages = (Message.text("system", self._system.render()), Message.text("user", user))
            return Request(
                messages, Sampling(max_tokens=1, temperature=0.0), Choice(tuple(options), loglik=True), affinity=shared
            )
        user = self._user.render(**fields, options=lines)
        messages = (Message.text("system", self._system.render()), Message.text("user", user))
        sampling = Sampling(max_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature, seed=seed)
        return Request(messages, sampling, affinity=shared)

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
        orders = [self._official_orders(s) for s in samples] if self.cfg.shuffle != "per_question" else None
        # Records are gathered by position, not by sample id: a batch may hold several captions of
        # one image (a group of RL rollouts).
        owners = [(n, s, c, q) for n, (s, c) in enumerate(zip(samples, captions, strict=True)) for q in s.questions]
        items = [self._item(s, c, q, orders[n] if orders else None) for n, s, c, q in owners]
        baselines = [item.baseline for item in items if item.baseline is not None]
        responses = judge.run([item.request for item in items] + baselines)
        answers, no_caption = responses[: len(items)], iter(responses[len(items) :])
        per_sample: list[list[dict[str, Any]]] = [[] for _ in samples]
        for (n, *_), item, response in zip(owners, items, answers, strict=True):
            baseline = next(no_caption) if item.baseline is not None else None
            per_sample[n].append(self._judgment(item, response, baseline))
        return [self._sample_score(s, c, per_sample[n]) for n, (s, c) in enumerate(zip(samples, captions, strict=True))]

    def _official_orders(self, sample: Sample) -> dict[str, list[int]]:
        """Return qa.py's option orders for the split ``sample`` was loaded with; refuse where there are none.

        Raises:
            ConfigError: the sample was not loaded by the CaptionQA loader, its split is one qa.py
                cannot load (shuffle 'official'), or one of its questions is not in that load.
        """
        load = sample.meta.get("load_order")
        split = getattr(load, "split", None)
        if load is None or split is None:
            raise ConfigError(
                f"shuffle {self.cfg.shuffle!r} reproduces qa.py's option order over a whole split of the official "
                f"CaptionQA dataset, and sample {sample.id!r} was not loaded from it (benchmark 'captionqa'); "
                "use shuffle 'per_question'"
            )
        if self.cfg.shuffle == "official" and "," in split:
            raise ConfigError(
                f"shuffle 'official' reproduces `qa.py --split`, which runs on 'all' or one domain, not {split!r}; "
                "load split 'all' or one domain, or use shuffle 'official_per_domain' (one stream per domain)"
            )
        if id(load) not in self._orders:  # the load is kept beside its orders, so its id is not reused
            per_domain = self.cfg.shuffle == "official_per_domain"
            self._orders[id(load)] = (load, official_orders(load.entries, self.cfg.seed, per_domain))
        orders = self._orders[id(load)][1]
        stray = [q.id for q in sample.questions if len(orders.get(q.id, ())) != len(all_options(q))]
        if stray:
            raise ConfigError(
                f"sample {sample.id!r}: question {stray[0]!r} is not the one its CaptionQA load holds, so its "
                "official option order is unknown; reload the benchmark, or use shuffle 'per_question'"
            )
        return orders

    def _item(self, sample: Sample, caption: Caption, question: Question, orders: dict[str, list[int]] | None) -> _Item:
        if orders is None:
            options, order = presented_options(question, self.cfg.seed, sample.id)
        else:
            order = orders[question.id]
            options = [all_options(question)[i] for i in order]
        request = self.build_request(caption.text, question, options)
        # The no-caption twin does not depend on the caption: one per question, served from the
        # cache for every further caption set.
        baseline = self.build_request("", question, options) if self.cfg.answer_mode == "loglik" else None
        return _Item(sample, question, options, order, request, baseline)

    def _judgment(self, item: _Item, response: Response, baseline: Response | None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "question_id": item.question.id,
            "question": item.question.question,
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
            if self.cfg.aggregation == "official":
                record.update(official_chosen=None, official_score=None)
            return record
        if self.cfg.aggregation == "official":
            official = parse_choice_official(read["reply"], len(item.options))
            record["official_chosen"] = None if official is None else LETTERS[official]
            chosen_official = None if official is None else item.order[official]
            record["official_score"] = official_question_score(chosen_official, item.question)
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
        """Return domain and overall scores from the per-question records of ``scores``.

        With aggregation 'official', also the leaderboard's numbers (:func:`aggregate_official`):
        ``official_score``, ``official_note`` and each domain's ``official_score``.
        """
        records = [r for s in scores for r in s.details.get("questions", [])]
        summary = aggregate(records)
        if self.cfg.aggregation == "official":
            official = aggregate_official(records)
            for name, domain in summary["domains"].items():
                domain["official_score"] = official["domains"].get(name)
            del official["domains"]
            summary.update(official)
        return summary

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
