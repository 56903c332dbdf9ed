"""Routing: which version of a model serves an event, and which shadow versions see a copy.

A route splits a model's traffic between versions by weight (e.g. 90/10), sticky per entity:
an event's ``user_id`` is hashed onto the weight line, so one user always sees the same
version while the split stays the same, on every replica. Shadow versions compute on a copy of
the traffic; their results go to the shadow topic, never to the predictions topic.

The configuration is JSON, from MODEL_ROUTING (inline) or ROUTING_FILE (re-read when it
changes, so routes change at run time without a restart)::

    {"breast-cancer": {"split": {"1": 90, "2": 10}, "shadow": ["3"]}}

A model without a route is served by MODEL_VERSION ("latest" follows the registry).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from app.errors import ConfigError

LATEST = "latest"
_HASH_SPACE = 1 << 64


@dataclass(frozen=True)
class Route:
    """Versions of one model with their weights, plus shadows. Versions may be "latest"."""

    split: tuple[tuple[str, float], ...]
    shadow: tuple[str, ...] = ()

    @classmethod
    def single(cls, version: str) -> Route:
        return cls(((version, 1.0),))

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([version for version, _ in self.split] + list(self.shadow)))

    def resolve(self, resolved: Mapping[str, str]) -> Route:
        """The same route with aliases ("latest", MLflow's "champion") replaced by concrete versions.

        Aliases may name the same version (``champion`` and ``challenger`` after a promotion): their
        weights add up, and a shadow that names a serving version is dropped (it would only repeat it).
        """
        weights: dict[str, float] = {}
        for version, weight in self.split:
            concrete = resolved.get(version, version)
            weights[concrete] = weights.get(concrete, 0.0) + weight
        shadows = dict.fromkeys(resolved.get(version, version) for version in self.shadow)
        return Route(tuple(weights.items()), tuple(version for version in shadows if version not in weights))

    def to_dict(self) -> dict[str, Any]:
        return {"split": dict(self.split), "shadow": list(self.shadow)}


def sticky_point(entity: str) -> float:
    """Where an entity falls on [0, 1): the same everywhere, evenly spread over entities."""
    digest = hashlib.blake2b(entity.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE


def pick_version(route: Route, entity: str) -> str:
    split = route.split
    if len(split) == 1:
        return split[0][0]
    point = sticky_point(entity) * sum(weight for _, weight in split)
    for version, weight in split:
        point -= weight
        if point < 0:
            return version
    return split[-1][0]


def parse_routing(raw: str | bytes, source: str) -> dict[str, Route]:
    """Routes by model name from the JSON document; raises ConfigError with one line."""
    if not raw.strip():
        return {}
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{source}: routing is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: routing must be a JSON object of model name -> route")
    return {str(name): _route(name, spec, source) for name, spec in document.items()}


def _route(name: str, spec: Any, source: str) -> Route:
    where = f"{source}: route for {name!r}"
    if not isinstance(spec, dict) or not set(spec) <= {"split", "shadow"}:
        raise ConfigError(f'{where} must be an object with "split" and optionally "shadow"')
    split = spec.get("split")
    if not isinstance(split, dict) or not split:
        raise ConfigError(f'{where}: "split" must map versions to weights, e.g. {{"1": 90, "2": 10}}')
    weights = []
    for version, weight in split.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ConfigError(f"{where}: weight of version {version!r} must be a number >= 0")
        weights.append((str(version), float(weight)))
    if sum(weight for _, weight in weights) <= 0:
        raise ConfigError(f"{where}: the weights must not all be 0")
    shadow = spec.get("shadow", [])
    if not isinstance(shadow, list) or not all(isinstance(version, str | int) for version in shadow):
        raise ConfigError(f'{where}: "shadow" must be a list of versions')
    shadows = tuple(str(version) for version in shadow)
    overlap = set(shadows) & {version for version, _ in weights}
    if overlap:
        raise ConfigError(f"{where}: version(s) {', '.join(sorted(overlap))} cannot serve and shadow at once")
    return Route(tuple(weights), shadows)
