"""A judge that answers the fact pipeline's requests with the truth we wrote for capbench-mini.

It recognises the stage by its system prompt and the caption (or fact list) by its text, and
replies in the JSON the prompts ask for, as a perfect judge would.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from capbench.data import load_benchmark
from capbench.engines.base import OnResult, Request, Response
from capbench.metrics.templates import load_template
from capbench.records import read_caption_file

ORACLE = Path(__file__).parent / "fixtures" / "mini_oracle.json"


class OracleEngine:
    """Answers decompose, verify, match and linguistic requests from the oracle file."""

    backend = "oracle"
    accepts_images = True
    supports_loglik = False

    def __init__(self, model: str = "truth") -> None:
        images = json.loads(ORACLE.read_text())["images"]
        bench = load_benchmark("mini")
        self.by_caption: dict[str, dict] = {}
        self.by_facts: dict[str, dict] = {}
        for name, path in bench.example_captions.items():
            for sample_id, caption in read_caption_file(path).captions.items():
                truth = images[sample_id][name]
                self.by_caption[caption] = truth
                self.by_facts[_listing(f["fact"] for f in truth["facts"])] = truth
        self.stage_of = {
            load_template(f"facts.{s}.system").render(): s for s in ("decompose", "verify", "match", "linguistic")
        }
        self.calls = 0

    def fingerprint(self) -> dict:
        return {"backend": "oracle", "model": "capbench-mini truth"}

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        out = []
        for index, request in enumerate(requests):
            self.calls += 1
            text = self._answer(request)
            response = Response(texts=(text,) * request.sampling.n, prompt_tokens=100, completion_tokens=50)
            out.append(response)
            if on_result is not None:
                on_result(index, response)
        return out

    def _answer(self, request: Request) -> str:
        stage = self.stage_of[request.messages[0].joined_text()]
        user = request.messages[-1].joined_text()
        if stage in ("decompose", "linguistic"):
            truth = self.by_caption[user.split("<caption>\n")[-1].split("\n</caption>")[0]]
            if stage == "linguistic":
                return json.dumps(truth["linguistic"])
            facts = [
                {"fact": f["fact"], "object": f["object"], "descriptive": f["descriptive"]} for f in truth["facts"]
            ]
            return json.dumps({"facts": facts})
        if stage == "verify":
            truth = self.by_facts[user.split("Statements:\n")[1].split("\n\nAnswer with JSON")[0]]
            verdicts = [
                {"id": i, "correct": f["correct"], "pointable": f["pointable"]} for i, f in enumerate(truth["facts"], 1)
            ]
            return json.dumps({"verdicts": verdicts})
        truth = self.by_facts[user.split("Caption facts:\n")[1].split("\n\nAnswer with JSON")[0]]
        matches = [
            {"id": i, "reference": None if f["reference"] is None else f["reference"] + 1}
            for i, f in enumerate(truth["facts"], 1)
        ]
        return json.dumps({"matches": matches})


def _listing(texts) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(texts, start=1))
