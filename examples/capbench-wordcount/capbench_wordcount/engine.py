"""``constant``: an engine that answers every request with the same text (an engine from a plugin)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from capbench.engines import Request, Response


class ConstantEngine:
    """Answers every request with one fixed text (example plugin)."""

    backend = "constant"
    accepts_images = True  # it is handed the images (and ignores them)
    supports_loglik = False  # it cannot rank options by likelihood

    def __init__(self, model: str, text: str = "A square.") -> None:
        self.model = model
        self.text = text

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": "constant", "model": self.model, "text": self.text}

    def run(
        self, requests: Sequence[Request], on_result: Callable[[int, Response], None] | None = None
    ) -> list[Response]:
        out = []
        for index, request in enumerate(requests):
            response = Response(texts=(self.text,) * request.sampling.n, completion_tokens=len(self.text.split()))
            if on_result is not None:
                on_result(index, response)
            out.append(response)
        return out
