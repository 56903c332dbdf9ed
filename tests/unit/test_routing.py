"""Routing: weighted, sticky splits between versions, and the routing configuration."""

from __future__ import annotations

import pytest

from app.errors import ConfigError
from app.models.routing import Route, parse_routing, pick_version, sticky_point


def test_parses_split_and_shadow() -> None:
    routes = parse_routing('{"m": {"split": {"1": 90, "2": 10}, "shadow": ["3"]}}', "test")
    assert routes == {"m": Route((("1", 90.0), ("2", 10.0)), ("3",))}
    assert routes["m"].versions == ("1", "2", "3")


def test_empty_configuration_means_no_routes() -> None:
    assert parse_routing("", "test") == {}
    assert parse_routing(b"  \n", "test") == {}


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ("{not json", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"m": {"split": {}}}', '"split" must map'),
        ('{"m": {"split": {"1": -1}}}', "must be a number >= 0"),
        ('{"m": {"split": {"1": true}}}', "must be a number >= 0"),
        ('{"m": {"split": {"1": 0, "2": 0}}}', "must not all be 0"),
        ('{"m": {"split": {"1": 1}, "shadow": "2"}}', '"shadow" must be a list'),
        ('{"m": {"split": {"1": 1}, "shadow": ["1"]}}', "cannot serve and shadow at once"),
        ('{"m": {"split": {"1": 1}, "weights": {}}}', 'must be an object with "split"'),
    ],
)
def test_bad_routing_is_one_clear_line(document: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint) as caught:
        parse_routing(document, "MODEL_ROUTING")
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("MODEL_ROUTING: ")


def test_split_follows_the_weights_within_tolerance() -> None:
    route = Route((("1", 90.0), ("2", 10.0)))
    users = 20_000
    share = sum(pick_version(route, f"user-{n}") == "2" for n in range(users)) / users
    # Binomial standard deviation at n=20000, p=0.1 is 0.0021: +-0.01 is more than 4 of them.
    assert abs(share - 0.10) < 0.01


def test_an_entity_always_gets_the_same_version() -> None:
    route = Route((("1", 50.0), ("2", 50.0)))
    for n in range(200):
        assert len({pick_version(route, f"user-{n}") for _ in range(5)}) == 1


def test_sticky_point_is_stable_across_processes() -> None:
    # blake2b, not Python's salted hash(): every replica must route a user the same way.
    # The value was computed once; Python's hash() would give another one in each process.
    assert sticky_point("user-1") == 0.6041924073669338


def test_resolve_replaces_aliases() -> None:
    route = Route((("latest", 1.0),), ("2",)).resolve({"latest": "3"})
    assert route == Route((("3", 1.0),), ("2",))


def test_aliases_naming_one_version_merge_and_a_shadow_of_a_serving_version_is_dropped() -> None:
    route = Route((("champion", 90.0), ("challenger", 10.0)), ("candidate",))
    promoted = route.resolve({"champion": "2", "challenger": "2", "candidate": "2"})
    assert promoted == Route((("2", 100.0),), ())
    assert route.resolve({"champion": "1", "challenger": "2", "candidate": "3"}) == Route(
        (("1", 90.0), ("2", 10.0)), ("3",)
    )
