"""Ensembles: a model declared as the weighted average or majority vote of other models.

An ensemble's metadata.json has ``"format": "ensemble"``, the kind, input size and labels its
members share, a ``method`` ("mean" or "vote") and its ``members``::

    "members": [{"name": "breast-cancer", "version": "1", "weight": 1},
                {"name": "breast-cancer", "version": "2", "weight": 2}]

Each member does one forward per batch; results list the members and the versions they ran.
"mean" averages classifiers' probabilities (regressors' outputs); "vote" gives each member's
label its weight and reports the vote shares as probabilities.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.errors import ModelLoadError
from app.models.metadata import ModelKey, ModelMetadata
from app.models.runner import ModelInput, ModelOutput, OffLoopPredictor, Runner, StageListener

METHODS = ("mean", "vote")


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    version: str
    weight: float


def declared_members(metadata: ModelMetadata) -> list[Member]:
    """The members an ensemble's metadata declares (versions may be "latest")."""
    where = f"ensemble {metadata.name}/{metadata.version}"
    method = metadata.extra.get("method")
    if method not in METHODS:
        raise ModelLoadError(f"{where}: method must be one of {METHODS}, got {method!r}")
    if method == "vote" and metadata.kind != "classifier":
        raise ModelLoadError(f"{where}: only classifiers can vote")
    declared = metadata.extra.get("members")
    if not isinstance(declared, list) or not declared:
        raise ModelLoadError(f"{where}: 'members' must be a non-empty list of {{name, version, weight}}")
    members = []
    for entry in declared:
        try:
            member = Member(str(entry["name"]), str(entry.get("version", "latest")), float(entry.get("weight", 1.0)))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ModelLoadError(f"{where}: bad member {entry!r}") from None
        if member.weight <= 0 or member.name == metadata.name:
            raise ModelLoadError(f"{where}: member {entry!r} needs a weight > 0 and another model's name")
        members.append(member)
    return members


class EnsembleRunner(OffLoopPredictor):
    def __init__(self, metadata: ModelMetadata, members: Sequence[tuple[Member, Runner]]) -> None:
        for _, runner in members:
            _check_compatible(metadata, runner.metadata)
        resolved = [
            {"name": runner.metadata.name, "version": runner.metadata.version, "weight": member.weight}
            for member, runner in members
        ]
        self.metadata = dataclasses.replace(metadata, extra={**metadata.extra, "members": resolved})
        self.method = str(metadata.extra["method"])
        self.device = members[0][1].device
        self.warm = False
        self._members = list(members)
        self._total_weight = sum(member.weight for member, _ in members)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ensemble-{metadata.name}")
        self.inline = False
        self.batches_in_flight = 1
        self.on_stages: StageListener | None = None
        """Unused: an ensemble's members time their own forwards."""

    @property
    def key(self) -> ModelKey:
        return self.metadata.key

    def warm_up(self, max_batch_size: int) -> None:
        for _, runner in self._members:
            if not runner.warm:
                runner.warm_up(max_batch_size)
        self.inline = all(getattr(runner, "inline", False) for _, runner in self._members)
        self.predict([[0.0] * self.metadata.input_size])
        self.warm = True

    def predict(self, rows: Sequence[ModelInput]) -> list[ModelOutput]:
        outputs = [(member.weight, runner.predict(rows)) for member, runner in self._members]
        combine = self._vote if self.method == "vote" else self._mean
        return [combine([(weight, per_row[index]) for weight, per_row in outputs]) for index in range(len(rows))]

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for _, runner in self._members:
            runner.close()

    def _mean(self, votes: list[tuple[float, ModelOutput]]) -> ModelOutput:
        total = self._total_weight
        if self.metadata.kind != "classifier":
            return ModelOutput(sum(weight * output.prediction for weight, output in votes) / total)
        probabilities = dict.fromkeys(self.metadata.labels, 0.0)
        for weight, output in votes:
            assert output.probabilities is not None
            for label, probability in output.probabilities.items():
                probabilities[label] += weight * probability / total
        return self._classified(probabilities)

    def _vote(self, votes: list[tuple[float, ModelOutput]]) -> ModelOutput:
        shares = dict.fromkeys(self.metadata.labels, 0.0)
        for weight, output in votes:
            assert output.label is not None
            shares[output.label] += weight / self._total_weight
        return self._classified(shares)

    def _classified(self, probabilities: dict[str, float]) -> ModelOutput:
        label = max(probabilities, key=probabilities.__getitem__)
        positive = self.metadata.positive_label
        return ModelOutput(probabilities[positive if positive is not None else label], label, probabilities)


def _check_compatible(ensemble: ModelMetadata, member: ModelMetadata) -> None:
    mismatches: list[str] = []
    for field in ("kind", "input_size", "labels"):
        ours: Any = getattr(ensemble, field)
        theirs: Any = getattr(member, field)
        if ours != theirs:
            mismatches.append(f"{field} {theirs!r} != {ours!r}")
    if mismatches:
        raise ModelLoadError(
            f"ensemble {ensemble.name}/{ensemble.version}: member {member.name}/{member.version}: "
            + "; ".join(mismatches)
        )
