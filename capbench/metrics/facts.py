"""The shared fact pipeline behind DCScore and the BalCapRL rewards.

Stages:

1. *decompose* each caption into atomic facts (object identifier, descriptive flag), and, for
   samples without human reference facts, their reference caption too; *rate* each caption's
   writing (clarity, fluency, coherence) in the same batch when asked;
2. *match* each caption fact to one reference fact or none, and *verify* each caption fact
   (correct? pointable?) from the reference caption, and the image when a vision judge is
   given.

The first stage is one batched ``engine.run`` over all items. With judges that can be called
from several threads at once (``concurrent = True``: served models, the ``openai`` engine), a
caption's second stage is sent as soon as its own decomposition (and its reference's) returns,
not when the whole batch's has: the slowest decomposition of a batch no longer holds back every
verification (:data:`STREAM_PER_CAPTION`). An in-process model gets the second stage as one
batch, which is what it runs fastest. The requests, and so the judgments, are the same either way.

Every metric that needs facts calls the same stages with the same requests, so a caption
decomposed for DCScore is not decomposed again for BalCapRL: the judge-call cache answers.
Replies are parsed tolerantly; a reply that cannot be read is kept with its raw text, and so
is one that could be read only by a guess (entries taken in order, a missing flag, a reference
that does not exist), which is recorded as a failure although its reading is used.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from capbench.engines.base import (
    Engine,
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
from capbench.metrics.base import Judges, Unit, require_judge
from capbench.metrics.fact_replies import (
    Fact,
    Verdicts,
    _rating,
    _read_facts,
    _read_matches,
    _read_verdicts,
)
from capbench.metrics.parsing import parse_json
from capbench.metrics.templates import load_template
from capbench.records import Caption, Sample, SampleScore

RATINGS = ("clarity", "fluency", "coherence")

#: Send each caption's matching and verification as soon as its own decomposition returns, where
#: the judges can be called from several threads (False: the whole batch's second stage at once,
#: as before; a benchmark switch, it changes when requests are sent, never what they are).
STREAM_PER_CAPTION = True

#: The most captions whose second stage waits on the judges at once (each holds a thread).
MAX_CAPTIONS_IN_FLIGHT = 128


@dataclass
class FactJudgments:
    """Everything the judges said about one captioned sample."""

    facts: tuple[Fact, ...] | None = None
    references: tuple[str, ...] = ()
    verdicts: list[Verdicts] = field(default_factory=list)
    matches: list[tuple[int | None, ...]] = field(default_factory=list)
    ratings: dict[str, int] | None = None
    verify_mode: str = "reference"
    failures: list[dict[str, Any]] = field(default_factory=list)

    def error(self, need_linguistic: bool = False) -> str | None:
        """Why this sample cannot be scored, or None."""
        if self.facts is None:
            return "decomposition failed"
        if not self.references:
            return "no reference facts"
        if not self.verdicts:
            return "every verification failed"
        if not self.matches:
            return "every matching failed"
        if need_linguistic and self.ratings is None:
            return "linguistic rating failed"
        return None

    def log(self) -> dict[str, Any]:
        """Return what the judges said, for the per-sample details."""
        return {
            "facts": [f.to_dict() for f in self.facts or ()],
            "verify_mode": self.verify_mode,
            "verdicts": [{"correct": list(v.correct), "pointable": list(v.pointable)} for v in self.verdicts],
            "matches": [[None if m is None else m + 1 for m in sample] for sample in self.matches],
            "ratings": self.ratings,
            "failures": self.failures,
        }


@dataclass(frozen=True)
class FactConfig:
    """Judge settings of the fact pipeline (defaults follow DeCapBench's released protocol)."""

    decompose_temperature: float = 1.0
    """Sampling temperature of the decomposition (one sample)."""
    match_samples: int = 3
    """Matching samples per caption."""
    match_temperature: float = 1.0
    """Sampling temperature of the matching."""
    verify_samples: int = 3
    """Verification samples per caption."""
    verify_temperature: float = 0.3
    """Sampling temperature of the verification."""
    rating_temperature: float = 0.0
    """Sampling temperature of the linguistic rating."""
    max_tokens: int = 2000
    """Most tokens a judge may write per reply."""
    max_facts: int | None = None
    """Most facts a decomposition may list (enforced by the JSON schema), or None for no limit."""
    seed: int = 0
    """Sampling seed (sample i of n uses seed + i where the engine supports seeds)."""
    prompt_dir: str | None = None
    """Folder of replacement prompt templates (same file names), or None for ours."""

    def __post_init__(self) -> None:
        if self.match_samples < 1 or self.verify_samples < 1:
            raise ConfigError("match_samples and verify_samples must be at least 1")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> FactConfig:
        """Return a named protocol: 'official' (DeCapBench's settings), 'greedy' or 'embedded'.

        'greedy': temperature 0 and one sample per stage (deterministic, three times cheaper).
        'embedded': greedy with at most 16 facts and 512 tokens a reply, for the embedded
        135M judge, which repeats itself until it runs out of tokens.
        """
        greedy = {
            "decompose_temperature": 0.0, "match_samples": 1, "match_temperature": 0.0,
            "verify_samples": 1, "verify_temperature": 0.0,
        }  # fmt: skip
        presets = {"official": {}, "greedy": greedy, "embedded": {**greedy, "max_facts": 16, "max_tokens": 512}}
        if name not in presets:
            raise ConfigError(f"unknown fact protocol {name!r}; choose one of: {', '.join(presets)}")
        return cls(**{**presets[name], **overrides})

    def settings(self) -> dict[str, Any]:
        """Return the settings that change judgments (for manifests and resume checks)."""
        return {k: v for k, v in self.__dict__.items() if k != "prompt_dir"}


def _schema_decompose(max_facts: int | None) -> dict[str, Any]:
    item = {
        "type": "object",
        "properties": {
            "fact": {"type": "string", "minLength": 1, "maxLength": 300},
            "object": {"type": "string", "maxLength": 40},
            "descriptive": {"type": "boolean"},
        },
        "required": ["fact", "object", "descriptive"],
    }
    array: dict[str, Any] = {"type": "array", "items": item, "minItems": 1}
    if max_facts is not None:
        array["maxItems"] = max_facts
    return {"type": "object", "properties": {"facts": array}, "required": ["facts"]}


def _schema_list(key: str, item: dict[str, Any], count: int) -> dict[str, Any]:
    array = {"type": "array", "items": item, "minItems": count, "maxItems": count}
    return {"type": "object", "properties": {key: array}, "required": [key]}


_VERDICT = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "correct": {"type": "boolean"}, "pointable": {"type": "boolean"}},
    "required": ["id", "correct", "pointable"],
}
_MATCH = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "reference": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
    "required": ["id", "reference"],
}
_RATINGS = {
    "type": "object",
    "properties": {name: {"type": "integer", "enum": list(range(1, 11))} for name in RATINGS},
    "required": list(RATINGS),
}


class FactPipeline:
    """Builds, sends and parses the fact stages for a batch of captioned samples."""

    STAGES = ("decompose", "verify", "match", "linguistic")

    def __init__(self, config: FactConfig | None = None) -> None:
        self.cfg = config or FactConfig()
        self.templates = {
            (stage, part): load_template(f"facts.{stage}.{part}", self.cfg.prompt_dir)
            for stage in self.STAGES
            for part in ("system", "user")
        }
        # One worked example, given as a previous turn of the conversation.
        for part in ("example_caption", "example_answer"):
            self.templates[("decompose", part)] = load_template(f"facts.decompose.{part}", self.cfg.prompt_dir)

    def prompt_hashes(self, stages: Sequence[str]) -> dict[str, str]:
        """Return the hashes of the templates the given stages use (decomposition always)."""
        wanted = {"decompose", *stages}
        return {t.name: t.sha256 for (stage, _), t in self.templates.items() if stage in wanted}

    # ------------------------------------------------------------ requests

    def _messages(self, stage: str, images: tuple[ImagePart, ...] = (), **fields: str) -> tuple[Message, ...]:
        system = self.templates[(stage, "system")].render()
        user = self.templates[(stage, "user")].render(**fields)
        parts = (*images, TextPart(user))
        return (Message.text("system", system), Message("user", parts))

    def _sampling(self, temperature: float, n: int = 1) -> Sampling:
        return Sampling(max_tokens=self.cfg.max_tokens, temperature=temperature, seed=self.cfg.seed, n=n)

    def decompose_request(self, text: str) -> Request:
        """Ask for the atomic facts of one caption, after one worked example."""
        system, user = self._messages("decompose", caption=text)
        example = self.templates[("decompose", "example_caption")].render()
        messages: tuple[Message, ...] = (system, user)
        if example:  # an empty example file (in --prompt-dir) leaves the example out
            answer = Message.text("assistant", self.templates[("decompose", "example_answer")].render())
            messages = (system, self._messages("decompose", caption=example)[1], answer, user)
        return Request(
            messages,
            self._sampling(self.cfg.decompose_temperature),
            JsonSchema.of(_schema_decompose(self.cfg.max_facts)),
        )

    def rating_request(self, text: str) -> Request:
        """Ask for clarity, fluency and coherence ratings of one caption."""
        return Request(
            self._messages("linguistic", caption=text),
            self._sampling(self.cfg.rating_temperature),
            JsonSchema.of(_RATINGS),
        )

    def verify_request(self, sample: Sample, facts: Sequence[Fact], with_image: bool) -> Request:
        """Ask whether each fact is correct and pointable."""
        images = tuple(ImagePart(i) for i in sample.images) if with_image else ()
        statements = _numbered(f.text for f in facts)
        fields = {"reference": sample.reference_caption, "statements": statements, "facts_json": _facts_json(facts)}
        return Request(
            self._messages("verify", images, **fields),
            self._sampling(self.cfg.verify_temperature, self.cfg.verify_samples),
            JsonSchema.of(_schema_list("verdicts", _VERDICT, len(facts))),
            # the image (when sent) and the reference come first: every caption of the sample shares them
            affinity=affinity("verify", sample.reference_caption, *(i.image.sha256 for i in images)),
        )

    def match_request(self, facts: Sequence[Fact], references: Sequence[str]) -> Request:
        """Ask which reference fact, if any, each caption fact matches."""
        listing = _numbered(references)
        caption_facts = _numbered(f.text for f in facts)
        references_json = _json_listing([{"id": i, "fact": text} for i, text in enumerate(references)])
        fields = {"reference_facts": listing, "facts": caption_facts, "facts_json": _facts_json(facts)}
        return Request(
            self._messages("match", **fields, reference_facts_json=references_json),
            self._sampling(self.cfg.match_temperature, self.cfg.match_samples),
            JsonSchema.of(_schema_list("matches", _MATCH, len(facts))),
            affinity=affinity("match", listing),  # the reference facts come first
        )

    # ------------------------------------------------------------ the stages

    def run(
        self, samples: Sequence[Sample], captions: Sequence[str], judges: Judges, linguistic: bool = False
    ) -> list[FactJudgments]:
        """Run every stage for ``captions[i]`` of ``samples[i]``; return what the judges said."""
        text_judge = require_judge(judges, "text", "fact pipeline")
        vision = judges.get("vision")
        if vision is not None and not vision.accepts_images:
            raise ConfigError(f"the vision judge ({vision.backend}) cannot read images; choose one that can")
        out = [FactJudgments(verify_mode="image" if vision is not None else "reference") for _ in samples]
        if STREAM_PER_CAPTION and concurrent(text_judge) and (vision is None or concurrent(vision)):
            self._streamed(samples, captions, text_judge, vision, out, linguistic)
        else:
            self._first_stage(samples, captions, text_judge, out, linguistic)
            self._second_stage(samples, text_judge, vision, out)
        return out

    def _streamed(
        self,
        samples: Sequence[Sample],
        captions: Sequence[str],
        judge: Engine,
        vision: Engine | None,
        out: list[FactJudgments],
        rate: bool,
    ) -> None:
        """Both stages, a caption's second one sent as soon as its first-stage inputs are back.

        The first stage is the batch :meth:`_first_stage` sends; each reply is read as the engine
        reports it, and a caption whose decomposition (and reference decomposition) are read gets
        its matching and verification on a worker thread at once. Failures are recorded in the
        order the stage-by-stage path records them, so the per-sample records are the same.
        """
        refs_needed = {i for i, s in enumerate(samples) if not s.reference_facts and s.reference_caption.strip()}
        owners = [(i, "decompose") for i in range(len(captions))]
        owners += [(i, "decompose_reference") for i in sorted(refs_needed)]
        owners += [(i, "linguistic") for i in range(len(captions))] if rate else []
        requests = [
            self.rating_request(captions[i]) if stage == "linguistic"
            else self.decompose_request(samples[i].reference_caption if stage == "decompose_reference" else captions[i])
            for i, stage in owners
        ]  # fmt: skip
        for i, sample in enumerate(samples):
            if i not in refs_needed:
                out[i].references = tuple(sample.reference_facts)
        first: list[dict[str, list[dict[str, Any]]]] = [
            {"decompose": [], "decompose_reference": [], "linguistic": []} for _ in samples
        ]
        second: list[list[dict[str, Any]]] = [[] for _ in samples]
        waiting = [2 if i in refs_needed else 1 for i in range(len(samples))]
        read: set[int] = set()
        lock = threading.Lock()
        jobs: list[Future[None]] = []
        pool = ThreadPoolExecutor(max(1, min(len(samples), MAX_CAPTIONS_IN_FLIGHT)), "capbench-facts")

        def take(index: int, reply: Response) -> None:
            with lock:
                if index in read:  # the engine's report, then the returned list: read once
                    return
                read.add(index)
            i, stage = owners[index]
            judgment = out[i]
            if stage == "linguistic":
                judgment.ratings = self._parse_ratings(reply, first[i][stage])
                return
            facts = self._parse_facts(reply, first[i][stage], stage)
            if stage == "decompose":
                judgment.facts = facts
            else:
                judgment.references = tuple(f.text for f in facts or ())
            with lock:
                waiting[i] -= 1
                ready = waiting[i] == 0
            if ready and judgment.facts and judgment.references:
                jobs.append(pool.submit(self._check_one, samples[i], judgment, judge, vision, second[i]))

        try:
            replies = judge.run(requests, take)
            for index, reply in enumerate(replies):  # any reply the engine did not report as it came
                take(index, reply)
            for job in jobs:
                job.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for judgment, stages, rest in zip(out, first, second, strict=True):
            judgment.failures = [*stages["decompose"], *stages["decompose_reference"], *stages["linguistic"], *rest]

    def _check_one(
        self,
        sample: Sample,
        judgment: FactJudgments,
        judge: Engine,
        vision: Engine | None,
        failures: list[dict[str, Any]],
    ) -> None:
        """Match and verify one decomposed caption (the two requests at once)."""
        facts = judgment.facts or ()
        match = self.match_request(facts, judgment.references)
        verify = self.verify_request(sample, facts, vision is not None)
        if vision is None:
            m_reply, v_reply = judge.run([match, verify])
        else:
            with ThreadPoolExecutor(1, "capbench-verify") as side:
                verified = side.submit(vision.run, [verify])
                (m_reply,) = judge.run([match])
                (v_reply,) = verified.result()
        self._read_checks(judgment, m_reply, v_reply, failures)

    def _first_stage(
        self, samples: Sequence[Sample], captions: Sequence[str], judge: Engine, out: list[FactJudgments], rate: bool
    ) -> None:
        """Decompose captions (and references that have no facts), and rate the writing."""
        need_refs = [i for i, s in enumerate(samples) if not s.reference_facts and s.reference_caption.strip()]
        requests = [self.decompose_request(c) for c in captions]
        requests += [self.decompose_request(samples[i].reference_caption) for i in need_refs]
        requests += [self.rating_request(c) for c in captions] if rate else []
        replies = iter(judge.run(requests))
        for judgment, reply in zip(out, _take(replies, len(captions)), strict=True):
            judgment.facts = self._parse_facts(reply, judgment.failures, "decompose")
        decomposed_refs = dict(zip(need_refs, _take(replies, len(need_refs)), strict=True))
        for i, sample in enumerate(samples):
            if i in decomposed_refs:
                facts = self._parse_facts(decomposed_refs[i], out[i].failures, "decompose_reference")
                out[i].references = tuple(f.text for f in facts or ())
            else:
                out[i].references = tuple(sample.reference_facts)
        if rate:
            for judgment, reply in zip(out, _take(replies, len(captions)), strict=True):
                judgment.ratings = self._parse_ratings(reply, judgment.failures)

    def _second_stage(
        self, samples: Sequence[Sample], text_judge: Engine, vision: Engine | None, out: list[FactJudgments]
    ) -> None:
        """Match and verify every decomposed caption: one batch per judge."""
        ready = [i for i, j in enumerate(out) if j.facts and j.references]
        matches = [self.match_request(out[i].facts or (), out[i].references) for i in ready]
        verifies = [self.verify_request(samples[i], out[i].facts or (), vision is not None) for i in ready]
        if vision is None:
            replies = text_judge.run(matches + verifies)
            match_replies, verify_replies = replies[: len(ready)], replies[len(ready) :]
        else:
            match_replies, verify_replies = text_judge.run(matches), vision.run(verifies)
        for i, m_reply, v_reply in zip(ready, match_replies, verify_replies, strict=True):
            self._read_checks(out[i], m_reply, v_reply, out[i].failures)

    def _read_checks(
        self, judgment: FactJudgments, m_reply: Response, v_reply: Response, failures: list[dict[str, Any]]
    ) -> None:
        """Read one caption's matching and verification replies into its judgments."""
        texts = [f.text for f in judgment.facts or ()]
        read_matches = partial(_read_matches, facts=texts, references=len(judgment.references))
        judgment.matches = self._parse_samples(m_reply, failures, "match", read_matches)
        read_verdicts = partial(_read_verdicts, facts=texts)
        judgment.verdicts = self._parse_samples(v_reply, failures, "verify", read_verdicts)

    # ------------------------------------------------------------ parsing

    def _parse_facts(self, reply: Response, failures: list[dict[str, Any]], stage: str) -> tuple[Fact, ...] | None:
        if not reply.ok:
            failures.append({"stage": stage, "error": reply.error or "no reply", "raw": None})
            return None
        cut_off = reply.completion_tokens >= self.cfg.max_tokens
        facts, unflagged = _read_facts(parse_json(reply.text, truncated=cut_off))
        if not facts:
            failures.append({"stage": stage, "error": "no facts in the reply", "raw": reply.text})
            return None
        if unflagged and stage == "decompose":  # a reference fact's flag is never used
            error = f"{unflagged} of {len(facts)} facts carry no readable descriptive flag: read as descriptive"
            failures.append({"stage": stage, "error": error, "raw": reply.text})
        if cut_off:
            error = f"reply cut off at {self.cfg.max_tokens} tokens; kept its {len(facts)} complete facts"
            failures.append({"stage": stage, "error": error, "raw": reply.text})
        return facts

    @staticmethod
    def _parse_ratings(reply: Response, failures: list[dict[str, Any]]) -> dict[str, int] | None:
        if not reply.ok:
            failures.append({"stage": "linguistic", "error": reply.error or "no reply", "raw": None})
            return None
        value = parse_json(reply.text)
        ratings = {k: _rating(value.get(k)) for k in RATINGS} if isinstance(value, dict) else {}
        if len(ratings) != len(RATINGS) or None in ratings.values():
            failures.append({"stage": "linguistic", "error": "no 1-10 ratings in the reply", "raw": reply.text})
            return None
        return ratings  # type: ignore[return-value]

    @staticmethod
    def _parse_samples(reply: Response, failures: list[dict[str, Any]], stage: str, read: Any) -> list[Any]:
        """Read each sample of a reply; an unreadable one is left out, a guessed one kept: both recorded."""
        if not reply.ok:
            failures.append({"stage": stage, "error": reply.error or "no reply", "raw": None})
            return []
        parsed = []
        for text in reply.texts:
            value, guesses = read(parse_json(text))
            if value is None:
                failures.append({"stage": stage, "error": "reply does not cover every fact", "raw": text})
                continue
            parsed.append(value)
            failures.extend({"stage": stage, "error": guess, "raw": text} for guess in guesses)
        return parsed


def concurrent(engine: Any) -> bool:
    """Whether ``engine`` (or the engine it wraps: the cache, a recorder) may be called from several threads."""
    while engine is not None:
        flag = getattr(engine, "concurrent", None)
        if flag is not None:
            return bool(flag)
        engine = getattr(engine, "engine", None)
    return False


def _json_listing(items: Sequence[Mapping[str, Any]]) -> str:
    """A fenced JSON list, one object per line: the layout of DeCapBench's prompts."""
    return "```json[\n" + "".join(f"  {json.dumps(d, ensure_ascii=False)},\n" for d in items) + "]\n```"


def _facts_json(facts: Sequence[Fact]) -> str:
    """Caption facts as DeCapBench lists them, for official prompt templates ($facts_json)."""
    return _json_listing([{"fact": f.text, "identifier": f.object} for f in facts])


def _take(iterator: Iterator[Response], count: int) -> list[Response]:
    return [next(iterator) for _ in range(count)]


def _numbered(texts: Iterable[str]) -> str:
    """List texts as "1. …" lines, each on one line: a newline in a fact could forge a numbered one."""
    return "\n".join(f"{i}. {' '.join(text.split())}" for i, text in enumerate(texts, start=1))


class FactMetric:
    """What the fact metrics share: one pipeline, its settings, and one record per captioned sample.

    A subclass names its stages and headline value, and turns a caption's judgments into values.
    """

    name = ""
    higher_is_better = True
    value_range = (0.0, 100.0)
    needs = frozenset({"reference_caption"})
    judge_roles = ("text", "vision")
    unit = "points (0-100)"
    note = (
        "judge {judge} ({fact_protocol} protocol); 0-100; unscored = images left out; 'reference': facts "
        "checked against the reference caption only (no vision judge)"
    )
    #: Stages after decomposition whose prompts the metric uses.
    stages: tuple[str, ...] = ("match", "verify")
    #: Whether the linguistic rating is asked for.
    linguistic = False
    #: The per-sample values; ``headline`` is the one the headline score averages.
    keys: tuple[str, ...] = ()
    headline = ""

    def __init__(self, config: FactConfig | None = None) -> None:
        self.pipeline = FactPipeline(config)

    def config(self) -> dict[str, Any]:
        """Return the judge settings."""
        return self.pipeline.cfg.settings()

    def prompt_hashes(self) -> dict[str, str]:
        """Return the hashes of the templates of the metric's stages (decomposition included)."""
        return self.pipeline.prompt_hashes(self.stages)

    def planned_requests(self, samples: Sequence[Sample], captions: Sequence[Caption]) -> int:
        """Decompose, match and verify (and rate) per caption, one more per reference to decompose."""
        per_caption = 3 + int(self.linguistic)
        return sum(per_caption + (0 if s.reference_facts else 1) for s in samples)

    def score(self, samples: Sequence[Sample], captions: Sequence[Caption], judges: Judges) -> list[SampleScore]:
        """Run the fact pipeline over the batch and score each caption."""
        judgments = self.pipeline.run(samples, [c.text for c in captions], judges, linguistic=self.linguistic)
        return [self._sample_score(s, c, j) for s, c, j in zip(samples, captions, judgments, strict=True)]

    def units(self, scores: Sequence[SampleScore]) -> list[Unit]:
        """One unit per scored image, all in one stratum."""
        return [
            (s.sample_id, "all", float(s.values[self.headline]), 1.0)
            for s in scores
            if s.values.get(self.headline) is not None
        ]

    def values(self, judgments: FactJudgments) -> dict[str, float | None]:
        """Return the sample's values from judgments that can be scored."""
        raise NotImplementedError

    def _sample_score(self, sample: Sample, caption: Caption, judgments: FactJudgments) -> SampleScore:
        error = judgments.error(need_linguistic=self.linguistic)
        values = dict.fromkeys(self.keys) if judgments.error() else self.values(judgments)
        # facts the judge took from the reference caption (the sample has none): kept, so the matches can be read
        derived = {} if sample.reference_facts else {"reference_facts": list(judgments.references)}
        return SampleScore(
            sample_id=sample.id,
            metric=self.name,
            values=values,
            details={**judgments.log(), "error": error, "references": len(judgments.references), **derived},
            unscored=len(judgments.failures) + (1 if error else 0),
            caption_sha256=sha256_text(caption.text),
            failed=sum(f["raw"] is None for f in judgments.failures),
        )
