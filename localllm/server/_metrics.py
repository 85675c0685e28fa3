"""Prometheus text metrics: requests, tokens, sequences, queue, latency, loaded models.

Written by hand (the text format is a few lines) so the server needs no client library.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._registry import Registry

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out += [f"{name}_sum {self.total:.6f}", f"{name}_count {self.n}"]
        return out


class Metrics:
    """Counters the routes update; ``render`` adds the live gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.drafted_tokens = 0   # speculative decoding: drafted, and agreed with
        self.accepted_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.per_token = Histogram(TOKEN_BUCKETS)

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def generation(self, prompt_tokens: int, generated: int, ttft_s: float,
                   generation_s: float, drafted: int = 0, accepted: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.generated_tokens += generated
            self.drafted_tokens += drafted
            self.accepted_tokens += accepted
            self.ttft.observe(ttft_s)
            if generated > 1:
                self.per_token.observe(generation_s / (generated - 1))

    def _acceptance(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    def render(self, registry: Registry) -> str:
        with self._lock:
            lines = ["# HELP localllm_requests_total HTTP requests by endpoint and status.",
                     "# TYPE localllm_requests_total counter"]
            lines += [f'localllm_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# TYPE localllm_prompt_tokens_total counter",
                      f"localllm_prompt_tokens_total {self.prompt_tokens}",
                      "# TYPE localllm_generated_tokens_total counter",
                      f"localllm_generated_tokens_total {self.generated_tokens}",
                      "# HELP localllm_draft_tokens_total Tokens drafted by speculative "
                      "decoding.",
                      "# TYPE localllm_draft_tokens_total counter",
                      f"localllm_draft_tokens_total {self.drafted_tokens}",
                      "# HELP localllm_draft_accepted_tokens_total Drafted tokens the "
                      "model agreed with.",
                      "# TYPE localllm_draft_accepted_tokens_total counter",
                      f"localllm_draft_accepted_tokens_total {self.accepted_tokens}",
                      "# HELP localllm_draft_acceptance_ratio Accepted over drafted.",
                      "# TYPE localllm_draft_acceptance_ratio gauge",
                      f"localllm_draft_acceptance_ratio {self._acceptance():.4f}",
                      "# HELP localllm_time_to_first_token_seconds Time to first token.",
                      "# TYPE localllm_time_to_first_token_seconds histogram",
                      *self.ttft.lines("localllm_time_to_first_token_seconds"),
                      "# HELP localllm_time_per_output_token_seconds Decode time per token.",
                      "# TYPE localllm_time_per_output_token_seconds histogram",
                      *self.per_token.lines("localllm_time_per_output_token_seconds")]
        loaded = registry.loaded()
        lines += ["# TYPE localllm_active_sequences gauge",
                  "# TYPE localllm_queue_depth gauge",
                  "# TYPE localllm_model_loaded gauge",
                  "# TYPE localllm_model_memory_bytes gauge"]
        for served in loaded:
            model = served.model
            if model is None:
                continue
            label = f'model="{served.name}"'
            stats = model.stats
            plan = model.info.plan
            memory = plan.predicted_ram_after_load if plan is not None else 0
            lines += [f"localllm_active_sequences{{{label}}} {stats.active_sequences}",
                      f"localllm_queue_depth{{{label}}} {stats.queue_depth}",
                      f"localllm_model_loaded{{{label}}} 1",
                      f"localllm_model_memory_bytes{{{label}}} {memory}"]
        return "\n".join(lines) + "\n"
