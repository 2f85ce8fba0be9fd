"""When an alert asks for a retraining: the pipeline's ``retrain.trigger`` against the
records of ``{p}.alerts``.

An alert of the configured metric, subject and severity that is still open
``windows`` monitor windows after it opened asks once (per alert id) for a
retraining, unless a request went out less than ``cooldown_minutes`` before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stream.monitor.alerts import SEVERITIES
from stream.settings import PipelineConfig


@dataclass(frozen=True)
class RetrainRequest:
    pipeline: str
    requested_by: str
    reason: str
    alert_id: str = ""
    at: int = 0  # epoch ms

    def record(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "requested_by": self.requested_by,
            "reason": self.reason,
            "alert_id": self.alert_id,
            "at": self.at,
        }

    @classmethod
    def parse(cls, record: dict[str, Any]) -> RetrainRequest:
        return cls(
            pipeline=str(record["pipeline"]),
            requested_by=str(record.get("requested_by", "")),
            reason=str(record.get("reason", "")),
            alert_id=str(record.get("alert_id", "")),
            at=int(record.get("at", 0)),
        )


class RetrainTrigger:
    """Open alerts that match, and the requests already made; ``due`` says what to ask."""

    def __init__(self, pipeline: PipelineConfig) -> None:
        spec = pipeline.retrain.trigger
        if spec is None:
            raise ValueError(f"{pipeline.name} has no retrain.trigger")
        self.pipeline = pipeline.name
        self.spec = spec
        self.window_ms = int(pipeline.monitor.window_seconds * 1000)
        self.open: dict[str, tuple[int, dict[str, Any]]] = {}  # alert id -> (offset, record)
        self.requested: set[str] = set()
        self.last_request_ms: int | None = None

    def observe_alert(self, record: Any, offset: int) -> None:
        if not isinstance(record, dict) or not {"alert_id", "opened_at", "message"} <= set(record):
            return
        alert_id = str(record["alert_id"])
        if record.get("state") == "resolved":
            self.open.pop(alert_id, None)
        elif record.get("state") == "firing" and self._matches(record):
            first = self.open.get(alert_id, (offset, record))[0]
            self.open[alert_id] = (first, record)

    def observe_request(self, request: RetrainRequest) -> None:
        if request.alert_id:
            self.requested.add(request.alert_id)
        self.last_request_ms = max(self.last_request_ms or 0, request.at)

    def due(self, now_ms: int) -> RetrainRequest | None:
        """The request to make now, if any (it counts as made)."""
        last = self.last_request_ms
        if last is not None and now_ms - last < self.spec.cooldown_minutes * 60_000:
            return None
        for alert_id, (_, record) in sorted(self.open.items(), key=lambda kv: kv[1][0]):
            if alert_id in self.requested:
                continue
            if now_ms < int(record["opened_at"]) + self.spec.windows * self.window_ms:
                continue
            request = RetrainRequest(
                self.pipeline,
                "policy:retrain.trigger",
                f"{record['message']} Still open {self.spec.windows} windows after it opened.",
                alert_id,
                now_ms,
            )
            self.observe_request(request)
            return request
        return None

    def oldest_offset(self) -> int | None:
        """The alert record a restart must read again to know what is open."""
        return min((offset for offset, _ in self.open.values()), default=None)

    def _matches(self, record: dict[str, Any]) -> bool:
        spec = self.spec
        severity = str(record.get("severity", ""))
        if severity not in SEVERITIES or SEVERITIES.index(severity) < SEVERITIES.index(
            spec.severity
        ):
            return False
        if record.get("metric") != spec.metric:
            return False
        return spec.subject is None or record.get("subject") == spec.subject
