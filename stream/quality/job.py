"""Quality per window, model version, variant and segment, computed in ClickHouse.

The prediction log (with the segment fields of each event) joined with the
feedback gives ``quality_windows``. A window (by scoring time, the
monitor's window length) is computed when it closes, again whenever labels for
its events arrive, and a last time once the label horizon has passed for all
of it (``final = 1``). Each computation replaces the one before it (a higher
revision), so a worker that restarts or a second worker doing the same work
does no harm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from stream.models.manifest import OutputSpec
from stream.models.registry import ModelRegistry
from stream.monitor.alerts import Alert, Condition, WindowFacts, track
from stream.monitor.windows import utc_from_ms
from stream.settings import PipelineConfig

log = logging.getLogger(__name__)

QUALITY_SQL = """
INSERT INTO quality_windows
SELECT pipeline, model, model_version, variant, window_start,
       window_start + toIntervalMillisecond({window_ms:UInt64}) AS window_end,
       seg.1 AS segment, seg.2 AS segment_value,
       count() AS predictions,
       countIf(labeled) AS labeled_events,
       countIf(late) AS late_labels,
       labeled_events / predictions AS label_coverage,
       avgIf(predicted = actual, labeled) AS accuracy,
       countIf(labeled AND predicted_positive AND positive)
           / countIf(labeled AND predicted_positive) AS precision,
       countIf(labeled AND predicted_positive AND positive)
           / countIf(labeled AND positive) AS recall,
       avgIf(pow(score - positive, 2), labeled AND {binary:UInt8}) AS brier,
       -avgIf(positive * log(clamped) + (1 - positive) * log(1 - clamped),
              labeled AND {binary:UInt8}) AS log_loss,
       countIf(labeled AND positive) AS positives,
       countIf(labeled AND predicted_positive) AS predicted_positives,
       countIf(labeled AND predicted_positive AND positive) AS true_positives,
       ifNull(avgIf(abs(score - actual_value), labeled AND {regressor:UInt8}), nan) AS mae,
       ifNull(sqrt(avgIf(pow(score - actual_value, 2), labeled AND {regressor:UInt8})), nan)
           AS rmse,
       window_start + toIntervalMillisecond({window_ms:UInt64} + {horizon_ms:UInt64})
           <= {now:DateTime64(3, 'UTC')} AS final,
       {revision:UInt64} AS revision,
       {now:DateTime64(3, 'UTC')} AS computed_at
FROM
(
    SELECT {pipeline:String} AS pipeline, {model:String} AS model,
           {version:String} AS model_version, p.variant AS variant, p.window_start AS window_start,
           p.label AS predicted, f.label AS actual, toFloat64OrNull(f.label) AS actual_value,
           p.score AS score, least(greatest(p.score, 1e-15), 1 - 1e-15) AS clamped,
           f.event_id != '' AS has_label,
           has_label AND dateDiff('millisecond', p.scored_time, f.label_time)
               <= {horizon_ms:UInt64} AS labeled,
           has_label AND NOT labeled AS late,
           f.label = {positive:String} AS positive,
           p.label = {positive:String} AS predicted_positive,
           p.segments AS segments
    FROM
    (
        -- The windows' predictions, each once: copies of a row (an event scored again
        -- after a restart, an insert retried) are one prediction. Not FINAL: the log is
        -- sorted by event id, so FINAL would read the whole day's log for every window.
        SELECT event_id, variant, label, score, segments, scored_time,
               toStartOfInterval(scored_time, toIntervalMillisecond({window_ms:UInt64}))
                   AS window_start
        FROM prediction_log
        WHERE pipeline = {pipeline:String} AND model = {model:String}
          AND model_version = {version:String}
          AND scored_time >= {lo:DateTime64(3, 'UTC')} AND scored_time < {hi:DateTime64(3, 'UTC')}
          AND window_start IN {windows:Array(DateTime64(3, 'UTC'))}
        LIMIT 1 BY event_id, variant, window_start
    ) AS p
    LEFT JOIN
    (
        -- The newest label of each of the windows' events (what FINAL would keep).
        SELECT event_id, argMax(label, received_at) AS label,
               argMax(label_time, received_at) AS label_time
        FROM feedback
        WHERE pipeline = {pipeline:String} AND event_id IN
            (SELECT event_id FROM prediction_log WHERE pipeline = {pipeline:String}
             AND scored_time >= {lo:DateTime64(3, 'UTC')}
             AND scored_time < {hi:DateTime64(3, 'UTC')})
        GROUP BY event_id
    ) AS f ON p.event_id = f.event_id
)
ARRAY JOIN arrayConcat([('all', '')],
                       arrayMap(s -> (s, segments[s]), {segments:Array(String)})) AS seg
GROUP BY pipeline, model, model_version, variant, window_start, segment, segment_value
"""


def consecutive(starts: set[int], window_ms: int) -> list[list[int]]:
    """Window starts in runs of adjacent windows, oldest first: one computation each.

    A computation reads the log between its first window and its last, so windows
    far apart (the one that just closed and the one whose horizon just passed, an
    hour before it by default) are computed apart, not with the whole hour between.
    """
    runs: list[list[int]] = []
    for start in sorted(starts):
        if runs and start - runs[-1][-1] == window_ms:
            runs[-1].append(start)
        else:
            runs.append([start])
    return runs


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _utc(dt: datetime) -> datetime:
    """ClickHouse hands DateTime64 values back with or without their zone; make them UTC."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


@dataclass
class QualityRun:
    """What one run computed and found, applied to the job by ``QualityJob.commit``."""

    after: tuple[int, int, datetime | None]
    written: int
    alerts: list[Alert] = field(default_factory=list)
    open_alerts: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    judged_until: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass
class QualityJob:
    """Which windows to compute, and computing them; ``run`` is called about once a window."""

    pipeline: PipelineConfig
    registry: ModelRegistry
    computed_until: int | None = None  # ms: windows ending before it had their first write
    labels_until: datetime | None = None  # feedback.received_at read up to here
    last_run_ms: int | None = None
    runs: int = 0
    windows_written: int = 0
    # Accuracy alerts: per model version, the open alerts and the newest window judged.
    open_alerts: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    judged_until: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def window_ms(self) -> int:
        return int(self.pipeline.monitor.window_seconds * 1000)

    @property
    def horizon_ms(self) -> int:
        return int(self.pipeline.quality.label_horizon_seconds * 1000)

    def run(self, client: Client, now: datetime) -> QualityRun:
        """Compute the windows that are due, and judge accuracy where it has enough labels.

        Nothing of the job's state changes here: the caller publishes the run's
        alerts and then calls ``commit``. A run that fails part way (or whose
        alerts could not be published) is repeated whole by the next one.
        """
        due, after = self.due_windows(client, now)
        written = 0
        for windows in consecutive(due, self.window_ms):
            lo, hi = windows[0], windows[-1] + self.window_ms
            for model, version in self._versions(client, lo, hi):
                self._compute(client, model, version, windows, lo, hi, now)
                written += len(windows)
        quality_run = QualityRun(after, written)
        if self.pipeline.quality.min_accuracy is not None and due:
            self._judge(client, sorted(due), quality_run)
        return quality_run

    def commit(self, done: QualityRun) -> None:
        self.computed_until, self.last_run_ms, self.labels_until = done.after
        self.open_alerts.update(done.open_alerts)
        self.judged_until.update(done.judged_until)
        self.runs += 1
        self.windows_written += done.written

    def _judge(self, client: Client, windows: list[int], done: QualityRun) -> None:
        """Accuracy per segment against ``quality.min_accuracy``, each window once, in order:
        when it first has ``quality.min_labels`` labels in a segment."""
        spec = self.pipeline.quality
        rows = client.query(
            "SELECT model, model_version, any(variant), toUnixTimestamp64Milli(window_start), "
            "groupArray((segment, segment_value, labeled, accuracy)) FROM quality_windows FINAL "
            "WHERE pipeline = {p:String} AND window_start IN {w:Array(DateTime64(3, 'UTC'))} "
            "GROUP BY model, model_version, window_start ORDER BY window_start",
            parameters={"p": self.pipeline.name, "w": [utc_from_ms(s) for s in windows]},
        ).result_rows
        assert spec.min_accuracy is not None
        for model, version, variant, start, segments in rows:
            key = (str(model), str(version))
            start = int(start)
            if start <= done.judged_until.get(key, self.judged_until.get(key, -1)):
                continue
            judged = [(f"{s}={v}" if s != "all" else "all events", int(n), float(acc))
                      for s, v, n, acc in segments if int(n) >= spec.min_labels]  # fmt: skip
            if not judged:
                continue  # too few labels yet: judged when more came
            found = [
                Condition("quality", subject, "critical", "accuracy", acc, spec.min_accuracy, n)
                for subject, n, acc in judged
                if acc < spec.min_accuracy
            ]
            evaluated = {
                f"quality:{subject}": (n, {"accuracy": (acc, spec.min_accuracy)})
                for subject, n, acc in judged
            }
            facts = WindowFacts(self.pipeline.name, key[0], key[1], str(variant), start,
                                start + self.window_ms, found, evaluated)  # fmt: skip
            before = done.open_alerts.get(key, self.open_alerts.get(key, {}))
            done.open_alerts[key], alerts = track(before, facts)
            done.alerts.extend(alerts)
            done.judged_until[key] = start

    def due_windows(
        self, client: Client, now: datetime
    ) -> tuple[set[int], tuple[int, int, datetime | None]]:
        """Window starts (ms) to compute: closed since the last run, given labels since then,
        or past their horizon since then. The first run takes every window within the
        horizon that is not final yet (after a restart nothing is known). Also returns
        the job's state once they are computed."""
        w = self.window_ms
        now_ms = _ms(now)
        closed_until = (now_ms - int(self.pipeline.monitor.grace_seconds * 1000)) // w * w
        params: dict[str, Any] = {"pipeline": self.pipeline.name, "w": w}
        labels_since = self.labels_until
        if self.computed_until is None or self.last_run_ms is None:
            since = closed_until - self.horizon_ms - w
            # Labels that came while no job ran: since the last computation (a minute's
            # margin for labels stamped before their insert finished), or the horizon.
            last = client.query(
                "SELECT max(computed_at) FROM quality_windows WHERE pipeline = {pipeline:String}",
                parameters=params,
            ).result_rows[0][0]
            if last is not None and _ms(_utc(last)) > 0:
                labels_since = _utc(last) - timedelta(minutes=1)
            else:
                labels_since = utc_from_ms(since)
            with_predictions = client.query(
                "SELECT DISTINCT toUnixTimestamp64Milli(toStartOfInterval(scored_time, "
                "toIntervalMillisecond({w:UInt64}))) FROM prediction_log "
                "WHERE pipeline = {pipeline:String} "
                "AND scored_time >= {since:DateTime64(3, 'UTC')}",
                parameters={**params, "since": utc_from_ms(since)},
            ).result_rows
            final = client.query(
                "SELECT DISTINCT toUnixTimestamp64Milli(window_start) FROM quality_windows FINAL "
                "WHERE pipeline = {pipeline:String} AND final = 1 "
                "AND window_start >= {since:DateTime64(3, 'UTC')}",
                parameters={**params, "since": utc_from_ms(since)},
            ).result_rows
            due = {int(r[0]) for r in with_predictions} - {int(r[0]) for r in final}
        else:
            due = set(range(self.computed_until, closed_until, w))
            last = self.last_run_ms
            oldest = (last - self.horizon_ms - w) // w * w
            due |= {
                s
                for s in range(oldest, closed_until, w)
                if last < s + w + self.horizon_ms <= now_ms
            }
        received = client.query(
            "SELECT max(received_at) FROM feedback WHERE pipeline = {pipeline:String}",
            parameters=params,
        ).result_rows[0][0]
        received = None if received is None else _utc(received)
        labels_until = self.labels_until
        news = labels_since is None or (received is not None and received > labels_since)
        if received is not None and _ms(received) > 0 and news:
            due |= self._labeled_windows(client, labels_since or utc_from_ms(0), received)
            labels_until = received
        due = {s for s in due if s + w <= closed_until}
        return due, (closed_until, now_ms, labels_until)

    def _labeled_windows(self, client: Client, since: datetime, until: datetime) -> set[int]:
        """Windows holding the events of labels received in (since, until]."""
        rows = client.query(
            "SELECT DISTINCT toUnixTimestamp64Milli(toStartOfInterval(scored_time, "
            "toIntervalMillisecond({w:UInt64}))) FROM prediction_log "
            "WHERE pipeline = {pipeline:String} AND event_id IN (SELECT event_id FROM feedback "
            "WHERE pipeline = {pipeline:String} AND received_at > {since:DateTime64(3, 'UTC')} "
            "AND received_at <= {until:DateTime64(3, 'UTC')})",
            parameters={
                "pipeline": self.pipeline.name, "w": self.window_ms, "since": since,
                "until": until,
            },
        ).result_rows  # fmt: skip
        return {int(r[0]) for r in rows}

    def _versions(self, client: Client, lo: int, hi: int) -> list[tuple[str, str]]:
        rows = client.query(
            "SELECT DISTINCT model, model_version FROM prediction_log "
            "WHERE pipeline = {pipeline:String} AND scored_time >= {lo:DateTime64(3, 'UTC')} "
            "AND scored_time < {hi:DateTime64(3, 'UTC')}",
            parameters={
                "pipeline": self.pipeline.name,
                "lo": utc_from_ms(lo),
                "hi": utc_from_ms(hi),
            },
        ).result_rows
        return [(str(m), str(v)) for m, v in rows]

    def _compute(
        self,
        client: Client,
        model: str,
        version: str,
        windows: list[int],
        lo: int,
        hi: int,
        now: datetime,
    ) -> None:
        output = self._output(model, version)
        positive = ""
        if output is not None and output.positive_index is not None:
            positive = output.labels[output.positive_index]
        parameters: dict[str, Any] = {
            "pipeline": self.pipeline.name,
            "model": model,
            "version": version,
            "window_ms": self.window_ms,
            "horizon_ms": self.horizon_ms,
            "windows": [utc_from_ms(s) for s in windows],
            "lo": utc_from_ms(lo),
            "hi": utc_from_ms(hi),
            "positive": positive,
            "binary": int(bool(positive)),
            "regressor": int(output is not None and output.kind == "regressor"),
            "segments": list(self.pipeline.quality.segments),
            "now": now,
            "revision": _ms(now),
        }
        client.command(QUALITY_SQL, parameters=parameters)

    def _output(self, model: str, version: str) -> OutputSpec | None:
        try:
            return self.registry.manifest(model, version).output
        except Exception as exc:  # a version gone from the registry: accuracy still works
            log.warning("quality of %s:%s without its manifest: %s", model, version, exc)
            return None
