"""The gate's rules, the promotion's steps and what they put on the record, without Kafka."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest

from stream.cli.closed_loop import parse_since
from stream.deploy.commands import ChangeResult
from stream.deploy.state import DeploymentState, initial_state
from stream.errors import SettingsError, SinkUnavailable
from stream.models.key import ModelKey
from stream.models.manifest import OutputSpec
from stream.models.runtime import Prediction
from stream.retrain import promote as promotion
from stream.retrain.dataset import LabeledEvents, segment_column
from stream.retrain.evidence import Check, Evidence
from stream.retrain.gate import judge
from stream.retrain.metrics import paired_gain
from stream.retrain.trigger import RetrainTrigger
from stream.settings import PipelineConfig, RetrainSpec

V1 = ModelKey(name="m", version="1")
V2 = ModelKey(name="m", version="2")
OUTPUT = OutputSpec(labels=["legit", "fraud"], positive_label="fraud")


class Answers:
    """A model that answers the label it was given per row (1 = fraud)."""

    def __init__(self, fraud: np.ndarray) -> None:
        self.fraud = fraud
        self.manifest = _Manifest()

    def predict(self, batch: np.ndarray) -> Prediction:
        score = np.where(self.fraud == 1, 0.9, 0.1)
        index = self.fraud.astype(np.int64)
        return Prediction(index, score, np.maximum(score, 1 - score), np.empty((len(score), 0)))


class _Manifest:
    features: tuple[Any, ...] = ()
    output = OUTPUT


def holdout(truth: np.ndarray, channel: list[str]) -> LabeledEvents:
    frame = pd.DataFrame(
        {
            "label": np.where(truth == 1, "fraud", "legit"),
            segment_column("channel"): channel,
        }
    )
    return LabeledEvents(frame, [], ["channel"])


def test_the_gate_passes_a_better_candidate_and_the_fairness_guard_catches_a_segment() -> None:
    truth = np.array([1, 0] * 300)
    channel = ["web"] * 400 + ["pos"] * 200
    champion = truth.copy()
    champion[:60] = 1 - champion[:60]  # wrong on 60 web events: 0.90 overall
    better = truth.copy()
    better[:10] = 1 - better[:10]  # wrong on 10 web events
    spec = RetrainSpec(min_segment_labels=150, max_segment_regression=0.02)
    data = holdout(truth, channel)

    passed = judge(Answers(better), Answers(champion), data, spec)  # type: ignore[arg-type]
    assert passed.passed and passed.metric == "accuracy"
    assert passed.overall.candidate == pytest.approx(590 / 600)
    assert passed.overall.champion == pytest.approx(540 / 600)
    judged = [(r.segment, r.segment_value) for r in passed.rows if r.rule]
    assert judged == [("all", ""), ("channel", "pos"), ("channel", "web")]
    assert {r.metric for r in passed.rows} == {"accuracy", "brier", "log_loss"}

    # Better overall, but 30 of the 200 pos events wrong where the champion had none.
    unfair = truth.copy()
    unfair[:10] = 1 - unfair[:10]
    unfair[400:430] = 1 - unfair[400:430]
    verdict = judge(Answers(unfair), Answers(champion), data, spec)  # type: ignore[arg-type]
    assert not verdict.passed
    assert verdict.overall.passed, "overall the candidate is better"
    (reason,) = verdict.reasons
    assert reason.startswith("segment channel=pos: accuracy 0.8500")


def test_paired_gain_has_a_95_percent_interval() -> None:
    rng = np.random.default_rng(3)
    champion = (rng.random(4000) < 0.80).astype(float)
    candidate = np.where(rng.random(4000) < 0.5, 1.0, champion)
    mean, half = paired_gain("accuracy", candidate, champion)
    assert mean == pytest.approx(candidate.mean() - champion.mean())
    assert 0 < half < mean, "a gain of ~0.1 on 4,000 events is significant"
    assert paired_gain("brier", champion, candidate)[0] == pytest.approx(mean)


def test_since_takes_durations_and_times() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert parse_since("6h", now) == datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    assert parse_since("90m", now) == datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
    assert parse_since("2026-11-29T08:00", now) == datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    with pytest.raises(SettingsError, match="--since"):
        parse_since("yesterday", now)


class Control:
    """stream.control and model_events, in memory."""

    def __init__(self, state: DeploymentState) -> None:
        self.state = state
        self.steps: list[tuple[str, str]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(promotion, "current_state", lambda _k, _p: self.state)
        monkeypatch.setattr(promotion, "change_deployment", self.change)
        monkeypatch.setattr(promotion, "record_step", self.record)

    def change(self, _kafka: Any, _pipeline: Any, change: Any, *_: Any) -> ChangeResult:
        before, self.state = self.state, change(self.state)
        self.steps.append(("changed", self.state.current.change))
        return ChangeResult(before, self.state, set(), {})

    def record(self, _k: Any, _p: str, _rev: int, kind: str, message: str, *_: Any) -> None:
        self.steps.append((kind, message))


class Registry:
    def manifest(self, name: str, version: str) -> Any:
        return _Manifest()


def run(
    monkeypatch: pytest.MonkeyPatch,
    control: Control,
    steps: list[float],
    shadow: bool = True,
    step_ok: list[bool] | None = None,
) -> tuple[promotion.Promotion, list[float]]:
    control.install(monkeypatch)
    verdicts = iter(step_ok or [])
    monkeypatch.setattr(
        promotion, "shadow_evidence", lambda *_: Evidence([Check("quality", shadow, "shadow")])
    )
    monkeypatch.setattr(
        promotion,
        "step_evidence",
        lambda *_: Evidence([Check("quality", next(verdicts), "step")]),
    )
    pipeline = PipelineConfig.model_validate(
        {
            "name": "p",
            "model": {"name": "m", "version": "1"},
            "promotion": {"steps": steps, "step_seconds": 30},
        }
    )
    waited: list[float] = []

    class Reader:
        def __enter__(self) -> None:
            return None

        def __exit__(self, *_: Any) -> None:
            return None

    outcome = promotion.promote(
        {}, pipeline, Registry(), V2, Reader, "alice@host", "why",  # type: ignore[arg-type]
        wait=waited.append,
    )  # fmt: skip
    return outcome, waited


def test_promotion_walks_the_steps_and_ends_with_all_traffic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    control = Control(initial_state("p", V1).deploy(V2, shadow=True))
    outcome, waited = run(monkeypatch, control, [10, 50, 100], step_ok=[True, True])
    assert outcome.promoted and waited == [30, 30]
    assert [m for k, m in control.steps if k == "changed"] == [
        "promote m:2 to 10% of traffic",
        "promote m:2 to 50% of traffic",
        "promote m:2 to 100% of traffic",
    ]
    assert control.steps[-1] == ("promoted", "m:2 serves all traffic")
    current = control.state.current
    assert [str(w.model) for w in current.serving] == ["m:2"] and not current.shadows


def test_a_failed_step_goes_back_to_the_deployment_before_the_promotion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = initial_state("p", V1).deploy(V2, shadow=True)
    control = Control(before)
    outcome, _ = run(monkeypatch, control, [10, 50, 100], step_ok=[True, False])
    assert not outcome.promoted and outcome.reasons == ["step"]
    assert control.state.current.serving == before.current.serving
    assert control.state.current.shadows == [V2]
    assert control.steps[-2][1].startswith("back to revision 1")
    assert control.steps[-1][0] == "promotion_refused"


def test_promotion_is_refused_on_weak_evidence_or_without_a_shadow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    control = Control(initial_state("p", V1).deploy(V2, shadow=True))
    outcome, _ = run(monkeypatch, control, [100], shadow=False)
    assert not outcome.promoted
    assert [k for k, _ in control.steps] == ["promotion_refused"]
    with pytest.raises(SettingsError, match="does not shadow"):
        run(monkeypatch, Control(initial_state("p", V1)), [100])


def alert(state: str, opened_at: int, severity: str = "critical", **extra: Any) -> dict[str, Any]:
    return {
        "alert_id": f"a{opened_at}", "state": state, "severity": severity, "metric": "quality",
        "subject": "all events", "opened_at": opened_at, "message": "Accuracy fell.", **extra,
    }  # fmt: skip


def test_an_alert_asks_for_retraining_once_after_its_windows_and_not_within_the_cooldown() -> None:
    pipeline = PipelineConfig.model_validate(
        {
            "name": "p",
            "model": {"name": "m", "version": "1"},
            "monitor": {"window_seconds": 10},
            "retrain": {"trigger": {"metric": "quality", "windows": 3, "cooldown_minutes": 1}},
        }
    )
    trigger = RetrainTrigger(pipeline)
    trigger.observe_alert(alert("firing", 0, severity="warning"), 0)  # below the severity
    trigger.observe_alert(alert("firing", 0, metric="drift", alert_id="d"), 1)  # another metric
    trigger.observe_alert(alert("firing", 1_000), 2)
    trigger.observe_alert(alert("firing", 2_000), 3)
    trigger.observe_alert(alert("resolved", 2_000), 4)
    assert trigger.oldest_offset() == 2
    assert trigger.due(30_999) is None, "3 windows of 10 s after it opened"
    request = trigger.due(31_000)
    assert request is not None and request.alert_id == "a1000"
    assert request.requested_by == "policy:retrain.trigger"
    assert request.reason == "Accuracy fell. Still open 3 windows after it opened."
    trigger.observe_alert(alert("firing", 40_000), 5)
    assert trigger.due(80_000) is None, "within the cooldown of a minute"
    assert trigger.due(91_000) is not None and trigger.due(200_000) is None


class FakeConsumer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause(self, _partitions: Any) -> None:
        self.calls.append("pause")

    def resume(self, _partitions: Any) -> None:
        self.calls.append("resume")

    def commit(self, **kwargs: Any) -> None:
        self.calls.append(f"commit {kwargs['offsets'][0].offset}")


class RequestMessage:
    def __init__(self, topic: str, offset: int, record: dict[str, Any]) -> None:
        self._topic, self._offset, self._value = topic, offset, json.dumps(record).encode()

    def topic(self) -> str:
        return self._topic

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


class DownSink:
    def run(self, work: Any) -> Any:
        raise SinkUnavailable("ClickHouse did not run a query: connection refused")


def test_a_retraining_request_waits_for_clickhouse_and_fails_once_on_a_missing_champion(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from stream.models.registry import ModelRegistry
    from stream.retrain import runner

    pipeline = PipelineConfig.model_validate({"name": "p", "model": {"name": "m", "version": "1"}})
    monkeypatch.setattr(runner, "current_state", lambda *_: initial_state("p", V1))
    request = {"pipeline": "p", "requested_by": "a@h", "reason": "why", "at": 1}
    with ThreadPoolExecutor(1) as writer:
        jobs = runner.RetrainJobs(
            pipeline,
            {},
            Registry(),
            DownSink(),
            writer,
            60.0,  # type: ignore[arg-type]
        )
        consumer = FakeConsumer()
        jobs._handle(consumer, RequestMessage("p.retrain", 7, request))  # type: ignore[arg-type]
        assert jobs.status()["waiting"] and consumer.calls == ["pause"], "kept, not committed"
        assert jobs.counts["failed"] == 0

        # The champion is not in this registry: a failure said once, the request done with.
        jobs._registry = ModelRegistry(tmp_path)
        jobs._retry_at = 0.0
        jobs._try_start(consumer)  # type: ignore[arg-type]
    assert jobs.counts["failed"] == 1 and "not in the registry" in jobs.last_error
    assert consumer.calls == ["pause", "commit 8", "resume"] and not jobs.status()["waiting"]
