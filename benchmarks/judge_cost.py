"""Judge cost per caption of capbench's metrics, against the official protocols, and prefix-cache reuse.

Usage: python benchmarks/judge_cost.py [--decapbench-repo PATH] [--captionqa-repo PATH] [--caparena-repo PATH]
           [--tokenizer GGUF]
Writes benchmarks/results/judge_cost.json and benchmarks/results/judge_cost.md.

The judge is a perfect one: for the fact pipeline it answers with the true judgments written for
capbench-mini's example captions (tests/fixtures/mini_oracle.json), so replies have realistic
sizes; for CaptionQA and CapRL it writes one letter; for CapArena a one-sentence reason and a
verdict (``_instant.InstantEngine``). The captions are capbench-mini's three example sets
(54 captions); CapArena's baselines there are the other two sets, so each caption is judged
against 2 baselines (its own set is skipped), by every protocol alike.

For each protocol we count, per caption: requests, completions (a request with n samples has
n), prompt tokens (the text of every message) and completion tokens, all with one tokenizer
(SmolLM2's, from the bundled GGUF) so the protocols compare fairly. Images are not counted:
every protocol attaches the image once per request that shows it.

Prefix-cache reuse: every request of one run (one caption set), in the order sent, is rendered with SmolLM2's chat
template and tokenized. A request reuses its longest run of leading 16-token blocks whose whole
prefix equals that of some earlier request (vLLM's automatic prefix caching: blocks hashed with
their prefix, full blocks only, a cache that never evicts); the share is reused prompt tokens over
all prompt tokens. ``prefix_share_token`` is the same rule with 1-token blocks (the longest
common token prefix with any earlier request). A request sent with n samples counts once.

- capbench: each metric alone (DCScore, BalCap with ``--fact-protocol official`` settings, CaptionQA
  and CapRL in letter mode, CapArena in both orders and in one order), and DCScore + BalCap in one
  run (the shared decomposition, matching and verification are answered by the cache). The metrics
  are built by ``capbench.build_metrics`` from those ``EvalConfig`` settings, the judge put behind
  an in-memory judge cache by ``capbench.api.cached_judge``.
- official, estimated from the official repositories' own prompt strings, read at run time from
  local clones (or bare git mirrors) given with --*-repo and never stored: each prompt is
  rendered with the same captions, facts, questions and references, and sent as the official
  code sends it (DeCapBench: extraction, matching with 3 completions, verification with 3
  completions, each under its default system message "You are a helpful assistant.", replies
  in the JSON it asks for, every fact echoed; CaptionQA: one request per question under its
  system message, options lettered, its "cannot answer" option on non-yes/no questions, a
  one-letter reply; CapArena-Auto: one judgment per (caption, baseline) pair, its with-reference
  system message, the reply "Reason: <the same sentence>\nJudgment: <verdict>"). A protocol whose
  repository is not given is left out.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from _instant import REASON, InstantEngine  # noqa: E402
from _report import save  # noqa: E402
from oracle_engine import ORACLE, OracleEngine  # noqa: E402

import capbench  # noqa: E402
from capbench.api import cached_judge  # noqa: E402
from capbench.data import load_benchmark  # noqa: E402
from capbench.engines.base import OnResult, Request, Response  # noqa: E402
from capbench.metrics.captionqa import is_yes_no  # noqa: E402
from capbench.metrics.parsing import LETTERS  # noqa: E402
from capbench.records import Caption, read_caption_file  # noqa: E402

OFFICIAL_SYSTEM = "You are a helpful assistant."
BLOCK = 16  # vLLM's default KV-cache block size
Chat = list[tuple[str, str]]  # (role, text) per message


class Tokenizer:
    """Counts tokens with the vocabulary (and chat template) of a GGUF model (no weights loaded)."""

    def __init__(self, gguf: str | None) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from capbench.engines.llamacpp import resolve_model

        path = gguf or str(resolve_model("smollm2"))
        self.llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        text_of = self.llm._model.token_get_text
        self.formatter = Jinja2ChatFormatter(
            template=self.llm.metadata["tokenizer.chat_template"],
            eos_token=text_of(self.llm.token_eos()),
            bos_token=text_of(self.llm.token_bos()),
        )

    def count(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def chat(self, messages: Chat) -> list[int]:
        """The prompt's tokens as a server would build them: the chat template, then the tokenizer."""
        formatted = self.formatter(messages=[{"role": r, "content": t} for r, t in messages])
        return self.llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True)


@dataclass
class Tally:
    """What one protocol sends for a run: counts, and every prompt's tokens in the order sent."""

    tok: Tokenizer
    requests: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    runs: list[list[list[int]]] = field(default_factory=lambda: [[]])

    def add(self, messages: Chat, replies: Sequence[str]) -> None:
        self.requests += 1
        self.completions += len(replies)
        self.prompt_tokens += sum(self.tok.count(text) for _, text in messages)
        self.completion_tokens += sum(self.tok.count(text) for text in replies)
        self.runs[-1].append(self.tok.chat(messages))

    def new_run(self) -> None:
        """Later requests belong to another run (another caption set), with a prefix cache of its own."""
        if self.runs[-1]:
            self.runs.append([])

    def per_caption(self, captions: int) -> dict[str, float]:
        reused, templated = (sum(x) for x in zip(*(prefix_reuse(r, BLOCK) for r in self.runs), strict=True))
        token_reused = sum(prefix_reuse(r, 1)[0] for r in self.runs)
        return {
            "requests": round(self.requests / captions, 2),
            "completions": round(self.completions / captions, 2),
            "prompt_tokens": round(self.prompt_tokens / captions, 1),
            "completion_tokens": round(self.completion_tokens / captions, 1),
            "prefix_share": round(reused / templated if templated else 0.0, 3),
            "prefix_share_token": round(token_reused / templated if templated else 0.0, 3),
            "templated_prompt_tokens": round(templated / captions, 1),
            "uncached_prompt_tokens": round((templated - reused) / captions, 1),
        }


def prefix_reuse(prompts: Sequence[Sequence[int]], block: int) -> tuple[int, int]:
    """(prompt tokens a prefix cache can reuse, all prompt tokens) over ``prompts`` in the order sent.

    A prompt reuses its leading ``block``-token blocks as long as each block, with everything
    before it, was in an earlier prompt (vLLM's hash chain over full blocks; nothing evicted).
    """
    seen: set[bytes] = set()
    reused = total = 0
    for tokens in prompts:
        total += len(tokens)
        chain, hit = b"", True
        for start in range(0, len(tokens) - len(tokens) % block, block):
            chain = hashlib.blake2b(chain + repr(tokens[start : start + block]).encode(), digest_size=16).digest()
            if hit and chain in seen:
                reused += block
            else:
                hit = False
                seen.add(chain)
    return reused, total


class CountingEngine:
    """Answers fact-pipeline requests from the oracle, others at once; tallies what it is sent."""

    def __init__(self, tally: Tally) -> None:
        self.oracle, self.instant, self.tally = OracleEngine(), InstantEngine(), tally
        self.backend, self.accepts_images, self.supports_loglik = "counting", True, False

    def fingerprint(self) -> dict:
        return self.oracle.fingerprint()

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        out = []
        for index, request in enumerate(requests):
            engine = self.oracle if request.messages[0].joined_text() in self.oracle.stage_of else self.instant
            response = engine.run([request])[0]
            self.tally.add([(m.role, m.joined_text()) for m in request.messages], response.texts)
            out.append(response)
            if on_result is not None:
                on_result(index, response)
        return out


def example_sets() -> list[tuple[str, dict[str, str]]]:
    bench = load_benchmark("mini")
    return [(name, read_caption_file(path).captions) for name, path in bench.example_captions.items()]


def capbench_cost(metrics: list[str] | dict[str, dict], tok: Tokenizer) -> dict[str, float]:
    """Per-caption cost of scoring each example set with ``metrics`` (names, or their settings), the sets in turn."""
    bench = load_benchmark("mini")
    tally = Tally(tok)
    captions = 0
    for _, caption_set in example_sets():
        # One cache per caption set, as for a new model's captions: in capbench-mini the example sets
        # are also CapArena's baselines, and one shared cache would answer set A against B from
        # set B against A.
        judge = cached_judge(CountingEngine(tally), cache=False)
        tally.new_run()
        caps = [Caption(s.id, caption_set[s.id]) for s in bench.samples]
        captions += len(caps)
        built, _ = capbench.build_metrics(capbench.EvalConfig(metrics=metrics, **SETTINGS))
        for metric in built:
            metric.score(list(bench.samples), caps, {"text": judge})
    return tally.per_caption(captions)


# ---------------------------------------------------------------- the official protocols, estimated


def read_source(repo: Path, path: str) -> str:
    """A file of an official repository: from a checkout, or from a bare git mirror's HEAD."""
    if (repo / path).is_file():
        return (repo / path).read_text(encoding="utf-8")
    git_dir = repo / "repo" if (repo / "repo" / "HEAD").is_file() else repo
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), "show", f"HEAD:{path}"], capture_output=True, text=True, check=True
    ).stdout


def string_constants(tree: ast.AST, names: set[str]) -> dict[str, str]:
    """Literal strings assigned to ``names`` anywhere in the module (first assignment wins)."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in names
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            found.setdefault(node.targets[0].id, node.value.value)
    return found


def fstring(tree: ast.AST, target: str, needs: str) -> Callable[[dict[str, str]], str]:
    """The f-string assigned to ``target`` whose fields include ``needs``, as a function of its fields.

    Fields are looked up by their source text (``caption``, ``chr(10).join(lines)``); the
    official code is never run.
    """
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == target
            and isinstance(node.value, ast.JoinedStr)
        ):
            parts = node.value.values
            fields = [ast.unparse(p.value) for p in parts if isinstance(p, ast.FormattedValue)]
            if needs in fields:

                def render(values: dict[str, str], parts: list[ast.expr] = parts) -> str:
                    return "".join(
                        str(p.value) if isinstance(p, ast.Constant) else values[ast.unparse(p.value)]  # type: ignore[attr-defined]
                        for p in parts
                    )

                return render
    raise LookupError(f"no f-string assigned to {target} with a field {needs!r}")


def official_decapbench(repo: Path, tok: Tokenizer) -> dict[str, float]:
    """DeCapBench's protocol on the same captions, with the true facts as replies."""
    tree = ast.parse(read_source(repo, "eval/evaluation_decapbench.py"))
    prompts = string_constants(tree, {"extract_prompt", "verify_prompt", "match_prompt"})
    truth = json.loads(ORACLE.read_text())["images"]
    bench = load_benchmark("mini")
    tally, captions = Tally(tok), 0
    for name, caption_set in example_sets():
        tally.new_run()
        for sample in bench.samples:
            facts = truth[sample.id][name]["facts"]
            echo = [{"fact": f["fact"], "identifier": f["object"]} for f in facts]
            extracted = [{**e, "relevance": int(f["descriptive"])} for e, f in zip(echo, facts, strict=True)]
            oracle = [{"id": i, "fact": t} for i, t in enumerate(sample.reference_facts)]
            matched = [{**e, "matched_oracle_id": f["reference"]} for e, f in zip(echo, facts, strict=True)]
            verified = [{**e, "verification": int(f["correct"])} for e, f in zip(echo, facts, strict=True)]
            sent = [
                (prompts["extract_prompt"].format(caption=caption_set[sample.id]), 1, _listing(extracted)),
                (
                    prompts["match_prompt"].format(
                        predicted_atomic_facts=_listing(echo), oracle_atomic_facts=_listing(oracle)
                    ),
                    3,
                    _listing(matched),
                ),
                (
                    prompts["verify_prompt"].format(
                        reference_caption=sample.reference_caption, atomic_facts=_listing(echo)
                    ),
                    3,
                    _listing(verified),
                ),
            ]
            for prompt, n, reply in sent:
                tally.add([("system", OFFICIAL_SYSTEM), ("user", prompt)], [reply] * n)
            captions += 1
    return tally.per_caption(captions)


def official_captionqa(repo: Path, tok: Tokenizer) -> dict[str, float]:
    """CaptionQA's qa.py on the same captions and questions: one request per question, a letter back."""
    tree = ast.parse(read_source(repo, "qa.py"))
    strings = string_constants(tree, {"CANNOT_ANSWER_TEXT", "system_prompt"})
    prompt = fstring(tree, "prompt", "caption")
    bench = load_benchmark("mini")
    tally, captions = Tally(tok), 0
    for _, caption_set in example_sets():
        tally.new_run()
        for sample in bench.samples:
            for question in sample.questions:
                options = list(question.choices)
                if not is_yes_no(question.question, question.choices):
                    options.append(strings["CANNOT_ANSWER_TEXT"])
                lines = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))
                user = prompt(
                    {"caption": caption_set[sample.id], "question": question.question, "chr(10).join(lines)": lines}
                )
                tally.add([("system", strings["system_prompt"]), ("user", user)], ["A"])
            captions += 1
    return tally.per_caption(captions)


def official_caparena(repo: Path, tok: Tokenizer) -> dict[str, float]:
    """CapArena-Auto on the same pairs: one judgment per (caption, baseline), in one order."""
    tree = ast.parse(read_source(repo, "vlm_as_a_judge.py"))
    system = string_constants(tree, {"system_prompt_with_ref"})["system_prompt_with_ref"]
    prompt = fstring(tree, "compare_prompt", "caption_ref")
    bench = load_benchmark("mini")
    tally, captions = Tally(tok), 0
    for _, caption_set in example_sets():
        tally.new_run()
        for sample in bench.samples:
            caption = caption_set[sample.id]
            for _, baseline in sorted(sample.baselines.items()):
                if baseline.strip() == caption.strip():
                    continue  # the same pairs as capbench judges
                user = prompt({"caption_1": caption, "caption_2": baseline, "caption_ref": sample.reference_caption})
                tally.add([("system", system), ("user", user)], [f"Reason: {REASON}\nJudgment: Tie"])
            captions += 1
    return tally.per_caption(captions)


def _listing(items: list[dict]) -> str:
    """The official scripts' JSON list layout: a fenced list, one object per line."""
    return "```json[\n" + "".join(f"  {json.dumps(d, ensure_ascii=False)},\n" for d in items) + "]\n```"


#: Settings of every capbench row: the official fact protocol, letter answers, both arena orders.
SETTINGS = {"fact_protocol": "official", "answer_mode": "letter", "arena_order": "both"}
#: Row -> (metrics of one capbench run, with any settings that differ from SETTINGS; the official
#: protocol it compares with).
CAPBENCH_ROWS: dict[str, tuple[list[str] | dict[str, dict], str]] = {
    "capbench dcscore": (["dcscore"], "DeCapBench"),
    "capbench balcap": (["balcap"], "DeCapBench"),
    "capbench dcscore+balcap": (["dcscore", "balcap"], "DeCapBench"),
    "capbench captionqa": (["captionqa"], "CaptionQA"),
    "capbench caprl (N=8)": (["caprl"], "CapRL"),
    "capbench arena --arena-order both": (["arena"], "CapArena"),
    "capbench arena --arena-order single": ({"arena": {"order": "single"}}, "CapArena"),
}
OFFICIAL_ROWS = {
    "DeCapBench": ("official DeCapBench (DCScore)", official_decapbench),
    "CaptionQA": ("official CaptionQA (qa.py)", official_captionqa),
    "CapArena": ("official CapArena-Auto", official_caparena),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decapbench-repo", type=Path, help="a clone (or bare mirror) of MAGAer13/DeCapBench")
    parser.add_argument("--captionqa-repo", type=Path, help="a clone (or bare mirror) of bronyayang/CaptionQA")
    parser.add_argument("--caparena-repo", type=Path, help="a clone (or bare mirror) of njucckevin/CapArena")
    parser.add_argument("--tokenizer", help="GGUF whose vocabulary counts tokens (default: the bundled SmolLM2)")
    args = parser.parse_args()
    tok = Tokenizer(args.tokenizer)
    repos = {"DeCapBench": args.decapbench_repo, "CaptionQA": args.captionqa_repo, "CapArena": args.caparena_repo}
    rows: dict[str, dict] = {}
    for name, (metrics, protocol) in CAPBENCH_ROWS.items():
        rows[name] = {"protocol": protocol, **capbench_cost(metrics, tok)}
        official = OFFICIAL_ROWS.get(protocol)
        if official is not None and repos[protocol] is not None and official[0] not in rows:
            rows[official[0]] = {"protocol": protocol, **official[1](repos[protocol], tok)}
    missing = [p for p, r in repos.items() if r is None]
    lines = [
        "# Judge cost per caption (capbench-mini example captions, 54 captions, a perfect judge)",
        "",
        "Tokens counted with SmolLM2's tokenizer for every protocol; images not counted. Official prompt sizes "
        "are estimated by rendering the official prompt strings (read from the official repositories at run "
        "time) with the same inputs. Prefix reuse: share of prompt tokens (chat template applied) in leading "
        f"{BLOCK}-token blocks already sent, with their whole prefix, by an earlier request of the same run "
        "(one caption set of 18; vLLM "
        "automatic prefix caching, no eviction); in brackets the same with 1-token blocks.",
        "",
        "| protocol | requests | completions | prompt tokens | completion tokens | prefix-reusable prompt share "
        "| prompt tokens not reusable (templated) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['requests']} | {row['completions']} | {row['prompt_tokens']} | "
                     f"{row['completion_tokens']} | {100 * row['prefix_share']:.0f}% "
                     f"({100 * row['prefix_share_token']:.0f}%) | {row['uncached_prompt_tokens']} of "
                     f"{row['templated_prompt_tokens']} |")  # fmt: skip
    lines += [
        "",
        "CaptionQA and CapRL: letter mode (the protocols'), one request per question or draw; CapRL's official "
        "reward code also sends one request per draw, so its count is the same by construction (no official "
        "prompt estimated). CapArena: each caption against the 2 baselines that are not its own set.",
    ]
    if missing:
        lines.append(f"Official rows left out (no repository given): {', '.join(missing)}.")
    save("judge_cost", rows, "\n".join(lines))


if __name__ == "__main__":
    main()
