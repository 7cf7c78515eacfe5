"""An in-process judge that answers every request at once with a valid reply, and synthetic workloads.

The reply is chosen from the request's shape, never from a lookup table, so any caption gets one:

- a JSON schema with ``facts`` (decomposition): one fact per sentence of the fenced caption;
- ``verdicts`` / ``matches`` (verification, matching): one entry per statement, as many as the
  schema asks for; every fact correct and pointable, fact i matched to reference fact i (or none);
- the three ratings (linguistic): 7, 8, 7;
- ``judgment`` (pairwise): a one-sentence reason and "Tie";
- a log-likelihood choice: a score for every option, the first one best;
- anything else (a CaptionQA or CapRL letter): "A".

:func:`register` names the instant judge and the synthetic benchmark in capbench's registries,
and :func:`prebuilt` names an engine object built before the run, so the benchmarks build their
runs with ``capbench.prepare`` and ``capbench.api.run`` as ``capbench eval`` does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from capbench.data import BENCHMARKS, Benchmark, load_benchmark
from capbench.engines import ENGINES
from capbench.engines.base import Choice, Engine, EngineWrapper, JsonSchema, OnResult, Request, Response
from capbench.records import CaptionSet, Sample, read_caption_file

_FENCED = re.compile(r"<caption>\n(.*?)\n</caption>", re.S)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
REASON = "Both captions describe the main objects; neither adds a detail the other misses."
#: Engines built before a run, by the name their ``prebuilt:NAME`` judge gives.
_PREBUILT: dict[str, Engine] = {}


class InstantEngine:
    """Answers every request immediately with a reply the metric's parser accepts."""

    backend = "instant"
    accepts_images = True
    supports_loglik = True

    def __init__(self, model: str = "instant") -> None:
        self.model = model
        self.calls = 0

    def fingerprint(self) -> dict:
        return {"backend": self.backend, "model": self.model}

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        out = []
        for index, request in enumerate(requests):
            self.calls += 1
            response = self.answer(request)
            out.append(response)
            if on_result is not None:
                on_result(index, response)
        return out

    def answer(self, request: Request) -> Response:
        constraint = request.constraint
        if isinstance(constraint, Choice) and constraint.loglik:
            scores = tuple(-1.0 - i for i in range(len(constraint.options)))
            return Response(
                texts=(constraint.options[0],),
                prompt_tokens=1,
                option_logprobs=scores,
                option_tokens=(1,) * len(scores),
            )
        text = reply_text(request)
        return Response(texts=(text,) * request.sampling.n, prompt_tokens=1, completion_tokens=1)


def reply_text(request: Request) -> str:
    """The text a perfect, terse judge would write for ``request``."""
    constraint = request.constraint
    if not isinstance(constraint, JsonSchema):
        return "A"
    properties = json.loads(constraint.schema_json).get("properties", {})
    if "facts" in properties:
        caption = _FENCED.findall(request.messages[-1].joined_text())[-1]
        sentences = [s.strip() for s in _SENTENCE.split(caption) if s.strip()] or [caption]
        facts = [{"fact": s, "object": (s.split() or ["thing"])[0].lower(), "descriptive": True} for s in sentences]
        return json.dumps({"facts": facts})
    for key in ("verdicts", "matches"):
        if key in properties:
            count = properties[key]["minItems"]
            if key == "verdicts":
                items = [{"id": i, "correct": True, "pointable": True} for i in range(1, count + 1)]
            else:
                items = [{"id": i, "reference": i if i <= 3 else None} for i in range(1, count + 1)]
            return json.dumps({key: items})
    if "judgment" in properties:
        return json.dumps({"reason": REASON, "judgment": "Tie"})
    return json.dumps({"clarity": 7, "fluency": 8, "coherence": 7})


def synthetic(size: int, base: Benchmark | None = None) -> tuple[Benchmark, CaptionSet]:
    """``size`` captioned samples made from capbench-mini: copies of its samples with unique ids.

    Copy k of a sample gets id ``<id>~k`` and the caption of example set ``k % 3`` with
    "(copy k)" appended, so no two captions, and no two judge requests, are the same.
    """
    mini = base or load_benchmark("mini")
    sets = [read_caption_file(path).captions for path in mini.example_captions.values()]
    samples: list[Sample] = []
    captions: dict[str, str] = {}
    for n in range(size):
        k, sample = divmod(n, len(mini.samples))
        original = mini.samples[sample]
        copy = Sample(
            id=f"{original.id}~{k}",
            image=original.image,
            reference_caption=original.reference_caption,
            reference_facts=original.reference_facts,
            questions=original.questions,
            domain=original.domain,
            meta=original.meta,
            baselines=original.baselines,
        )
        samples.append(copy)
        captions[copy.id] = f"{sets[k % len(sets)][original.id]} (copy {k})"
    return Benchmark(f"mini-x{size}", tuple(samples)), CaptionSet(f"synthetic-{size}", captions)


def load(with_images: bool = False, size: int = 18) -> Benchmark:
    """Load the ``synthetic`` benchmark: ``size`` copies of capbench-mini's samples (see :func:`synthetic`)."""
    return synthetic(size, load_benchmark("mini", with_images=with_images))[0]


def register() -> str:
    """Name the instant judge and the synthetic benchmark in capbench's registries; return the judge's name.

    A run then builds them as it builds any other: ``EvalConfig(judge="instant:instant",
    benchmark="synthetic", benchmark_options={"size": 100})``.
    """
    ENGINES["instant"] = (__name__, "InstantEngine", "answers every request at once (benchmarks/_instant.py)")
    BENCHMARKS["synthetic"] = (__name__, "copies of capbench-mini's samples with unique ids (benchmarks/_instant.py)")
    return "instant:instant"


class Prebuilt(EngineWrapper):
    """An engine object built before the run (a loaded model, a wrapper around one), found by its name."""

    def __init__(self, model: str) -> None:
        super().__init__(_PREBUILT[model])


def prebuilt(engine: Engine, name: str) -> str:
    """Name ``engine`` in capbench's registry; return the judge name whose runs judge with that very object.

    A model loaded once (a vLLM engine) then serves several runs, each built by ``capbench.api.run``.
    """
    ENGINES["prebuilt"] = (__name__, "Prebuilt", "an engine object built before the run (benchmarks/_instant.py)")
    _PREBUILT[name] = engine
    return f"prebuilt:{name}"
