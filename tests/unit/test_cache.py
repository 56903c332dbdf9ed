"""The result cache: least recently used goes first, entries expire after their TTL."""

from __future__ import annotations

import pytest

from app.pipeline.cache import ResultCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hit_miss_and_expiry() -> None:
    clock = Clock()
    cache = ResultCache[str](max_entries=10, ttl_s=5.0, clock=clock)
    assert cache.get("a") is None
    cache.put("a", "A")
    clock.now = 4.9
    assert cache.get("a") == "A"
    clock.now = 5.0
    assert cache.get("a") is None
    assert len(cache) == 0  # an expired entry is dropped when seen


def test_least_recently_used_is_evicted() -> None:
    cache = ResultCache[int](max_entries=2, ttl_s=60.0)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("c", 3)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)


def test_keys_compare_whole_inputs() -> None:
    cache = ResultCache[str](max_entries=10, ttl_s=60.0)
    cache.put(("m/1", (1.0, 2.0)), "x")
    assert cache.get(("m/1", (1.0, 2.0))) == "x"
    assert cache.get(("m/2", (1.0, 2.0))) is None
    assert cache.get(("m/1", (1.0, 2.5))) is None


def test_rejects_a_useless_configuration() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ResultCache[str](max_entries=0, ttl_s=1.0)
