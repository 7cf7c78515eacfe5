"""Judge cost of DCScore and BalCapRL per caption, against DeCapBench's official protocol.

Usage: python benchmarks/judge_cost.py --decapbench-repo PATH [--tokenizer GGUF]
Writes benchmarks/results/judge_cost.json and benchmarks/results/judge_cost.md.

The judge is a perfect one: it answers with the true judgments written for capbench-mini's
example captions (tests/fixtures/mini_oracle.json), so replies have realistic sizes. For each
protocol we count, per caption: requests, completions (a request with n samples has n),
prompt tokens and completion tokens, all with one tokenizer (SmolLM2's, from the bundled
GGUF) so the protocols compare fairly. Images are not counted: both protocols attach the image
once per verification request.

- capbench: DCScore alone, BalCap alone, both in one run (the shared decomposition, matching
  and verification are answered by the cache), with `--fact-protocol official` settings.
- official: what DeCapBench's `evaluation_decapbench.py` sends for the same captions: its
  extraction prompt, its matching prompt (3 completions), its verification prompt (3
  completions), each with its default system message; replies in the JSON formats it asks for
  (every fact echoed with its identifier and verdict or matched id). Its prompt text is read from
  a local clone of the DeCapBench repository given with --decapbench-repo; none of it is stored.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from _report import save  # noqa: E402
from oracle_engine import ORACLE, OracleEngine  # noqa: E402

from capbench.data import load_benchmark  # noqa: E402
from capbench.engines.base import OnResult, Request, Response  # noqa: E402
from capbench.engines.cache import CachedEngine, ResponseCache  # noqa: E402
from capbench.metrics import build_metric  # noqa: E402
from capbench.metrics.facts import FactConfig  # noqa: E402
from capbench.records import Caption, read_caption_file  # noqa: E402


class Tokenizer:
    """Counts tokens with the vocabulary of a GGUF model (no weights loaded)."""

    def __init__(self, gguf: str | None) -> None:
        import llama_cpp

        from capbench.engines.llamacpp import resolve_model

        path = gguf or str(resolve_model("smollm2"))
        self.llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)

    def count(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


class CountingEngine:
    """Wraps an engine and counts what it is sent and what it answers."""

    def __init__(self, engine: OracleEngine, tokenizer: Tokenizer) -> None:
        self.engine, self.tok = engine, tokenizer
        self.backend, self.accepts_images, self.supports_loglik = "counting", True, False
        self.requests = self.completions = self.prompt_tokens = self.completion_tokens = 0

    def fingerprint(self) -> dict:
        return self.engine.fingerprint()

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        responses = self.engine.run(requests, on_result)
        for request, response in zip(requests, responses, strict=True):
            self.requests += 1
            self.completions += len(response.texts)
            self.prompt_tokens += sum(self.tok.count(m.joined_text()) for m in request.messages)
            self.completion_tokens += sum(self.tok.count(t) for t in response.texts)
        return responses


def capbench_cost(metrics: list[str], tok: Tokenizer) -> dict[str, float]:
    """Per-caption cost of scoring the three example sets with ``metrics`` in one run."""
    bench = load_benchmark("mini")
    counter = CountingEngine(OracleEngine(), tok)
    judge = CachedEngine(counter, ResponseCache(":memory:"))
    captions = 0
    for path in bench.example_captions.values():
        caption_set = read_caption_file(path)
        caps = [Caption(s.id, caption_set.captions[s.id]) for s in bench.samples]
        captions += len(caps)
        for name in metrics:
            build_metric(name, FactConfig.preset("official")).score(list(bench.samples), caps, {"text": judge})
    return _per_caption(
        counter.requests, counter.completions, counter.prompt_tokens, counter.completion_tokens, captions
    )


def official_prompts(repo: Path) -> dict[str, str]:
    """Read the three prompt strings from the official script, without running it."""
    tree = ast.parse((repo / "eval" / "evaluation_decapbench.py").read_text(encoding="utf-8"))
    wanted = {"extract_prompt", "verify_prompt", "match_prompt"}
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in wanted:
            found[node.targets[0].id] = ast.literal_eval(node.value)
    return found


def official_cost(repo: Path, tok: Tokenizer) -> dict[str, float]:
    """Per-caption cost of the official protocol on the same captions, with the true facts as replies."""
    prompts = official_prompts(repo)
    truth = json.loads(ORACLE.read_text())["images"]
    bench = load_benchmark("mini")
    system = tok.count("You are a helpful assistant.")
    requests = completions = prompt = completion = captions = 0
    for name, path in bench.example_captions.items():
        caption_set = read_caption_file(path)
        for sample in bench.samples:
            facts = truth[sample.id][name]["facts"]
            echo = [{"fact": f["fact"], "identifier": f["object"]} for f in facts]
            extracted = [{**e, "relevance": int(f["descriptive"])} for e, f in zip(echo, facts, strict=True)]
            oracle = [{"id": i, "fact": t} for i, t in enumerate(sample.reference_facts)]
            sent = [
                prompts["extract_prompt"].format(caption=caption_set.captions[sample.id]),
                prompts["match_prompt"].format(
                    predicted_atomic_facts=_listing(echo), oracle_atomic_facts=_listing(oracle)
                ),
                prompts["verify_prompt"].format(
                    reference_caption=sample.reference_caption, atomic_facts=_listing(echo)
                ),
            ]
            replies = [
                (1, _listing(extracted)),
                (3, _listing([{**e, "matched_oracle_id": f["reference"]} for e, f in zip(echo, facts, strict=True)])),
                (3, _listing([{**e, "verification": int(f["correct"])} for e, f in zip(echo, facts, strict=True)])),
            ]
            requests += 3
            completions += 7
            prompt += sum(system + tok.count(p) for p in sent)
            completion += sum(n * tok.count(text) for n, text in replies)
            captions += 1
    return _per_caption(requests, completions, prompt, completion, captions)


def _listing(items: list[dict]) -> str:
    """The official scripts' JSON list layout: a fenced list, one object per line."""
    return "```json[\n" + "".join(f"  {json.dumps(d, ensure_ascii=False)},\n" for d in items) + "]\n```"


def _per_caption(requests: int, completions: int, prompt: int, completion: int, captions: int) -> dict[str, float]:
    return {
        "requests": round(requests / captions, 2),
        "completions": round(completions / captions, 2),
        "prompt_tokens": round(prompt / captions, 1),
        "completion_tokens": round(completion / captions, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decapbench-repo", type=Path, required=True, help="a clone of MAGAer13/DeCapBench")
    parser.add_argument("--tokenizer", help="GGUF whose vocabulary counts tokens (default: the bundled SmolLM2)")
    args = parser.parse_args()
    tok = Tokenizer(args.tokenizer)
    rows = {
        "capbench dcscore": capbench_cost(["dcscore"], tok),
        "capbench balcap": capbench_cost(["balcap"], tok),
        "capbench dcscore+balcap": capbench_cost(["dcscore", "balcap"], tok),
        "official DeCapBench (DCScore)": official_cost(args.decapbench_repo, tok),
    }
    lines = [
        "# Judge cost per caption (capbench-mini example captions, 54 captions, a perfect judge)",
        "",
        "Tokens counted with SmolLM2's tokenizer for every protocol; images not counted.",
        "",
        "| protocol | requests | completions | prompt tokens | completion tokens |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['requests']} | {row['completions']} | {row['prompt_tokens']} | "
                     f"{row['completion_tokens']} |")  # fmt: skip
    save("judge_cost", rows, "\n".join(lines))


if __name__ == "__main__":
    main()
