"""CaptionQA's official modes: the leaderboard's rounding, qa.py's option stream and its letter parser.

Expected values are computed here by hand or, for option orders, by drawing ``random.Random(seed)``
as the official ``qa.py`` draws it (bronyayang/CaptionQA, ``qa.py`` at f729489: one stream, one
``shuffle(list(range(n)))`` per question it asks, in dataset order), never by capbench's code.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from captionqa_fixture import ENTRIES, _q, build_captionqa_repo
from conftest import ScriptedEngine

from capbench.data import load_benchmark
from capbench.errors import ConfigError
from capbench.metrics import describe
from capbench.metrics.base import headline
from capbench.metrics.captionqa import (
    CANNOT_ANSWER,
    OFFICIAL_CANNOT_ANSWER,
    CaptionQA,
    CaptionQAConfig,
    aggregate_official,
    official_question_score,
)
from capbench.metrics.parsing import LETTERS, parse_choice, parse_choice_official
from capbench.records import Caption, Question, Sample

# ---------------------------------------------------------------- the official letter parser


@pytest.mark.parametrize(
    ("reply", "n", "expected"),
    [
        ("B", 4, 1),
        ("  c \n", 4, 2),  # stripped first (its vLLM wrapper strips), then read in either case
        ("a", 4, 0),  # a lower-case letter is a letter: an article reads as option A
        ("Answer: C", 4, 2),
        ("Answer:C", 4, 2),  # no "Answer: " with the space: the whole reply is read, "C" still stands alone
        ("B\nA is wrong", 4, 0),  # everything before the first newline is dropped: "B" is never read
        ("The answer is B", 4, 1),  # no newline: the first standalone letter is B (THE, ANSWER, IS are words)
        ("I choose B", 4, None),  # the first standalone letter is I (beyond D); no later letter is tried
        ("E", 4, None),  # past the last option, and no number
        ("2", 4, 1),  # a bare number numbers an option
        ("Option 3", 4, 2),
        ("5", 4, None),
        ("<think>A or B</think>D", 4, 3),  # only what follows </think>
        ("(B)", 4, 1),
        ("", 4, None),
        ("   ", 4, None),
    ],
)
def test_official_letter_parser(reply, n, expected):
    assert parse_choice_official(reply, n) == expected


def test_official_parser_differs_from_ours_where_the_card_says():
    options = ["red", "blue", "green", CANNOT_ANSWER]
    assert (parse_choice("B. blue\nA is wrong", options), parse_choice_official("B. blue\nA is wrong", 4)) == (1, 0)
    assert (parse_choice("a", options), parse_choice_official("a", 4)) == (0, 0)
    assert (parse_choice("a cat", options), parse_choice_official("a cat", 4)) == (None, 0)


# ---------------------------------------------------------------- the leaderboard's numbers


def test_official_question_scores_are_rounded_and_read_by_text():
    q = Question("q", "What is it?", tuple(f"o{i}" for i in range(7)), "o0")
    assert official_question_score(7, q) == 0.1929  # 1/7 + 0.05 = 0.192857…, stored to 4 decimals
    assert round(1 / 7 + 0.05 - 0.1929, 7) == -4.29e-5  # the per-question gap, at its largest
    assert official_question_score(3, Question("q", "What?", ("a", "b", "c"), "a")) == 0.3833
    assert official_question_score(0, q) == 1.0 and official_question_score(1, q) == 0.0
    assert official_question_score(None, q) == 0.0  # no letter read: 0, as qa.py
    # a real option that reads like the official "cannot answer" scores as one, right answer or not
    tricky = Question("q", "What is in the box?", ("A dog", OFFICIAL_CANNOT_ANSWER), OFFICIAL_CANNOT_ANSWER)
    assert official_question_score(1, tricky) == 0.55


@pytest.mark.parametrize(
    ("domains", "overall"),
    [
        # rows of the published leaderboard (CaptionQA/website index.html, Overall board): the mean of the
        # four shown domains, rounded by Python's round; 90.285 shows 90.28, 89.635 shows 89.64
        ((0.8878, 0.9081, 0.9473, 0.8682), 90.28),
        ((0.8895, 0.8897, 0.9573, 0.8489), 89.64),
        ((0.8525, 0.8585, 0.9335, 0.8037), 86.2),
        ((0.3591, 0.3081, 0.3452, 0.3378), 33.76),
    ],
)
def test_official_overall_is_the_leaderboards_row(domains, overall):
    records = [
        {"domain": d, "status": "correct", "official_score": v}
        for d, v in zip(("natural", "document", "ecommerce", "embodiedai"), domains, strict=True)
    ]
    got = aggregate_official(records)
    assert got["official_score"] == overall and got["official_note"] is None
    assert sorted(got["domains"].values()) == sorted(round(100 * v, 2) for v in domains)


def test_official_overall_needs_all_four_domains_and_no_failed_call():
    two = [{"domain": "natural", "status": "correct", "official_score": 1.0},
           {"domain": "document", "status": "wrong", "official_score": 0.0}]  # fmt: skip
    got = aggregate_official(two)
    assert got["official_score"] is None
    assert "no questions of ecommerce" in got["official_note"] and "embodiedai" in got["official_note"]
    assert got["domains"] == {"document": 0.0, "natural": 100.0}
    four = [{"domain": d, "status": "correct", "official_score": 1.0} for d in ("natural", "ecommerce", "embodiedai")]
    failed = [*four, {"domain": "document", "status": "failed", "official_score": None}]
    got = aggregate_official(failed)
    assert got["official_score"] is None and "document has 1 failed judge call(s)" in got["official_note"]


def _four_domain_samples() -> list[Sample]:
    def q(sid: str, n: int, text: str, choices: tuple[str, ...], answer: str) -> Question:
        return Question(f"{sid}/{n}", text, choices, answer)

    six, seven = tuple(f"item {i}" for i in range(6)), tuple(f"thing {i}" for i in range(7))
    return [
        Sample("n1", None, questions=(
            q("n1", 0, "What colour is the cup?", ("red", "blue", "green"), "blue"),
            q("n1", 1, "Which item is it?", six, "item 0"),
            q("n1", 2, "Which thing is it?", seven, "thing 0"),
        ), domain="natural"),
        Sample("d1", None, questions=(
            q("d1", 0, "What is the title?", ("Menu", "Map", "Memo"), "Menu"),
            q("d1", 1, "What is the date?", ("May", "June", "July"), "May"),
            q("d1", 2, "What is the price?", ("$1", "$2", "$3"), "$1"),
        ), domain="document"),
        Sample("e1", None, questions=(
            q("e1", 0, "What brand is it?", ("Acme", "Bolt"), "Acme"),
            q("e1", 1, "What size is it?", ("small", "large"), "small"),
            q("e1", 2, "What colour is the box?", ("white", "black"), "white"),
        ), domain="ecommerce"),
        Sample("b1", None, questions=(
            q("b1", 0, "What is in the box?", ("A dog", OFFICIAL_CANNOT_ANSWER), OFFICIAL_CANNOT_ANSWER),
        ), domain="embodiedai"),
    ]  # fmt: skip


#: What the scripted judge picks per question (an option's text), or a reply no parser reads.
PICKS = {
    "n1/0": "blue", "n1/1": CANNOT_ANSWER, "n1/2": CANNOT_ANSWER,  # right; cannot K=6; cannot K=7
    "d1/0": "Map", "d1/1": CANNOT_ANSWER, "d1/2": CANNOT_ANSWER,  # wrong; cannot K=3 twice
    "e1/0": "Acme", "e1/1": "small", "e1/2": None,  # right, right, unreadable
    "b1/0": OFFICIAL_CANNOT_ANSWER,  # the real option reading like qa.py's "cannot answer": right
}  # fmt: skip


def _options_of(request) -> list[str]:
    text = request.messages[-1].joined_text()
    return [line[3:] for line in text.splitlines() if len(line) > 2 and line[1:3] == ". " and line[0] in LETTERS]


def _picking_judge(samples: list[Sample]) -> ScriptedEngine:
    asked = iter(q.id for s in samples for q in s.questions)

    def reply(request):
        pick = PICKS[next(asked)]
        return "I am not sure" if pick is None else LETTERS[_options_of(request).index(pick)]

    return ScriptedEngine(reply)


def test_official_aggregation_gives_the_leaderboards_digits_and_keeps_the_exact_headline():
    samples = _four_domain_samples()
    metric = CaptionQA(CaptionQAConfig(aggregation="official"))
    scores = metric.score(samples, [Caption(s.id, "cap") for s in samples], {"text": _picking_judge(samples)})
    summary = metric.summarize(scores)
    domains = summary["domains"]
    # natural: exact 100 × (1 + (1/6 + 0.05) + (1/7 + 0.05)) / 3 = 46.984127…;
    #          official (1 + 0.2167 + 0.1929) / 3 = 46.9867 → 46.99 (round(exact, 2) would be 46.98)
    assert domains["natural"]["score"] == pytest.approx(100 * (1 + 1 / 6 + 1 / 7 + 0.1) / 3)
    assert domains["natural"]["official_score"] == 46.99
    # document: exact 100 × 2 × (1/3 + 0.05) / 3 = 25.5556; official 2 × 0.3833 / 3 = 25.5533 → 25.55 (not 25.56)
    assert domains["document"]["score"] == pytest.approx(200 * (1 / 3 + 0.05) / 3)
    assert domains["document"]["official_score"] == 25.55
    # ecommerce: the unreadable reply is unscored in capbench (100) and 0 officially (2/3 → 66.67)
    assert (domains["ecommerce"]["score"], domains["ecommerce"]["official_score"]) == (100.0, 66.67)
    # embodiedai: the right answer reads like "Cannot answer from the caption": 1 here, 1/2 + 0.05 officially
    assert (domains["embodiedai"]["score"], domains["embodiedai"]["official_score"]) == (100.0, 55.0)
    # official overall: (46.99 + 25.55 + 66.67 + 55.0) / 4 = 48.5525 → 48.55
    assert summary["official_score"] == 48.55 and summary["official_note"] is None
    # the headline stays exact, equal to what the units give: the leaderboard's cross-check holds
    exact = (100 * (1 + 1 / 6 + 1 / 7 + 0.1) / 3 + 200 * (1 / 3 + 0.05) / 3 + 100 + 100) / 4
    assert summary["score"] == pytest.approx(exact)
    assert math.isclose(summary["score"], headline(metric.units(scores)), rel_tol=1e-9)
    info = describe(metric)
    assert info.headline == "score" and ("official", "official_score") in info.columns
    record = scores[2].details["questions"][2]
    assert (record["status"], record["official_chosen"], record["official_score"]) == ("unparsed", None, 0.0)


def test_exact_aggregation_is_unchanged():
    samples = _four_domain_samples()
    metric = CaptionQA()
    scores = metric.score(samples, [Caption(s.id, "cap") for s in samples], {"text": _picking_judge(samples)})
    summary = metric.summarize(scores)
    assert "official_score" not in summary and "official_score" not in summary["domains"]["natural"]
    assert "official_score" not in scores[0].details["questions"][0]
    assert [label for label, _ in describe(metric).columns] == ["score", "accuracy", "cannot %", "unscored"]


def test_new_settings_enter_the_config_only_when_not_default():
    before = {"seed", "answer_mode", "max_tokens", "temperature", "cannot_answer_option", "cannot_answer_bonus"}
    assert set(CaptionQA().config()) == before  # existing results keep their config hashes
    config = CaptionQA(CaptionQAConfig(aggregation="official", shuffle="official")).config()
    assert (config["aggregation"], config["shuffle"]) == ("official", "official")
    with pytest.raises(ConfigError, match="aggregation"):
        CaptionQAConfig(aggregation="rounded")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="shuffle"):
        CaptionQAConfig(shuffle="global")  # type: ignore[arg-type]


# ---------------------------------------------------------------- qa.py's option stream

#: Four splits: the loader tests' natural and document entries, and two more domains.
SPLITS4 = {
    **ENTRIES,
    "ecommerce": [
        {"id": "eco_001", "images": ["coffee"], "questions": [
            _q("What is sold?", ["Coffee", "Tea", "Juice", "Milk"], "Coffee", ["product"]),
            _q("Does the cup have a handle?", ["It has one", "It has none"], "It has one", ["packaging"]),  # yes/no
            _q("What colour is the cup?", ["White", "Red", "Blue", "Green", "Black"], "White", ["visual"]),
        ]},
        {"id": "eco_002", "images": ["coffee"], "questions": [
            _q("What is the brand?", ["Acme", "Bolt", "Core"], "Bolt", ["brand"]),
        ]},
    ],
    "embodiedai": [
        {"id": "emb_001", "images": ["camera"], "questions": [
            _q("Where is the camera?", ["On a tripod", "In a hand", "On a shelf", "On the ground"], "On a tripod",
               ["spatial"]),
            _q("Is the scene indoors?", ["Yes", "No"], "No", ["scene"]),  # yes/no
        ]},
    ],
}  # fmt: skip

#: Hand-labelled: the questions qa.py asks (>= 2 choices, answer among them) and whether each is yes/no.
ASKED = {
    "nat_001/0": False, "nat_001/1": True, "nat_001/3": False, "nat_002/0": False,
    "doc_001/0": True, "doc_002/0": False, "doc_002/1": True,
    "eco_001/0": False, "eco_001/1": True, "eco_001/2": False, "eco_002/0": False,
    "emb_001/0": False, "emb_001/1": True,
}  # fmt: skip
ORDER = ("natural", "document", "ecommerce", "embodiedai")


def qa_py_options(seed: int, restart_per_domain: bool = False) -> dict[str, list[str]]:
    """Each question's options as qa.py shows them: one Random(seed), shuffle(list(range(n))) per question."""
    rng = random.Random(seed)
    out = {}
    for split in ORDER:
        if restart_per_domain:
            rng = random.Random(seed)
        for entry in SPLITS4[split]:
            for index, raw in enumerate(entry["questions"]):
                qid = f"{entry['id']}/{index}"
                if qid not in ASKED:
                    continue  # qa.py skips it and draws nothing
                options = list(raw["choices"]) + ([] if ASKED[qid] else [CANNOT_ANSWER])
                perm = list(range(len(options)))
                rng.shuffle(perm)
                out[qid] = [options[i] for i in perm]
    return out


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the hub out of reach and every datasets cache inside the test's folder."""
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("datasets")
    return build_captionqa_repo(tmp_path_factory.mktemp("captionqa4"), SPLITS4)


def _shown(metric: CaptionQA, samples) -> dict[str, list[str]]:
    judge = ScriptedEngine(lambda request: "A")
    metric.score(samples, [Caption(s.id, f"caption of {s.id}") for s in samples], {"text": judge})
    ids = [q.id for s in samples for q in s.questions]
    return {qid: _options_of(request) for qid, request in zip(ids, judge.calls, strict=True)}


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("seed", [0, 7])
def test_official_shuffle_is_qa_py_stream_over_the_split(repo: Path, seed: int):
    bench = load_benchmark("captionqa", dataset=str(repo), split="all")
    shown = _shown(CaptionQA(CaptionQAConfig(seed=seed, shuffle="official")), list(bench.samples))
    assert shown == qa_py_options(seed)
    # capbench's own streams give other orders: the test tells the modes apart
    assert _shown(CaptionQA(CaptionQAConfig(seed=seed)), list(bench.samples)) != shown


@pytest.mark.usefixtures("offline")
def test_official_shuffle_of_a_part_is_the_full_runs(repo: Path):
    """--limit, a batch, a resumed run or a caption set lacking entries: each question keeps its full-split order."""
    bench = load_benchmark("captionqa", dataset=str(repo), split="all")
    by_id = bench.by_id()
    metric = CaptionQA(CaptionQAConfig(shuffle="official"))
    part = _shown(metric, [by_id["eco_002"], by_id["doc_002"]])
    full = qa_py_options(0)
    assert part == {qid: full[qid] for qid in ("eco_002/0", "doc_002/0", "doc_002/1")}


@pytest.mark.usefixtures("offline")
def test_official_per_domain_restarts_the_stream(repo: Path):
    bench = load_benchmark("captionqa", dataset=str(repo), split="all")
    shown = _shown(CaptionQA(CaptionQAConfig(shuffle="official_per_domain")), list(bench.samples))
    assert shown == qa_py_options(0, restart_per_domain=True)
    one = load_benchmark("captionqa", dataset=str(repo), split="ecommerce")  # `qa.py --split ecommerce`
    alone = _shown(CaptionQA(CaptionQAConfig(shuffle="official")), list(one.samples))
    assert alone == {k: v for k, v in shown.items() if k.startswith("eco_")}


@pytest.mark.usefixtures("offline")
def test_official_shuffle_refuses_what_qa_py_cannot_run_before_any_judge_call(repo: Path):
    judge = ScriptedEngine()
    two = load_benchmark("captionqa", dataset=str(repo), split="natural,document")
    official = CaptionQA(CaptionQAConfig(shuffle="official"))
    with pytest.raises(ConfigError, match="official_per_domain"):
        official.score(list(two.samples), [Caption(s.id, "c") for s in two.samples], {"text": judge})
    mini = load_benchmark("mini")
    with pytest.raises(ConfigError, match="was not loaded from it"):
        official.score(list(mini.samples[:1]), [Caption(mini.samples[0].id, "c")], {"text": judge})
    full = load_benchmark("captionqa", dataset=str(repo), split="all").by_id()["doc_002"]
    changed = Sample(full.id, None, questions=(Question("doc_002/1", "Is it red?", ("Yes", "No", "Maybe"), "No"),),
                     domain=full.domain, meta=full.meta)  # fmt: skip
    with pytest.raises(ConfigError, match="doc_002/1"):
        official.score([changed], [Caption(changed.id, "c")], {"text": judge})
    assert judge.calls == []
    # one stream per domain is what separate `qa.py --split <domain>` runs draw: a list of domains is fine
    per_domain = CaptionQA(CaptionQAConfig(shuffle="official_per_domain"))
    assert _shown(per_domain, list(two.samples)) == {
        k: v for k, v in qa_py_options(0, restart_per_domain=True).items() if k[:3] in ("nat", "doc")
    }


@pytest.mark.usefixtures("offline")
def test_loader_shares_one_load_order(repo: Path):
    bench = load_benchmark("captionqa", dataset=str(repo), split="all")
    orders = {id(s.meta["load_order"]) for s in bench.samples}
    assert len(orders) == 1
    order = bench.samples[0].meta["load_order"]
    assert order.split == "all"
    assert [entry_id for entry_id, _, _ in order.entries] == [s.id for s in bench.samples]
    assert [d for _, d, _ in order.entries][:4] == ["natural", "natural", "natural", "document"]
    assert len(repr(order)) < 80  # a sample's repr does not print the whole split
    listed = load_benchmark("captionqa", dataset=str(repo), split="document,natural")
    assert listed.samples[0].meta["load_order"].split == "document,natural"


@pytest.mark.usefixtures("offline")
def test_official_modes_through_batches_a_limited_run_its_resume_and_the_leaderboard_reader(repo: Path, tmp_path: Path):
    from capbench.engines.cache import CachedEngine, ResponseCache
    from capbench.evaluation import Evaluator
    from capbench.metrics import build_metric
    from capbench.records import CaptionSet
    from capbench.results import load_results

    bench = load_benchmark("captionqa", dataset=str(repo), split="all")
    want = qa_py_options(0)
    engine = ScriptedEngine(lambda request: "A")
    metric = build_metric("captionqa", aggregation="official", shuffle="official")
    judge = {"text": CachedEngine(engine, ResponseCache())}
    evaluator = Evaluator(bench, [metric], judge, tmp_path / "results", batch_size=2)
    captions = CaptionSet("model", {s.id: f"A caption of {s.id}." for s in bench.samples})
    first = evaluator.evaluate(captions, limit=3).summaries["captionqa"]
    assert first["official_score"] is None and "ecommerce" in first["official_note"]
    done = evaluator.evaluate(captions).summaries["captionqa"]  # resumes: the other samples, in batches of 2
    asked = [q.id for s in bench.samples for q in s.questions]
    assert [_options_of(r) for r in engine.calls] == [want[qid] for qid in asked]  # each asked once, qa.py's order
    # every judge answers "A": right where qa.py put the answer first, "cannot answer" where it put that first
    official = {
        qid: 1.0 if opts[0] == ans else (round(1 / (len(opts) - 1) + 0.05, 4) if opts[0] == CANNOT_ANSWER else 0.0)
        for qid, opts, ans in ((q.id, want[q.id], q.answer) for s in bench.samples for q in s.questions)
    }
    for domain, prefix in zip(ORDER, ("nat", "doc", "eco", "emb"), strict=True):
        values = [v for qid, v in official.items() if qid.startswith(prefix)]
        assert done["domains"][domain]["official_score"] == round(100 * sum(values) / len(values), 2)
    assert done["official_score"] == round(sum(done["domains"][d]["official_score"] for d in ORDER) / 4, 2)
    results = load_results(tmp_path / "results")
    assert not [w for w in results.warnings if "manifest says" in w]  # the headline check finds nothing to say
