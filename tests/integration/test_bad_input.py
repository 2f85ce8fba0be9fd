"""Bad input against a live worker: every broken event is a dead letter with its reason."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from stream.demo.data import CATEGORIES, NUMERIC
from stream.models.registry import ModelRegistry
from stream.services.readback import read_to_end
from stream.settings import Settings
from tests.integration.conftest import PipelineHarness, engine

pytestmark = pytest.mark.integration


def valid(event_id: str) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": event_id,
        "event_time": 1_700_000_000_000,
        "customer_id": "c",
    }
    event.update({name: 1.0 for name in NUMERIC})
    event.update({name: cats[0] for name, cats in CATEGORIES.items()})
    return event


def encoded(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()  # allow_nan: NaN and Infinity literals on purpose


def without(field: str) -> dict[str, Any]:
    event = valid("missing")
    del event[field]
    return event


CASES: dict[str, tuple[bytes, str | None]] = {
    "ok": (encoded(valid("ok")), None),
    "ok-null": (encoded({**valid("ok-null"), "device_age_days": None}), None),
    "garbage": (b"\x00\x01\x02 not json", "value_decode"),
    "array": (b"[1, 2, 3]", "value_decode"),
    "empty": (b"", "value_decode"),
    "missing": (encoded(without("amount")), "invalid"),
    "wrong-type": (encoded({**valid("wrong-type"), "amount": "twelve"}), "invalid"),
    "nan": (encoded({**valid("nan"), "amount": math.nan}), "invalid"),
    "inf": (encoded({**valid("inf"), "ip_risk_score": math.inf}), "invalid"),
    "unknown-enum": (encoded({**valid("unknown-enum"), "channel": "carrier-pigeon"}), "invalid"),
    "null-required": (encoded({**valid("null-required"), "amount": None}), "invalid"),
    "negative-time": (encoded({**valid("negative-time"), "event_time": -5}), "invalid"),
    "oversized": (encoded({**valid("oversized"), "note": "x" * 70_000}), "invalid"),
}


def test_bad_events_become_dead_letters_and_worker_stays_up(
    harness: PipelineHarness, clickhouse_dsn: str
) -> None:
    pipeline, path = harness.pipeline(input={"format": "json"})
    worker = harness.worker(path)
    worker.wait_ready()
    producer = Producer({**harness.kafka_config, "message.max.bytes": 2_000_000})
    for key, (payload, _) in CASES.items():
        producer.produce(pipeline.events_topic, value=payload, key=key.encode())
    producer.flush(30)

    out = harness.outcomes(pipeline, {k.encode() for k in CASES})
    predicted = {m.key().decode() for m in out[pipeline.predictions_topic]}
    dead = {m.key().decode(): dict(m.headers()) for m in out[pipeline.deadletter_topic]}
    assert predicted == {k for k, (_, reason) in CASES.items() if reason is None}
    for key, (_, reason) in CASES.items():
        if reason is None:
            continue
        headers = dead[key]
        assert headers["error.reason"].decode() == reason, key
        assert headers["error.message"], key
        assert headers["source.topic"] == pipeline.events_topic.encode()
        assert int(headers["source.offset"]) >= 0
    assert b"carrier-pigeon" in dead["unknown-enum"]["error.message"]
    assert b"exceeds input.max_event_bytes" in dead["oversized"]["error.message"]
    assert (
        next(m for m in out[pipeline.deadletter_topic] if m.key() == b"garbage").value()
        == CASES["garbage"][0]
    ), "dead letters keep the original bytes"

    status = worker.status()
    assert status is not None and engine(status, pipeline.name)["alive"]

    # While the worker holds the embedded ClickHouse folder, a second opener gets one line.
    result = subprocess.run(
        [sys.executable, "-m", "stream", "query", "SELECT 1"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "STREAM_CLICKHOUSE_DSN": clickhouse_dsn},
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "is busy" in line and str(worker.pid) in line
    assert worker.stop() == 0


def test_migrations_apply_once(tmp_path: Path) -> None:
    env = {**os.environ, "STREAM_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}"}

    def migrate() -> str:
        result = subprocess.run(
            [sys.executable, "-m", "stream", "db", "migrate"],
            capture_output=True, text=True, timeout=60, check=True, env=env,
        )  # fmt: skip
        return result.stdout

    first = migrate()
    assert "applied: 001_windows.sql" in first
    assert "retention: 365 days for windows and alerts, 30 days for the prediction log" in first
    again = migrate()
    assert "schema is up to date" in again and "retention" not in again, "nothing changed"
    env["STREAM_CLICKHOUSE_LOG_RETENTION_DAYS"] = "0"
    assert "changed on prediction_log, feedback" in migrate(), "0 keeps the log for ever"


SQL_SCRIPT = """
import json, sys
from stream.settings import Settings
from stream.sinks.clickhouse import connect
ch = connect(Settings().dsn, "stream")
for statement in sys.argv[1:]:
    if statement.startswith("SELECT"):
        print(json.dumps(ch.client.query(statement).result_rows, default=str))
    else:
        ch.client.command(statement)
"""


def test_the_logs_inputs_survive_the_migration_to_two_columns(tmp_path: Path) -> None:
    """A log written with the inputs as a Map reads the same after 007 made them two columns."""
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(Settings().migrations_dir.glob("*.sql")):
        if path.name < "007":
            (before / path.name).write_text(path.read_text())
    env = {**os.environ, "STREAM_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}"}

    def run(*args: str, migrations: Path) -> str:
        result = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, timeout=60, check=True,
            env={**env, "STREAM_MIGRATIONS_DIR": str(migrations)},
        )  # fmt: skip
        return result.stdout

    run("-m", "stream", "db", "migrate", migrations=before)
    # Scored now: the log's retention (a TTL on scored_time) would drop rows of 1970.
    run("-c", SQL_SCRIPT, "INSERT INTO prediction_log (pipeline, event_id, model, model_version, "
        "variant, label, scored_time, features) VALUES "
        "('p', 'e1', 'm', '1', 'champion', 'fraud', now64(), map('amount', 12.5, 'hour', nan)), "
        "('p', 'e2', 'm', '1', 'champion', 'legit', now64(), map())",
        migrations=before)  # fmt: skip
    assert "applied: 007_log_feature_columns.sql" in run(
        "-m", "stream", "db", "migrate", migrations=Settings().migrations_dir
    )
    (rows,) = [
        json.loads(line)
        for line in run("-c", SQL_SCRIPT, "SELECT event_id, feature_names, feature_values, "
                        "features['amount'], mapKeys(features) FROM prediction_log "
                        "ORDER BY event_id", migrations=Settings().migrations_dir).splitlines()
    ]  # fmt: skip
    (e1, names, values, amount, keys), e2 = rows
    assert (e1, names, amount, keys) == ("e1", '["amount","hour"]', 12.5, ["amount", "hour"])
    assert values[0] == 12.5 and math.isnan(values[1])
    assert e2 == ["e2", "[]", [], 0.0, []]


@pytest.mark.parametrize(
    ("version", "message"), [("404", "not in the registry"), ("tampered", "checksum")]
)
def test_worker_refuses_a_model_that_does_not_verify(
    harness: PipelineHarness, tmp_path: Path, version: str, message: str
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    onnx_bytes = (harness.registry.folder("payments-fraud", "1") / "model.onnx").read_bytes()
    manifest = harness.registry.manifest("payments-fraud", "1").model_copy(
        update={"version": "tampered"}
    )
    folder = registry.register(onnx_bytes, manifest)
    (folder / "model.onnx").write_bytes(onnx_bytes[:-10])
    _, path = harness.pipeline(model={"name": "payments-fraud", "version": version})
    result = subprocess.run(
        [sys.executable, "-m", "stream", "worker", "--pipeline", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
        env={
            **os.environ,
            "STREAM_KAFKA_BOOTSTRAP": harness.bootstrap,
            "STREAM_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}",
            "STREAM_REGISTRY": str(registry.root),
        },
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert message in line and f"payments-fraud:{version}" in line


def test_a_burst_of_poison_pills_is_dead_lettered_at_full_speed_beside_good_traffic(
    harness: PipelineHarness,
) -> None:
    """30,000 broken events at once, in the middle of 600 good events a second."""
    pipeline, path = harness.pipeline()
    worker = harness.worker(path)
    worker.wait_ready()
    with harness.traffic(pipeline, 12_000, rate=600, seed=81) as reports:
        worker.wait_until(lambda s: engine(s, pipeline.name)["predictions"] >= 3000, 60, "traffic")
        burst = harness.producer(pipeline).run(30_000, rate=0, seed=82, malformed_share=1.0)
    (good,) = reports
    assert burst.malformed == 30_000 and good.malformed == 0
    events = read_to_end(harness.kafka_config, [pipeline.events_topic])[pipeline.events_topic]
    sent_at = {m.key(): m.timestamp()[1] for m in events}
    out = harness.outcomes(pipeline, set(sent_at), timeout=120)
    predictions = out[pipeline.predictions_topic]
    dead = out[pipeline.deadletter_topic]
    assert len(predictions) == 12_000 and len(dead) == 30_000, "one outcome per event"
    reasons = {dict(m.headers())["error.reason"] for m in dead}
    assert reasons <= {b"value_decode", b"invalid"}
    status = worker.status()
    assert status is not None and engine(status, pipeline.name)["alive"]
    assert worker.stop() == 0

    dead_at = sorted(m.timestamp()[1] for m in dead)
    start, end = dead_at[0], dead_at[-1]
    latency = {"before": [], "during": []}  # type: dict[str, list[int]]
    for m in predictions:
        sent = sent_at[m.key()]
        if sent < start:
            latency["before"].append(m.timestamp()[1] - sent)
        elif sent <= end:
            latency["during"].append(m.timestamp()[1] - sent)

    def p(values: list[int], q: float) -> int:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else -1

    print(
        f"\npoison pills: 30,000 dead-lettered in {(end - start) / 1000:.1f}s "
        f"({30_000 / max(end - start, 1) * 1000:,.0f}/s) beside 600 good events/s; good "
        f"events' latency p50/p99 {p(latency['before'], 0.5)}/{p(latency['before'], 0.99)} ms "
        f"before the burst, {p(latency['during'], 0.5)}/{p(latency['during'], 0.99)} ms "
        f"during it ({len(latency['during'])} events)"
    )
