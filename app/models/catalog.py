"""The models a worker serves: loaded versions, their routes, and hot reload.

At start ``load`` loads and warms every version the routes name and fails with one line if
one cannot load. At run time ``refresh`` (on a timer and on ``POST /models/reload``) re-reads
the routing and the registry (which versions ``latest`` and, in an MLflow registry, aliases such as
``champion`` name now: moving an alias is a promotion); versions it has not loaded yet are loaded and warmed on a thread
while the current ones keep serving, and a model's route switches only once all its versions
are warm — in one assignment, between two ``select`` calls, so every record is routed by
exactly one route and its result names the runner that produced it. A version that fails to
load is reported (log, metric, ``/models``) and not retried until its files change; the old
route keeps serving. Runners no route uses any more are handed to ``on_retired`` (the pipeline
closes them once their last records are out).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.errors import ConfigError, InvalidRecord, ModelLoadError
from app.metrics import Metrics
from app.models.ensemble import EnsembleRunner, declared_members
from app.models.metadata import ENSEMBLE_FORMAT, ModelKey, ModelMetadata
from app.models.registry import open_registry
from app.models.routing import Route, parse_routing, pick_version
from app.models.runner import ModelRunner, Runner, RunOptions, pick_device
from app.settings import ModelSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Serving:
    """A route with its runners looked up once, so routing an event costs a hash at most."""

    route: Route
    runners: dict[str, Runner]
    shadows: list[Runner]
    only: Runner | None
    """The runner when one version takes all the traffic."""


@dataclass(frozen=True)
class LoadFailure:
    reason: str
    fingerprint: int
    at: float


class ModelCatalog:
    def __init__(self, settings: ModelSettings, warm_up_batch_size: int, metrics: Metrics | None = None) -> None:
        """``warm_up_batch_size``: the largest batch a forward will take (MAX_BATCH_SIZE), run once at warm-up."""
        self._settings = settings
        self._warm_up_batch_size = warm_up_batch_size
        self._metrics = metrics or Metrics()
        self._registry = open_registry(settings)
        self._device = pick_device(settings.device)
        self._run_options = RunOptions(
            settings.half_precision,
            settings.model_execution,
            settings.model_quantize,
            settings.model_compile,
            settings.forward_batch_size,
        )
        self.runners: dict[ModelKey, Runner] = {}
        self.routes: dict[str, Route] = {}
        """The serving route of each model, with concrete versions."""
        self.failures: dict[ModelKey, LoadFailure] = {}
        self.aliases: dict[str, dict[str, str]] = {}
        """Per model, the version each alias of its route named when the route was last resolved."""
        self._serving: dict[str, _Serving] = {}
        self.on_retired: Callable[[Runner], Any] = lambda runner: runner.close()
        self._refreshing = asyncio.Lock()

    @property
    def default_model(self) -> str:
        return self._settings.default_model

    @property
    def all_warm(self) -> bool:
        return all(runner.warm for runner in self.runners.values())

    def select(self, name: str | None, entity: str) -> tuple[Runner, list[Runner]]:
        """The runner that serves this event and the shadow runners that see a copy of it."""
        serving = self._serving.get(name or self._settings.default_model)
        if serving is None:
            raise InvalidRecord("unknown_model", f"model {name!r} is not served (served: {', '.join(self.routes)})")
        if serving.only is not None:
            return serving.only, serving.shadows
        return serving.runners[pick_version(serving.route, entity)], serving.shadows

    def serving(self, name: str) -> Runner:
        """The runner that takes the largest share of the model's traffic."""
        route = self.routes[name]
        version = max(route.split, key=lambda item: item[1])[0]
        return self.runners[ModelKey(name, version)]

    def load(self) -> None:
        """Load and warm what the routes name; raises ModelLoadError or ConfigError with one line."""
        for name, route in self._wanted_routes().items():
            aliases = self._aliases(name, route)
            resolved = route.resolve(aliases)
            for version in resolved.versions:
                self._install(self._load_runner(name, version))
            self._switch(name, resolved)
            self.aliases[name] = aliases
        self._publish_info()

    async def refresh(self) -> dict[str, Any]:
        """Bring routes and loaded versions up to date; returns what changed and what failed."""
        async with self._refreshing:
            try:
                wanted = self._wanted_routes()
            except ConfigError as exc:
                log.error("routing not changed: %s", exc)
                return {"error": str(exc)}
            changes: dict[str, Any] = {}
            for name, route in wanted.items():
                try:
                    aliases = await asyncio.to_thread(self._aliases, name, route)  # MLflow: HTTP requests
                except ModelLoadError as exc:
                    log.warning("model %s stays on its current route: %s", name, exc)
                    changes[name] = {"kept": self.routes[name].to_dict(), "error": str(exc)}
                    continue
                resolved = route.resolve(aliases)
                try:
                    await self._load_missing(name, resolved)
                except ModelLoadError as exc:
                    changes[name] = {"kept": self.routes[name].to_dict(), "error": str(exc)}
                    continue
                self.aliases[name] = aliases
                if resolved != self.routes.get(name):
                    log.info("model %s: route %s -> %s", name, self._route_text(name), resolved.to_dict())
                    self._switch(name, resolved)
                    changes[name] = {"route": resolved.to_dict()}
            self._retire_unused()
            self._publish_info()
            return changes

    def snapshot(self) -> dict[str, Any]:
        """What /models shows: per model, the serving version's metadata, the route, loaded versions, failures."""
        models: dict[str, Any] = {}
        for name, route in self.routes.items():
            serving = self.serving(name)
            models[name] = {
                **serving.metadata.to_dict(),
                "device": str(serving.device),
                "warm": serving.warm,
                "route": route.to_dict(),
                "aliases": self.aliases.get(name, {}),
                "loaded": sorted(key.version for key in self.runners if key.name == name),
                "failed": {key.version: failure.reason for key, failure in self.failures.items() if key.name == name},
            }
        return models

    def _wanted_routes(self) -> dict[str, Route]:
        settings = self._settings
        configured = parse_routing(settings.model_routing, "MODEL_ROUTING")
        if settings.routing_file is not None:
            try:
                text = settings.routing_file.read_text()
            except OSError as exc:
                raise ConfigError(f"ROUTING_FILE={settings.routing_file}: cannot read it: {exc.strerror}") from None
            configured.update(parse_routing(text, f"ROUTING_FILE={settings.routing_file}"))
        unknown = set(configured) - set(settings.model_names)
        if unknown:
            raise ConfigError(f"routing names model(s) not in MODEL_NAMES: {', '.join(sorted(unknown))}")
        return {name: configured.get(name, Route.single(settings.model_version)) for name in settings.model_names}

    def _aliases(self, name: str, route: Route) -> dict[str, str]:
        """The version each alias of the route (``latest``; MLflow's ``champion``...) names now."""
        aliases = [version for version in route.versions if self._registry.is_alias(version)]
        return {alias: self._registry.resolve(name, alias) for alias in aliases}

    async def _load_missing(self, name: str, route: Route) -> None:
        for version in route.versions:
            key = ModelKey(name, version)
            if key in self.runners:
                continue
            fingerprint = self._registry.fingerprint(name, version)
            failure = self.failures.get(key)
            if failure is not None and failure.fingerprint == fingerprint:
                raise ModelLoadError(failure.reason)
            try:
                runner = await asyncio.to_thread(self._load_runner, name, version)
            except ModelLoadError as exc:
                log.error("model %s stays on its current route: %s", name, exc)
                self.failures[key] = LoadFailure(str(exc), fingerprint, time.time())
                self._metrics.model_load_failures.labels(name, version).inc()
                raise
            self._install(runner)

    def _load_runner(self, name: str, version: str) -> Runner:
        metadata = self._registry.metadata(name, version)
        runner: Runner
        if metadata.format == ENSEMBLE_FORMAT:
            members = declared_members(metadata)
            loaded = [
                (member, self._model_runner(self._registry.metadata(member.name, member.version))) for member in members
            ]
            runner = EnsembleRunner(metadata, loaded)
        else:
            runner = self._model_runner(metadata)
        runner.warm_up(self._warm_up_batch_size)
        return runner

    def _model_runner(self, metadata: ModelMetadata) -> ModelRunner:
        return ModelRunner.from_metadata(self._registry, metadata, self._device, self._run_options)

    def _switch(self, name: str, route: Route) -> None:
        runners = {version: self.runners[ModelKey(name, version)] for version in route.versions}
        self.routes[name] = route
        only = runners[route.split[0][0]] if len(route.split) == 1 else None
        self._serving[name] = _Serving(route, runners, [runners[version] for version in route.shadow], only)

    def _install(self, runner: Runner) -> None:
        self.runners[runner.key] = runner
        self._metrics.add_model_version(runner.metadata.name, runner.metadata.version)
        self.failures.pop(runner.key, None)

    def _retire_unused(self) -> None:
        used = {ModelKey(name, version) for name, route in self.routes.items() for version in route.versions}
        for key in [key for key in self.runners if key not in used]:
            log.info("model %s retired", key)
            self.on_retired(self.runners.pop(key))

    def _route_text(self, name: str) -> Any:
        route = self.routes.get(name)
        return None if route is None else route.to_dict()

    def _publish_info(self) -> None:
        self._metrics.model_info.clear()
        for runner in self.runners.values():
            self._metrics.model_info.labels(runner.metadata.name, runner.metadata.version, str(runner.device)).set(1)
