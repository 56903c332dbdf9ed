"""The benchmarks' text workload: sentences of a small vocabulary, one per text event. Shared by
bench.py (its text phases) and model_formats.py (its text cases), which imports bench, not the
other way round."""

from __future__ import annotations

import random
import time
from typing import Any

WORDS = (
    *("the", "a", "streaming", "worker", "reads", "events", "from", "kafka", "topics", "and", "writes"),
    *("predictions", "back", "while", "broker", "keeps", "every", "partition", "ordered", "by", "key"),
    *("model", "batch", "latency", "offset", "commit", "replica", "consumer", "producer", "schema", "vector"),
    *("embedding", "token", "sentence", "throughput", "queue", "backpressure", "retry", "dead", "letter"),
)


def texts(count: int, seed: int) -> list[str]:
    """Sentences of 5 to 40 words (mean ~22), so batches pad to different lengths."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(count)]


def text_event(index: int, run_id: str = "t", model: str = "minilm") -> dict[str, Any]:
    """A text event for the worker: the benchmarks' text workload, one sentence per event."""
    return {
        "event_id": f"{run_id}-{index}",
        "user_id": f"user-{index % 100}",
        "text": texts(1, index)[0],
        "timestamp": int(time.time() * 1000),
        "model": model,
    }
