"""The deployment state of a pipeline and the routing decision it implies.

A state is a value: changing it (deploy, undeploy, rollback) returns a new
state with the next revision and the old one kept in ``history``. Workers
read states from the compacted ``stream.control`` topic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stream.errors import SettingsError
from stream.models.key import ModelKey

HISTORY = 10
BUCKETS = 10_000


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Weighted(_Frozen):
    model: ModelKey
    weight: float = Field(gt=0)


class Rule(_Frozen):
    field: str
    value: str
    model: ModelKey

    @property
    def variant(self) -> str:
        return f"rule:{self.field}={self.value}"


class Snapshot(_Frozen):
    """One revision of the deployment: serving variants, shadows, rules, fallback."""

    serving: list[Weighted]
    shadows: list[ModelKey] = []
    rules: list[Rule] = []
    fallback: ModelKey | None = None
    revision: int = 0
    changed_at: str = ""
    change: str = "initial deployment from the pipeline file"

    def models(self) -> set[ModelKey]:
        """Every model version this state needs loaded."""
        keys = {w.model for w in self.serving} | set(self.shadows) | {r.model for r in self.rules}
        if self.fallback is not None:
            keys.add(self.fallback)
        return keys

    def describe(self) -> str:
        total = sum(w.weight for w in self.serving)
        parts = [f"{w.model} {100 * w.weight / total:.0f}%" for w in self.serving] + [
            f"shadow {s}" for s in self.shadows
        ]
        parts += [f"{r.field}={r.value} -> {r.model}" for r in self.rules]
        if self.fallback:
            parts.append(f"fallback {self.fallback}")
        return ", ".join(parts)


class DeploymentState(_Frozen):
    pipeline: str
    current: Snapshot
    history: list[Snapshot] = []

    def _next(self, snapshot: Snapshot, change: str) -> DeploymentState:
        stamped = snapshot.model_copy(
            update={
                "revision": self.current.revision + 1,
                "changed_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "change": change,
            }
        )
        return DeploymentState(
            pipeline=self.pipeline,
            current=stamped,
            history=[self.current, *self.history][:HISTORY],
        )

    def deploy(
        self,
        model: ModelKey,
        weight: float | None = None,
        shadow: bool = False,
        route: tuple[str, str] | None = None,
        fallback: bool = False,
    ) -> DeploymentState:
        cur = self.current
        if shadow:
            if model in cur.shadows:
                raise SettingsError("--shadow", f"{model} already shadows {self.pipeline}")
            return self._next(
                cur.model_copy(update={"shadows": [*cur.shadows, model]}), f"shadow {model}"
            )
        if route is not None:
            rule = Rule(field=route[0], value=route[1], model=model)
            rules = [r for r in cur.rules if (r.field, r.value) != route] + [rule]
            change = f"route {rule.variant} to {model}"
            return self._next(cur.model_copy(update={"rules": rules}), change)
        if fallback:
            return self._next(cur.model_copy(update={"fallback": model}), f"fallback {model}")
        if weight is None or weight >= 100:
            return self._next(
                cur.model_copy(update={"serving": [Weighted(model=model, weight=100)]}),
                f"deploy {model} for all traffic",
            )
        if not 0 < weight < 100:
            raise SettingsError("--weight", f"expected a share between 0 and 100, got {weight}")
        others = [w for w in cur.serving if w.model != model]
        if not others:
            raise SettingsError("--weight", f"{model} would be the only serving version")
        total = sum(w.weight for w in others)
        scaled = [Weighted(model=w.model, weight=w.weight * (100 - weight) / total) for w in others]
        return self._next(
            cur.model_copy(update={"serving": [*scaled, Weighted(model=model, weight=weight)]}),
            f"deploy {model} for {weight:g}% of traffic",
        )

    def promote(self, model: ModelKey, share: float) -> DeploymentState:
        """``model`` takes ``share`` percent of traffic and stops shadowing; rules and the
        fallback stay."""
        cur = self.current
        if share >= 100:
            serving = [Weighted(model=model, weight=100)]
        else:
            others = [w for w in cur.serving if w.model != model]
            if not others:
                raise SettingsError(str(model), "already serves all traffic")
            total = sum(w.weight for w in others)
            serving = [
                *(Weighted(model=w.model, weight=w.weight * (100 - share) / total) for w in others),
                Weighted(model=model, weight=share),
            ]
        update = {"serving": serving, "shadows": [s for s in cur.shadows if s != model]}
        return self._next(
            cur.model_copy(update=update), f"promote {model} to {share:g}% of traffic"
        )

    def restore(self, snapshot: Snapshot, why: str) -> DeploymentState:
        """A new revision serving exactly what ``snapshot`` served."""
        return self._next(snapshot, f"back to revision {snapshot.revision}: {why}")

    def undeploy(self, model: ModelKey) -> DeploymentState:
        cur = self.current
        serving = [w for w in cur.serving if w.model != model]
        if not serving:
            raise SettingsError(str(model), "is the only serving version; deploy another first")
        update = {
            "serving": serving,
            "shadows": [s for s in cur.shadows if s != model],
            "rules": [r for r in cur.rules if r.model != model],
            "fallback": None if cur.fallback == model else cur.fallback,
        }
        if cur.model_copy(update=update) == cur:
            raise SettingsError(str(model), f"does not serve {self.pipeline}")
        return self._next(cur.model_copy(update=update), f"undeploy {model}")

    def rollback(self) -> DeploymentState:
        if not self.history:
            raise SettingsError(self.pipeline, "has no earlier deployment to roll back to")
        previous, *older = self.history
        restored = previous.model_copy(
            update={
                "revision": self.current.revision + 1,
                "changed_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "change": f"rollback to revision {previous.revision}",
            }
        )
        return DeploymentState(pipeline=self.pipeline, current=restored, history=older)


def initial_state(pipeline: str, model: ModelKey) -> DeploymentState:
    return DeploymentState(
        pipeline=pipeline, current=Snapshot(serving=[Weighted(model=model, weight=100)])
    )


def key_bucket(key: bytes) -> int:
    """A stable bucket in [0, BUCKETS) for an event key: the same key, the same variant."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % BUCKETS


class Router:
    """The routing decision of one snapshot, precomputed for the hot path.

    Rules first (first match wins), then the weighted split, sticky by key:
    a key's bucket is fixed, so it sees the same variant as long as the
    weights stay the same.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.rules = [(r.field, r.value, r.model, r.variant) for r in snapshot.rules]
        total = sum(w.weight for w in snapshot.serving)
        self.edges: list[float] = []
        edge = 0.0
        for w in snapshot.serving:
            edge += w.weight * BUCKETS / total
            self.edges.append(edge)
        self.targets = [
            (w.model, "champion" if i == 0 else "challenger")
            for i, w in enumerate(snapshot.serving)
        ]
        # Every event to one version, whatever its key or fields: nothing to decide per event.
        self.only = self.targets[0] if not self.rules and len(self.targets) == 1 else None

    def route(self, key: bytes, record: Mapping[str, Any]) -> tuple[ModelKey, str]:
        for field, value, model, variant in self.rules:
            found = record.get(field)
            if found is not None and str(found) == value:
                return model, variant
        if len(self.targets) == 1:
            return self.targets[0]
        bucket = key_bucket(key)
        for edge, target in zip(self.edges, self.targets, strict=True):
            if bucket < edge:
                return target
        return self.targets[-1]
