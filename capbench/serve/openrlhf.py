"""OpenRLHF's remote reward contract (``--remote_rm_url``), answered by ``POST /openrlhf/{reward}``.

OpenRLHF posts ``{"query": [...], "prompts": [...], "labels": [...]}`` (openrlhf/utils/agent.py,
``SingleTurnAgentExecutor._fetch_rewards_via_http``; earlier releases the same from
openrlhf/utils/remote_rm_utils.py): each query is the prompt and the generated response decoded
together, special tokens kept. It reads ``rewards`` (and ``scores``, for dynamic filtering, and
``extra_logs``) from the JSON answer. The caption is the query minus its prompt, with trailing
end-of-turn tokens removed; the label carries the references, as a JSON object (the fields of an
item: ``reference_caption``, ``reference_facts``, ``questions``, ``image``, ``sample_id``,
``domain``) or as a plain reference caption.

OpenRLHF cannot take a missing reward (it builds tensors from the list), so when any caption
could not be scored the answer is 502 with the reasons: OpenRLHF retries the request (failed
judge calls are never cached, so they are asked again) and, after its retries, leaves that
sample without a reward. A failed reward is never sent as 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from capbench.serve.images import ImageStore, RequestError
from capbench.serve.items import Catalog, Item, check_count, parse_item, text, unreadable

LABEL_FIELDS = ("domain", "image", "questions", "reference_caption", "reference_facts", "sample_id")
#: End-of-turn and padding tokens a decoded response ends with (``skip_special_tokens=False``).
_TRAILING_TOKENS = re.compile(r"(?:\s*(?:<\|[^<>|\s]{1,40}\|>|</s>|<eos>|<pad>|<end_of_turn>))+\s*$")
_SHAPE = '{"query": [...], "prompts": [...], "labels": [...]}'
#: The shortest end of a prompt that may locate the response in a query whose prompt part differs
#: from the prompt (a VLM processor expands one image token into many).
_MIN_ANCHOR = 16


def openrlhf_items(data: Any, reward: str, catalog: Catalog, images: ImageStore) -> list[Item]:
    """Read OpenRLHF's request into items asking ``reward``.

    Raises:
        RequestError: the body is not OpenRLHF's shape, a query lacks its prompt, or a label is malformed.
    """
    if not isinstance(data, Mapping):
        raise RequestError(400, f"body: expected OpenRLHF's JSON object {_SHAPE}")
    queries = _strings(data.get("query"), "query", required=True)
    check_count(len(queries), catalog.max_items, "queries")
    prompts = _strings(data.get("prompts"), "prompts", required=True)
    labels = data.get("labels")
    if labels is None:
        labels = [None] * len(queries)
    if not isinstance(labels, list):
        raise RequestError(400, f"body: 'labels' must be a list (one label per query), not {type(labels).__name__}")
    if not len(queries) == len(prompts) == len(labels):
        raise RequestError(
            400,
            f"body: {len(queries)} queries, {len(prompts)} prompts and {len(labels)} labels; send one of each per "
            "sample",
        )
    items = []
    for i, (query, prompt, label) in enumerate(zip(queries, prompts, labels, strict=True)):
        caption = text(generated(query, prompt, i), f"query[{i}] (its generated part)")
        if not caption.strip():
            raise RequestError(400, f"query[{i}]: the generated part (after its prompt) is empty; nothing to score")
        fields = _label(label, f"labels[{i}]")
        items.append(parse_item({**fields, "caption": caption}, f"labels[{i}]", catalog, images, [reward], ()))
    return items


def generated(query: str, prompt: str, index: int) -> str:
    """The response inside a decoded query: what follows the prompt, without trailing special tokens.

    Raises:
        RequestError: the query does not hold (the end of) its prompt.
    """
    if query.startswith(prompt):
        rest = query[len(prompt) :]
    else:
        low, high = 0, len(prompt)  # the longest end of the prompt the query holds (a shorter end is in it too)
        while low < high:
            mid = (low + high + 1) // 2
            if prompt[-mid:] in query:
                low = mid
            else:
                high = mid - 1
        if low < min(len(prompt), _MIN_ANCHOR):
            raise RequestError(
                400,
                f"query[{index}] does not hold its prompt (prompts[{index}]) or the prompt's end, so its generated "
                "part cannot be told apart; send the decoded prompt and response as OpenRLHF does",
            )
        anchor = prompt[-low:]
        rest = query[query.find(anchor) + len(anchor) :]
    return _TRAILING_TOKENS.sub("", rest).strip()


def answer(reward: str, results: Sequence[Mapping[str, Any]]) -> tuple[int, dict[str, Any]]:
    """OpenRLHF's answer: ``rewards``, ``scores`` and ``extra_logs`` (200), or 502 naming the failures."""
    values = [r["rewards"].get(reward) for r in results]
    errors = [r["errors"].get(reward) for r in results]
    failed = [i for i, v in enumerate(values) if v is None]
    if failed:
        first = failed[0]
        detail = (
            f"{len(failed)} of {len(values)} captions could not be scored for {reward!r} "
            f"(query[{first}]: {errors[first]}); a failed reward is never sent as 0"
        )
        return 502, {"detail": detail, "rewards": values, "errors": errors}
    return 200, {"rewards": values, "scores": values, "extra_logs": {reward: values}}


def _strings(value: Any, key: str, required: bool) -> list[str]:
    if value is None:
        if required:
            raise RequestError(
                400,
                f"body: {key!r} is missing; OpenRLHF's remote reward posts {_SHAPE}",
            )
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(400, f"body: {key!r} must be a list of strings")
    if not value:
        raise RequestError(400, f"body: {key!r} is empty; send at least one query")
    return value


def _label(value: Any, where: str) -> dict[str, Any]:
    """A label's item fields: a JSON object (as text or as an object), or a plain reference caption."""
    if value is None:
        return {}
    if isinstance(value, str):
        if not value.lstrip().startswith("{"):
            return {"reference_caption": value} if value.strip() else {}
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else unreadable(exc)
            raise RequestError(
                400, f"{where} starts like a JSON object but is not JSON ({why}); send an object or a plain caption"
            ) from None
    if not isinstance(value, Mapping):
        raise RequestError(400, f"{where} must be a JSON object of references or a reference caption")
    unknown = sorted(str(k) for k in value if k not in LABEL_FIELDS)
    if unknown:
        raise RequestError(400, f"{where}: unknown field {unknown[0]!r}; a label has {', '.join(LABEL_FIELDS)}")
    return dict(value)
