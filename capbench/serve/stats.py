"""The service's counters, and their Prometheus text exposition (format 0.0.4), written by hand.

Latency quantiles are those of the last :data:`WINDOW` scoring requests (a Prometheus summary).
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Mapping

WINDOW = 4096
QUANTILES = (0.5, 0.9, 0.99)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Stats:
    """Counts requests, items, batches and unscored values, and keeps recent request latencies."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.items = 0
        self.unscored = 0
        self.batches = 0
        self.batch_items = 0
        self.latencies: deque[float] = deque(maxlen=WINDOW)
        self.latency_sum = 0.0
        self.latency_count = 0
        self._lock = threading.Lock()

    def request(self, route: str, status: int, seconds: float, scoring: bool) -> None:
        """Count one answered request (its latency too when it was a scoring request)."""
        with self._lock:
            self.requests[(route, status)] += 1
            if scoring:
                self.latencies.append(seconds)
                self.latency_sum += seconds
                self.latency_count += 1

    def scored(self, items: int, unscored: int) -> None:
        """Count a request's items and its values answered null."""
        with self._lock:
            self.items += items
            self.unscored += unscored

    def batch(self, requests: int, items: int, seconds: float) -> None:
        """Count one judged batch."""
        with self._lock:
            self.batches += 1
            self.batch_items += items

    def quantiles(self) -> dict[float, float]:
        """The latency quantiles of the recent scoring requests (NaN before the first)."""
        with self._lock:
            ordered = sorted(self.latencies)
        if not ordered:
            return dict.fromkeys(QUANTILES, math.nan)
        return {q: ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] for q in QUANTILES}

    def exposition(self, usage: Mapping[str, int], waiting: int, in_flight: int, batches: int = 0) -> str:
        """Return every metric in Prometheus' text format."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

        with self._lock:
            requests = sorted(self.requests.items())
            counts = (self.items, self.unscored, self.batches, self.batch_items)
            total, count = self.latency_sum, self.latency_count
        metric(
            "capbench_serve_requests_total", "counter", "HTTP requests answered, by route and status.",
            [(f'{{route="{route}",status="{status}"}}', n) for (route, status), n in requests],
        )  # fmt: skip
        metric("capbench_serve_items_total", "counter", "Items accepted for scoring.", [("", counts[0])])
        metric(
            "capbench_serve_unscored_total", "counter", "Rewards and metrics answered null (with a reason).",
            [("", counts[1])],
        )  # fmt: skip
        metric("capbench_serve_batches_total", "counter", "Batches judged.", [("", counts[2])])
        metric("capbench_serve_batch_items_total", "counter", "Items in the batches judged.", [("", counts[3])])
        for key, help_text in (
            ("judge_calls", "Judge requests sent to the engines (cache misses)."),
            ("cache_hits", "Judge requests answered from the judge cache."),
            ("failures", "Judge requests that failed (never cached; asked again next time)."),
        ):
            metric(f"capbench_serve_{key}_total", "counter", help_text, [("", usage.get(key, 0))])
        metric("capbench_serve_queue_depth", "gauge", "Items waiting to be judged.", [("", waiting)])
        metric("capbench_serve_items_in_flight", "gauge", "Items of the batches being judged now.", [("", in_flight)])
        metric("capbench_serve_batches_in_flight", "gauge", "Batches being judged now.", [("", batches)])
        samples = [(f'{{quantile="{q}"}}', v) for q, v in self.quantiles().items()]
        metric(
            "capbench_serve_request_seconds", "summary",
            f"Scoring request latency (quantiles over the last {WINDOW} requests).", samples,
        )  # fmt: skip
        lines.append(f"capbench_serve_request_seconds_sum {_number(total)}")
        lines.append(f"capbench_serve_request_seconds_count {count}")
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, int):
        return str(value)
    return repr(round(value, 6))
