"""``stream models promote``: shadow evidence first, then traffic in steps with checks
between them, or a refusal with the reasons. Every step is on the record."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from stream.deploy.commands import ChangeResult, change_deployment, current_state
from stream.deploy.control import record_step
from stream.deploy.state import DeploymentState, Snapshot
from stream.errors import SettingsError
from stream.models.key import ModelKey
from stream.models.registry import ModelRegistry
from stream.retrain.evidence import Check, Evidence, shadow_evidence, step_evidence
from stream.settings import PipelineConfig

ClickHouseReader = Callable[[], AbstractContextManager[Any]]
"""Opens ClickHouse for one read and closes it again (the embedded engine allows one
process per data folder)."""


@dataclass
class Promotion:
    candidate: ModelKey
    champion: ModelKey
    stages: list[tuple[str, Evidence]] = field(default_factory=list)
    changes: list[ChangeResult] = field(default_factory=list)
    promoted: bool = False
    reasons: list[str] = field(default_factory=list)


def promote(
    kafka_config: dict[str, Any],
    pipeline: PipelineConfig,
    registry: ModelRegistry,
    candidate: ModelKey,
    read: ClickHouseReader,
    actor: str,
    reason: str = "",
    force: bool = False,
    timeout: float = 30.0,
    wait: Callable[[float], None] = time.sleep,
    report: Callable[[str, Evidence], None] = lambda stage, evidence: None,
    changed: Callable[[ChangeResult], None] = lambda result: None,
) -> Promotion:
    """Check the candidate's shadow evidence, then give it ``promotion.steps`` of the
    traffic in turn, checking it between steps; go back to the deployment before the
    promotion when a check fails. ``force`` skips the shadow evidence."""
    before = current_state(kafka_config, pipeline).current
    champion = before.serving[0].model
    if candidate == champion:
        raise SettingsError(str(candidate), f"already is {pipeline.name}'s champion")
    if candidate not in before.shadows and not force:
        raise SettingsError(
            str(candidate),
            f"does not shadow {pipeline.name}: deploy it with --shadow first so it earns "
            "evidence (or --force)",
        )
    spec = pipeline.promotion
    output = registry.manifest(champion.name, champion.version).output
    outcome = Promotion(candidate, champion)
    models = f"{candidate} over {champion}"

    def refuse(stage: str, evidence: Evidence, revision: int) -> Promotion:
        outcome.reasons = evidence.reasons
        record_step(
            kafka_config, pipeline.name, revision, "promotion_refused",
            f"{candidate} not promoted ({stage})", models, actor, "; ".join(evidence.reasons),
        )  # fmt: skip
        return outcome

    if not force:
        since = datetime.now(UTC) - timedelta(minutes=spec.lookback_minutes)
        with read() as client:
            evidence = shadow_evidence(client, pipeline, candidate, champion, output, since)
        outcome.stages.append(("shadow", evidence))
        report("shadow", evidence)
        if not evidence.passed:
            return refuse("shadow evidence", evidence, before.revision)
    why = reason or "shadow evidence passed"
    for i, share in enumerate(spec.steps):
        step = f"step {i + 1} of {len(spec.steps)}"
        result = change_deployment(
            kafka_config, pipeline, partial(DeploymentState.promote, model=candidate, share=share),
            registry, timeout, actor, f"{why} ({step})", force,
        )  # fmt: skip
        outcome.changes.append(result)
        changed(result)
        if not result.complete:
            unanswered = sorted(
                w for w in result.workers
                if result.answers.get(w, {}).get("kind") != "applied"
            )  # fmt: skip
            failed = Evidence(
                [Check("applied", False, f"workers {unanswered} did not apply {share:g}% in time")]
            )
            revision = _restore(
                kafka_config, pipeline, before, registry, timeout, actor, "not applied", changed
            )
            return refuse(step, failed, revision)
        if share >= 100:
            break
        started = datetime.now(UTC)
        wait(spec.step_seconds)
        with read() as client:
            evidence = step_evidence(
                client, pipeline, candidate, champion, output, started, spec.step_seconds
            )
        outcome.stages.append((f"{share:g}%", evidence))
        report(f"{share:g}%", evidence)
        if not evidence.passed:
            revision = _restore(
                kafka_config,
                pipeline,
                before,
                registry,
                timeout,
                actor,
                "; ".join(evidence.reasons),
                changed,
            )
            return refuse(f"{step}, {share:g}% of traffic", evidence, revision)
    outcome.promoted = True
    record_step(
        kafka_config, pipeline.name, outcome.changes[-1].after.current.revision, "promoted",
        f"{candidate} serves all traffic", models, actor,
        "; ".join(f"{stage}: {e.summary()}" for stage, e in outcome.stages) or why,
    )  # fmt: skip
    return outcome


def _restore(
    kafka_config: dict[str, Any],
    pipeline: PipelineConfig,
    before: Snapshot,
    registry: ModelRegistry,
    timeout: float,
    actor: str,
    why: str,
    changed: Callable[[ChangeResult], None],
) -> int:
    result = change_deployment(
        kafka_config, pipeline, lambda s: s.restore(before, why), registry, timeout, actor, why
    )
    changed(result)
    return result.after.current.revision
