"""Read a scoring request into items: a caption, the sample it describes, and what to compute for it.

Everything is checked here, before an item is queued: a problem is a :class:`RequestError`
(4xx) whose message names the item's index, the field and the fix. The checks run in a
thread of their own (images are hashed, downloaded or decoded), never on the event loop.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capbench import InputError, Question, Sample
from capbench.hashing import content_hash
from capbench.serve.images import ImageStore, RequestError

#: The fields of a request body and of one item.
BODY_FIELDS = ("items", "metrics", "rewards")
ITEM_FIELDS = (
    "caption", "domain", "id", "image", "questions", "reference_caption", "reference_facts", "rewards", "sample_id",
)  # fmt: skip
QUESTION_FIELDS = ("answer", "category", "choices", "id", "question")


@dataclass(frozen=True)
class Catalog:
    """What the service offers, as the request reader needs it."""

    #: reward name -> (metric, per-sample value key, divisor into [0, 1]).
    rewards: Mapping[str, tuple[str, str, float]]
    #: metric name -> what it needs from a sample ("questions", "reference_caption", ...).
    needs: Mapping[str, frozenset[str]]
    #: The server's benchmark samples by id (empty without --benchmark), and its name.
    samples: Mapping[str, Sample]
    benchmark: str | None
    max_items: int


@dataclass(frozen=True)
class Item:
    """One caption to score: its sample (image, references, questions) and the rewards and metrics asked."""

    id: Any
    caption: str
    sample: Sample
    rewards: tuple[str, ...]
    metrics: tuple[str, ...]
    #: Why this item is not scored (an empty caption, one holding a NUL), or None: what a policy may
    #: write is a named failure of that item, never a refusal of the whole request.
    problem: str | None = None


def parse_json(body: bytes) -> Any:
    """Parse a request body as JSON.

    Raises:
        RequestError: not UTF-8 or not JSON (400).
    """
    fix = 'send {"rewards": [...], "items": [{"caption": ...}, ...]}'
    try:
        return json.loads(body.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"body: not UTF-8 (byte {exc.start}); send JSON encoded as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"body: not JSON ({exc.msg}, line {exc.lineno} column {exc.colno}); {fix}") from None
    except (RecursionError, ValueError) as exc:
        raise RequestError(400, f"body: JSON that cannot be read ({unreadable(exc)}); {fix}") from None


def unreadable(exc: RecursionError | ValueError) -> str:
    """Why valid JSON could not be read: nested deeper than Python's recursion, or an integer too long."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split(";")[0]  # Python's own words on an integer of over 4300 digits


def parse_score_request(data: Any, catalog: Catalog, images: ImageStore) -> list[Item]:
    """Read the body of ``POST /v1/score`` into items.

    Raises:
        RequestError: the body or an item is malformed, names what the server lacks, or is too big.
    """
    if not isinstance(data, Mapping):
        raise RequestError(400, f'body: expected a JSON object {{"rewards": [...], "items": [...]}}, not {_kind(data)}')
    unknown = sorted(str(k) for k in data if k not in BODY_FIELDS)
    if unknown:
        raise RequestError(400, f"body: unknown field {unknown[0]!r}; the fields are: {', '.join(BODY_FIELDS)}")
    rewards = names(data.get("rewards"), "body.rewards", catalog.rewards, "reward")
    metrics = names(data.get("metrics"), "body.metrics", catalog.needs, "metric")
    if not rewards and not metrics:
        raise RequestError(
            400,
            "body: give 'rewards' (or 'metrics'): the names of what to compute; the rewards: "
            f"{', '.join(sorted(catalog.rewards))}",
        )
    raw = data.get("items")
    if raw is None:
        raise RequestError(400, 'body: \'items\' is missing; send "items": [{"caption": ...}, ...]')
    if not isinstance(raw, list):
        raise RequestError(400, f"body: 'items' must be a list of item objects, not {_kind(raw)}")
    if not raw:
        raise RequestError(400, "body: 'items' is empty; send at least one item")
    check_count(len(raw), catalog.max_items, "items")
    return [parse_item(obj, f"items[{i}]", catalog, images, rewards, metrics) for i, obj in enumerate(raw)]


def check_count(count: int, most: int, what: str) -> None:
    """Refuse a request of more items than the server takes (413)."""
    if count > most:
        raise RequestError(
            413, f"body: {count} {what}, more than this server takes per request (--max-items {most}); split it"
        )


def names(value: Any, where: str, known: Mapping[str, Any], kind: str) -> tuple[str, ...]:
    """Read a list of reward or metric names (absent: none).

    Raises:
        RequestError: not a list of strings, a name twice, or a name the server does not offer.
    """
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(400, f"{where} must be a list of {kind} names, not {_kind(value)}")
    for name in value:
        if name not in known:
            raise RequestError(400, f"{where}: unknown {kind} {name!r}; the {kind}s: {', '.join(sorted(known))}")
    twice = sorted({v for v in value if value.count(v) > 1})
    if twice:
        raise RequestError(400, f"{where} names {kind} {twice[0]!r} twice")
    return tuple(value)


def parse_item(
    obj: Any,
    where: str,
    catalog: Catalog,
    images: ImageStore,
    rewards: Sequence[str],
    metrics: Sequence[str],
) -> Item:
    """Read one item: its caption, its sample (the server's, overridden by what it brings) and what to compute.

    Raises:
        RequestError: a field is missing or malformed, or the sample lacks what a reward needs.
    """
    if not isinstance(obj, Mapping):
        raise RequestError(400, f"{where}: expected an object with a 'caption', not {_kind(obj)}")
    unknown = sorted(str(k) for k in obj if k not in ITEM_FIELDS)
    if unknown:
        raise RequestError(400, f"{where}: unknown field {unknown[0]!r}; the fields are: {', '.join(ITEM_FIELDS)}")
    if "id" in obj and not (isinstance(obj["id"], (str, int)) and not isinstance(obj["id"], bool)):
        raise RequestError(400, f"{where}.id must be a string (it is echoed back), not {_kind(obj['id'])}")
    if "caption" not in obj:
        raise RequestError(400, f"{where}.caption is missing; every item needs the caption to score")
    caption, problem = obj["caption"], None
    if isinstance(caption, str) and "\x00" in caption:
        problem = "the caption holds a NUL character (\\u0000): not scored"
    elif isinstance(caption, str) and not caption.strip():
        problem = "the caption is empty: not scored"
    else:
        caption = text(caption, f"{where}.caption")
    own = _item_rewards(obj.get("rewards"), f"{where}.rewards", rewards)
    sample = _sample(obj, where, catalog, images)
    for name, metric in [*((r, catalog.rewards[r][0]) for r in own), *((m, m) for m in metrics)]:
        _check_needs(sample, name, metric, catalog, where, "reward" if name in own else "metric")
    return Item(obj.get("id"), caption, sample, own, tuple(metrics), problem)


def text(value: Any, where: str) -> str:
    """Return ``value`` if it is text an engine can take.

    Raises:
        RequestError: not a string, or one holding a NUL or an unpaired surrogate.
    """
    if not isinstance(value, str):
        raise RequestError(400, f"{where} must be a string, not {_kind(value)}")
    if "\x00" in value:
        raise RequestError(400, f"{where} holds a NUL character (\\u0000); remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            400, f"{where} holds an unpaired surrogate ({value[exc.start]!r}), which is not text; send UTF-8 text"
        ) from None
    return value


def _item_rewards(value: Any, where: str, rewards: Sequence[str]) -> tuple[str, ...]:
    if value is None:
        return tuple(rewards)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(400, f"{where} must be a list of reward names, not {_kind(value)}")
    outside = [v for v in value if v not in rewards]
    if outside:
        raise RequestError(
            400,
            f"{where}: {outside[0]!r} is not among the request's rewards ({', '.join(rewards) or 'none'}); "
            "an item's rewards are a subset of the body's 'rewards'",
        )
    return tuple(dict.fromkeys(value))


def _sample(obj: Mapping[str, Any], where: str, catalog: Catalog, images: ImageStore) -> Sample:
    """The item's sample: the benchmark's (by ``sample_id``) with the item's own fields on top."""
    base: Sample | None = None
    if "sample_id" in obj:
        sample_id = obj["sample_id"]
        if not isinstance(sample_id, str):
            raise RequestError(400, f"{where}.sample_id must be a string, not {_kind(sample_id)}")
        if catalog.benchmark is None:
            raise RequestError(
                400,
                f"{where}.sample_id {sample_id!r}: this server has no benchmark (start it with --benchmark NAME), "
                "so send the item's references and image instead",
            )
        base = catalog.samples.get(sample_id)
        if base is None:
            raise RequestError(
                400, f"{where}.sample_id {sample_id!r} is not a sample of benchmark {catalog.benchmark!r}"
            )
    changes: dict[str, Any] = {}
    if "reference_caption" in obj:
        changes["reference_caption"] = text(obj["reference_caption"], f"{where}.reference_caption")
    if "reference_facts" in obj:
        facts = obj["reference_facts"]
        if not isinstance(facts, list):
            raise RequestError(400, f"{where}.reference_facts must be a list of strings, not {_kind(facts)}")
        changes["reference_facts"] = tuple(text(f, f"{where}.reference_facts[{j}]") for j, f in enumerate(facts))
        empty = [j for j, f in enumerate(changes["reference_facts"]) if not f.strip()]
        if empty:
            raise RequestError(400, f"{where}.reference_facts[{empty[0]}] is empty; give each fact as text")
    if "questions" in obj:
        changes["questions"] = _questions(obj["questions"], f"{where}.questions")
    if "domain" in obj:
        domain = text(obj["domain"], f"{where}.domain")
        if not domain.strip():
            raise RequestError(400, f"{where}.domain is empty; leave it out for 'default'")
        changes["domain"] = domain
    if "image" in obj:
        changes["image"] = images.image(obj["image"], f"{where}.image")
        changes["more_images"] = ()
    if base is not None:
        return dataclasses.replace(base, **changes)
    return Sample(id=_sample_id(obj, changes), **{"image": None, **changes})


def _sample_id(obj: Mapping[str, Any], changes: Mapping[str, Any]) -> str:
    """The id of an item's own sample, which seeds CapRL's draws and CaptionQA's option orders.

    The item's ``id``, as capbench-rl's in-process rewards name a rollout's sample (its
    ``sample_id`` column, else ``rollout-<i>``), so both give the same numbers; without one, an id
    from the content, so the same references get the same draws (and cache hits) in any request.
    """
    if "id" in obj:
        return str(obj["id"])
    image = changes.get("image")
    content = {k: v for k, v in changes.items() if k not in ("image", "more_images", "questions")}
    content["questions"] = [q.to_dict() for q in changes.get("questions", ())]
    content["image"] = image.sha256 if image is not None else None
    return f"item-{content_hash(content)[:16]}"


def _questions(value: Any, where: str) -> tuple[Question, ...]:
    if not isinstance(value, list):
        raise RequestError(400, f"{where} must be a list of question objects, not {_kind(value)}")
    out = []
    for j, q in enumerate(value):
        at = f"{where}[{j}]"
        if not isinstance(q, Mapping):
            raise RequestError(400, f"{at} must be an object {{question, choices, answer}}, not {_kind(q)}")
        unknown = sorted(str(k) for k in q if k not in QUESTION_FIELDS)
        missing = [k for k in ("question", "choices", "answer") if k not in q]
        if unknown or missing:
            problem = f"unknown field {unknown[0]!r}" if unknown else f"'{missing[0]}' is missing"
            raise RequestError(400, f"{at}: {problem}; a question has {', '.join(QUESTION_FIELDS)}")
        choices = q["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise RequestError(400, f"{at}.choices must be a list of at least 2 strings")
        texts = tuple(text(c, f"{at}.choices[{k}]") for k, c in enumerate(choices))
        if len(set(texts)) != len(texts):
            raise RequestError(400, f"{at}.choices holds a choice twice; give distinct choices")
        qid = q.get("id", f"q{j}")
        if not isinstance(qid, (str, int)) or isinstance(qid, bool):
            raise RequestError(400, f"{at}.id must be a string, not {_kind(qid)}")
        category = text(q.get("category", ""), f"{at}.category")
        try:
            question = Question(
                id=str(qid),
                question=text(q["question"], f"{at}.question"),
                choices=texts,
                answer=text(q["answer"], f"{at}.answer"),
                category=category,
            )
        except InputError as exc:
            raise RequestError(400, f"{at}: {exc}") from None
        out.append(question)
    return tuple(out)


def _check_needs(sample: Sample, name: str, metric: str, catalog: Catalog, where: str, kind: str) -> None:
    """Refuse an item whose sample lacks what a reward's metric needs."""
    needs = catalog.needs[metric]
    source = (
        f"a sample_id of benchmark {catalog.benchmark!r}" if catalog.benchmark else "a server started with --benchmark"
    )
    lacks = None
    if "questions" in needs and not sample.questions:
        lacks = "'questions' (multiple-choice questions about the image)"
    elif "reference_caption" in needs and not (sample.reference_caption.strip() or sample.reference_facts):
        lacks = "a 'reference_caption' or 'reference_facts'"
    elif "reference_facts" in needs and not sample.reference_facts:
        lacks = "'reference_facts'"
    elif "baselines" in needs and not sample.baselines:
        lacks = "baseline captions (only a benchmark's samples have them)"
    if lacks is not None:
        raise RequestError(400, f"{where}: {kind} {name!r} needs {lacks}; give them in the item, or use {source}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
