"""docs/queries.md and `stream report` against tables written by the pipeline's own code."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from rich.console import Console

from stream import report
from stream.demo.data import FEATURES, generate
from stream.deploy.compare import compare_variants
from stream.deploy.control import MODEL_EVENT_COLUMNS, model_event, model_event_row
from stream.models.manifest import ModelManifest
from stream.models.registry import ModelRegistry
from stream.monitor.alerts import ALERT_COLUMNS, alert_row, track, window_facts
from stream.monitor.drift import feature_drift
from stream.monitor.histograms import HistogramLayout, latency_quantile
from stream.monitor.windows import (
    DRIFT_COLUMNS,
    LATENCY_COLUMNS,
    ClosedWindow,
    drift_rows,
    latency_row,
)
from stream.quality import logbatch
from stream.quality.job import QualityJob
from stream.quality.rows import FEEDBACK_COLUMNS, feedback_row
from stream.retrain.gate import GateResult, GateRow
from stream.retrain.job import write_validations
from stream.settings import PROJECT_ROOT, PipelineConfig, Settings
from stream.sinks.clickhouse import ClickHouse, ClickHouseSink, connect, migrate

pytestmark = pytest.mark.integration

QUERIES = PROJECT_ROOT / "docs" / "queries.md"
PIPELINE = PipelineConfig.model_validate(
    {
        "name": "payments",
        "model": {"name": "payments-fraud", "version": "1"},
        "monitor": {"window_seconds": 60},
        "quality": {"segments": ["channel"]},
    }
)
EVENTS_PER_WINDOW = 1000
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def examples() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", QUERIES.read_text(), flags=re.S)


def fill(
    ch: ClickHouse, trained_model: tuple[bytes, ModelManifest], registry: ModelRegistry
) -> None:
    """Four windows of v1 and a v2 challenger (clean, amount drifted twice, clean; unseen
    countries in the last two), their drift and alerts, a labeled prediction log, quality and
    model events."""
    onnx_bytes, manifest = trained_model
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    fill_values = np.asarray([f.fill for f in manifest.features])
    layout = HistogramLayout.of(manifest)
    rng = np.random.default_rng(5)
    now = datetime.now(UTC)
    first = int((now - timedelta(minutes=10)).timestamp()) // 60 * 60_000
    sink = ClickHouseSink(ch)
    log = logbatch.PredictionLogBatch(PIPELINE)
    open_alerts: dict[str, Any] = {}
    labels = []
    country = manifest.feature_names.index("country")
    for w, drift in enumerate([None, {"amount": 1.0}, {"amount": 1.0}, None]):
        start = first + w * 60_000
        for version, variant in (("1", "champion"), ("2", "challenger")):
            cols, truth = generate(EVENTS_PER_WINDOW, rng, drift)
            raw = np.column_stack([cols[f] for f in FEATURES])
            x = np.where(np.isnan(raw), fill_values, raw).astype(np.float32)
            score = session.run(None, {"features": x})[-1][:, 1]
            confidence = np.maximum(score, 1 - score)
            predicted = (score >= 0.5).astype(np.int64)
            latency = rng.exponential(30.0, EVENTS_PER_WINDOW)
            stats = layout.empty()
            layout.fold(stats, raw, latency, 0.02, predicted, score, confidence, 7)
            stats.cpu_seconds = 0.4
            if w >= 2:
                stats.unseen[country] = 120
            window = ClosedWindow("payments", manifest.name, version, start, start + 60_000, 0,
                                  stats, variant)  # fmt: skip
            drift_out = feature_drift(manifest, stats, PIPELINE.monitor)
            sink.insert("latency_windows", LATENCY_COLUMNS, [latency_row(window, manifest, now)])
            sink.insert("drift_windows", DRIFT_COLUMNS, drift_rows(window, drift_out, now))
            if version == "1":
                facts = window_facts(
                    "payments", manifest.name, version, variant, start, start + 60_000, drift_out,
                    stats.count, latency_quantile(stats.latency, 0.99), PIPELINE.monitor,
                )  # fmt: skip
                open_alerts, alerts = track(open_alerts, facts)
                rows = [alert_row(a.record()) for a in alerts]
                sink.insert("alerts", ALERT_COLUMNS, rows)
            ids = [f"w{w}-v{version}-{i}" for i in range(EVENTS_PER_WINDOW)]
            names = ["legit", "fraud"]
            channel = ["web", "app", "pos"]
            log.add(
                manifest.name, version, [i.encode() for i in ids], ids,
                [variant] * EVENTS_PER_WINDOW, [names[p] for p in predicted], score, confidence,
                np.full(EVENTS_PER_WINDOW, start + 1_000), start + 1_500, latency,
                manifest.feature_names, raw,
                [{"channel": channel[int(c)]} for c in cols["channel"]],
            )  # fmt: skip
            for i in range(0, EVENTS_PER_WINDOW, 2):
                record = {"event_id": ids[i], "label": names[truth[i]], "label_time": start + 5_000}
                labels.append(feedback_row("payments", record, 0, now))
    for message in log.drain():
        rows = logbatch.decode([message]).num_rows
        sink.insert_arrow("prediction_log", logbatch.COLUMNS, message, rows)
    sink.insert("feedback", FEEDBACK_COLUMNS, labels)
    QualityJob(PIPELINE, registry).run(ch.client, now)
    events = [
        model_event(
            "payments", 0, "host:1", "applied", "payments-fraud:1 100%", "payments-fraud:1"
        ),
        model_event("payments", 1, "host:1", "applied", "90/10 split", "payments-fraud:1,2"),
        model_event(
            "payments", 1, "", "changed", "deploy payments-fraud:2 for 10% of traffic",
            "payments-fraud:1 90%, payments-fraud:2 10%", "alice@host", "retrained on drift",
        ),
    ]  # fmt: skip
    sink.insert("model_events", MODEL_EVENT_COLUMNS, [model_event_row(e) for e in events])
    row = GateRow("accuracy", "all", "", 2000, 0.91, 0.88, 0.03, "gain >= 0", True)
    gate = GateResult("accuracy", [row], 2000)
    candidate = {"version": "2", "validation": gate.verdict("payments-fraud:1")}
    write_validations(ch.client, "payments", manifest.model_copy(update=candidate), gate)


@pytest.fixture(scope="module")
def filled(
    clickhouse_dsn: str, trained_model: tuple[bytes, ModelManifest], registry: ModelRegistry
) -> Iterator[ClickHouse]:
    ch = connect(clickhouse_dsn, "queries_doc")
    try:
        migrate(ch, Settings().migrations_dir)
        fill(ch, trained_model, registry)
        yield ch
    finally:
        ch.close()


def test_the_page_has_the_examples_it_promises() -> None:
    assert len(examples()) >= 10


@pytest.mark.parametrize("sql", examples(), ids=lambda sql: sql.split("\n")[0][:40])
def test_every_example_runs_and_answers(filled: ClickHouse, sql: str) -> None:
    result = filled.client.query(sql)
    assert result.result_rows, "the example returns rows on a pipeline's tables"


def test_the_examples_see_what_was_written(filled: ClickHouse) -> None:
    client = filled.client
    drifting = client.query(examples()[0]).result_rows
    assert {row[2] for row in drifting} == {"country"}, "the newest window: unseen countries"
    ((opened, resolved),) = client.query(
        "SELECT countIf(state = 'firing'), countIf(state = 'resolved') FROM alerts FINAL "
        "WHERE metric = 'drift' AND subject = 'amount'"
    ).result_rows
    assert (opened, resolved) == (1, 1), "amount drifted in windows 2 and 3, back in window 4"
    ((labeled, predictions),) = client.query(
        "SELECT sum(labeled), sum(predictions) FROM quality_windows FINAL WHERE segment = 'all'"
    ).result_rows
    assert (labeled, predictions) == (4 * EVENTS_PER_WINDOW, 8 * EVENTS_PER_WINDOW)


def chromium() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name)) is not None), None)
    if found is None:
        if os.environ.get("STREAM_REQUIRE_TOOLS"):
            pytest.fail(f"no headless browser: install one of {BROWSERS} (Debian: chromium)")
        pytest.skip(f"no headless browser ({', '.join(BROWSERS)}); .ci/run installs chromium")
    return found


def test_the_report_page_draws_every_chart_in_a_browser(filled: ClickHouse, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    data = report.load(filled.client, "payments", now - timedelta(hours=1), now)
    page = tmp_path / "report.html"
    page.write_text(report.render(data))
    assert "http" not in page.read_text().split("<body>")[0], "self-contained: nothing fetched"
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    drawn = dict(re.findall(r'id="chart-(\w+)"[^>]*data-rendered="(\d+x\d+)"', result.stdout))
    drawn.update(re.findall(r'data-rendered="(\d+x\d+)"[^>]*id="chart-(\w+)"', result.stdout)[::-1])
    sizes = {name: tuple(int(v) for v in size.split("x")) for name, size in drawn.items()}
    assert set(sizes) == set(report.CHARTS), result.stdout[:500]
    assert all(w > 100 and h > 50 for w, h in sizes.values()), sizes

    out = io.StringIO()
    report.summary(data, Console(file=out, width=120))
    text = out.getvalue()
    assert f"{8 * EVENTS_PER_WINDOW:,} in 4 windows" in text
    assert "amount" in text and "accuracy 1 (champion)" in text
    assert "CPU s per 1,000 predictions" in text


def test_every_column_of_every_table_says_what_it_is(filled: ClickHouse) -> None:
    silent = filled.client.query(
        "SELECT table, name FROM system.columns WHERE database = currentDatabase() "
        "AND comment = '' AND table IN (SELECT name FROM system.tables "
        "WHERE database = currentDatabase() AND engine != 'View')"
    ).result_rows
    assert silent == []
    views = filled.client.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND engine = 'View' AND comment = ''"
    ).result_rows
    assert views == []


def test_compare_shows_quality_per_version_once_labels_came(filled: ClickHouse) -> None:
    versions = {r.version: r for r in compare_variants(filled.client, "payments", 60)}
    assert set(versions) == {"1", "2"}
    for summary in versions.values():
        assert summary.labeled == 2 * EVENTS_PER_WINDOW  # every other event of four windows
        assert 0.5 < summary.accuracy <= 1.0 and 0.0 <= summary.brier < 0.25
        assert summary.cpu_seconds_per_1k == pytest.approx(0.4)


def test_accuracy_below_its_bound_raises_one_alert_per_segment(
    filled: ClickHouse, registry: ModelRegistry
) -> None:
    strict = PIPELINE.with_overrides(
        quality={"segments": ["channel"], "min_accuracy": 0.99, "min_labels": 100}
    )
    job = QualityJob(strict, registry)
    done = job.run(filled.client, datetime.now(UTC))
    firing = [a for a in done.alerts if a.state == "firing"]
    conditions = {(a.model_version, a.subject) for a in firing}
    assert {("1", "all events"), ("2", "all events")} <= conditions
    assert len(firing) == len(conditions), "each condition fires once over the four windows"
    alert = next(a for a in firing if (a.model_version, a.subject) == ("1", "all events"))
    assert alert.message.startswith("Accuracy for all events was 0.9")
    assert "(below 0.990) on 500 labeled events for payments-fraud v1" in alert.message
    job.commit(done)
    assert job.run(filled.client, datetime.now(UTC)).alerts == [], "each window judged once"


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, SQL) of every ClickHouse panel of the Grafana dashboards."""
    out = []
    for path in sorted((PROJECT_ROOT / "ops" / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            if panel["datasource"]["uid"] == "clickhouse":
                out += [(panel["title"], t["rawSql"]) for t in panel["targets"]]
    return out


@pytest.mark.parametrize(("title", "sql"), dashboard_queries(), ids=lambda v: v[:40])
def test_every_dashboard_panel_query_runs(filled: ClickHouse, title: str, sql: str) -> None:
    # What Grafana's ClickHouse plugin puts in place of the macros and the variable.
    sql = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= now() - INTERVAL 6 HOUR", sql)
    sql = sql.replace("${pipeline}", "payments")
    assert filled.client.query(sql).result_rows, f"{title}: no rows on a pipeline's tables"
