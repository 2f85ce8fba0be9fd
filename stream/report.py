"""``stream report``: what the monitor wrote to ClickHouse, as a page and a terminal summary.

The page is one self-contained HTML file (charts as inline SVG, no scripts
or styles from elsewhere): latency percentiles over time, a drift heat map
per feature and window, quality by segment, the alert timeline, cost per
1,000 predictions, and the alerts themselves.
"""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client
from rich.console import Console
from rich.table import Table

from stream.errors import SettingsError

CHARTS = ("latency", "drift", "quality", "alerts")


def parse_since(text: str, now: datetime) -> datetime:
    """``30m``, ``24h``, ``7d`` before ``now``, or an ISO date or time (UTC unless it says)."""
    match = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return now - timedelta(**{unit: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SettingsError(
            "--since", f"expected 30m, 24h, 7d or an ISO time, got {text!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class ReportData:
    pipeline: str
    since: datetime
    until: datetime
    # (window_start, model_version, variant, events, p50, p95, p99)
    latency: list[tuple[Any, ...]] = field(default_factory=list)
    # (window_start, feature, psi, status) of the version with the most events
    drift: list[tuple[Any, ...]] = field(default_factory=list)
    drift_version: str = ""
    # (model_version, variant, segment, segment_value, labeled, predictions, accuracy)
    quality: list[tuple[Any, ...]] = field(default_factory=list)
    # (window_start, state, severity, metric, subject, message)
    alerts: list[tuple[Any, ...]] = field(default_factory=list)
    # (model, model_version, events, cpu_seconds_per_1k, mean_batch_size)
    cost: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(int(r[3]) for r in self.latency)


def pipelines(client: Client) -> list[str]:
    rows = client.query("SELECT DISTINCT pipeline FROM latency_windows ORDER BY pipeline")
    return [str(r[0]) for r in rows.result_rows]


def _rows(client: Client, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in client.query(sql, parameters=parameters).result_rows]


def load(client: Client, pipeline: str, since: datetime, until: datetime) -> ReportData:
    p: dict[str, Any] = {"p": pipeline, "since": since, "until": until}
    span = (
        "pipeline = {p:String} AND window_start >= {since:DateTime64(3, 'UTC')} "
        "AND window_start < {until:DateTime64(3, 'UTC')}"
    )
    data = ReportData(pipeline, since, until)
    data.latency = _rows(
        client,
        "SELECT window_start, model_version, variant, count, latency_p50_ms, latency_p95_ms, "
        f"latency_p99_ms FROM latency_windows FINAL WHERE {span} AND count > 0 "
        "ORDER BY window_start, model_version",
        p,
    )
    top = _rows(
        client,
        f"SELECT model_version FROM latency_windows FINAL WHERE {span} "
        "GROUP BY model_version ORDER BY sum(count) DESC LIMIT 1",
        p,
    )
    if top:
        data.drift_version = str(top[0][0])
        data.drift = _rows(
            client,
            "SELECT window_start, feature, psi, status FROM drift_windows FINAL "
            f"WHERE {span} AND model_version = {{v:String}} ORDER BY window_start, feature",
            {**p, "v": data.drift_version},
        )
    data.quality = _rows(
        client,
        "SELECT model_version, variant, segment, segment_value, sum(labeled), "
        "sum(predictions), sum(accuracy * labeled) / sum(labeled) FROM quality_windows FINAL "
        f"WHERE {span} GROUP BY model_version, variant, segment, segment_value "
        "HAVING sum(labeled) > 0 ORDER BY model_version, variant, segment, segment_value",
        p,
    )
    data.alerts = _rows(
        client,
        "SELECT window_start, state, severity, metric, subject, message FROM alerts FINAL "
        f"WHERE {span} ORDER BY window_start, alert_id",
        p,
    )
    data.cost = _rows(
        client,
        "SELECT model, model_version, sum(count) AS events, 1000 * sum(cpu_seconds) / events, "
        f"events / sum(model_runs) FROM latency_windows FINAL WHERE {span} AND count > 0 "
        "GROUP BY model, model_version ORDER BY model, model_version",
        p,
    )
    return data


def summary(data: ReportData, console: Console) -> None:
    """The terse terminal version."""
    if not data.latency:
        console.print(f"{data.pipeline}: no windows between {data.since:%Y-%m-%d %H:%M} and "
                      f"{data.until:%Y-%m-%d %H:%M} UTC")  # fmt: skip
        return
    table = Table(title=f"{data.pipeline}, {data.since:%Y-%m-%d %H:%M} to {data.until:%H:%M} UTC")
    table.add_column("")
    table.add_column("")
    windows = len({r[0] for r in data.latency})
    table.add_row("scored events", f"{data.events:,} in {windows} windows")
    p99 = [float(r[6]) for r in data.latency]
    table.add_row("p99 latency per window", f"{min(p99):,.1f} to {max(p99):,.1f} ms")
    flagged = sorted({str(r[1]) for r in data.drift if r[3] in ("warn", "alert")})
    table.add_row(
        f"drift (v{data.drift_version})", ", ".join(flagged) if flagged else "none flagged"
    )
    overall = [r for r in data.quality if r[2] == "all"]
    for r in overall:
        table.add_row(
            f"accuracy {r[0]} ({r[1]})", f"{float(r[6]):.3f} on {int(r[4]):,} labeled events"
        )
    if not overall:
        table.add_row("quality", "no labels in this period")
    for model, version, _, per_1k, _ in data.cost:
        table.add_row(f"cost {model}:{version}", f"{float(per_1k):.3f} CPU s per 1,000 predictions")
    firing = [a for a in data.alerts if a[1] == "firing"]
    table.add_row(
        "alerts fired", f"{len(firing)} ({sum(a[2] == 'critical' for a in firing)} critical)"
    )
    console.print(table)


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _charts(data: ReportData) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts: dict[str, str] = {}
    if data.latency:
        fig, ax = plt.subplots(figsize=(9, 3.2))
        for version in sorted({str(r[1]) for r in data.latency}):
            rows = [r for r in data.latency if str(r[1]) == version]
            times = [r[0] for r in rows]
            for i, name in ((4, "p50"), (5, "p95"), (6, "p99")):
                ax.plot(times, [float(r[i]) for r in rows], label=f"v{version} {name}")
        ax.set_ylabel("end-to-end latency (ms)")
        ax.legend(fontsize=7, ncol=3)
        fig.autofmt_xdate()
        charts["latency"] = _svg(fig)
        plt.close(fig)
    if data.drift:
        features = sorted({str(r[1]) for r in data.drift})
        times = sorted({r[0] for r in data.drift})
        grid = [[0.0] * len(times) for _ in features]
        for start, feature, psi, _ in data.drift:
            grid[features.index(str(feature))][times.index(start)] = float(psi)
        fig, ax = plt.subplots(figsize=(9, 0.28 * len(features) + 1.2))
        image = ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0.0, vmax=0.5)
        ax.set_yticks(range(len(features)), features, fontsize=7)
        step = max(len(times) // 8, 1)
        ax.set_xticks(range(0, len(times), step), [f"{t:%H:%M}" for t in times[::step]], fontsize=7)
        fig.colorbar(image, ax=ax, label="PSI")
        charts["drift"] = _svg(fig)
        plt.close(fig)
    if data.quality:
        labels = [f"v{r[0]} {r[1]} {r[2]}={r[3]}" if r[2] != "all" else f"v{r[0]} {r[1]} all"
                  for r in data.quality]  # fmt: skip
        fig, ax = plt.subplots(figsize=(9, 0.3 * len(labels) + 1.0))
        ax.barh(labels, [float(r[6]) for r in data.quality], color="#4a7fb5")
        ax.set_xlim(0, 1)
        ax.set_xlabel("accuracy (labeled events)")
        ax.tick_params(axis="y", labelsize=7)
        charts["quality"] = _svg(fig)
        plt.close(fig)
    if data.alerts:
        subjects = sorted({f"{r[3]} {r[4]}".strip() for r in data.alerts})
        fig, ax = plt.subplots(figsize=(9, 0.3 * len(subjects) + 1.2))
        colors = {"critical": "#c0392b", "warning": "#e67e22"}
        for start, state, severity, metric, subject, _ in data.alerts:
            y = subjects.index(f"{metric} {subject}".strip())
            color = "#27ae60" if state == "resolved" else colors.get(str(severity), "#7f8c8d")
            ax.scatter([start], [y], color=color, marker="o" if state != "resolved" else "s")
        ax.set_yticks(range(len(subjects)), subjects, fontsize=7)
        fig.autofmt_xdate()
        charts["alerts"] = _svg(fig)
        plt.close(fig)
    return charts


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 70rem; }}
figure {{ margin: 1rem 0 2rem; }} figure svg {{ max-width: 100%; height: auto; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }}
.none {{ color: #777; }}
</style></head><body>
<h1>{title}</h1>
<p>{span}. Read from ClickHouse: latency_windows, drift_windows, quality_windows, alerts.</p>
{sections}
<script>
// Marks each chart with the size the browser drew it at (checked by the test suite).
window.addEventListener("load", () => {{
  for (const figure of document.querySelectorAll("figure.chart")) {{
    const box = figure.querySelector("svg").getBoundingClientRect();
    figure.dataset.rendered = Math.round(box.width) + "x" + Math.round(box.height);
  }}
}});
</script>
</body></html>
"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render(data: ReportData) -> str:
    charts = _charts(data)
    titles = {
        "latency": "Latency percentiles per window",
        "drift": f"Drift heat map: PSI per feature and window (v{data.drift_version})",
        "quality": "Quality by segment (accuracy of labeled events)",
        "alerts": "Alerts: fired (orange, red) and resolved (green)",
    }
    sections = []
    for name in CHARTS:
        sections.append(f"<h2>{html.escape(titles[name])}</h2>")
        if name in charts:
            sections.append(f'<figure class="chart" id="chart-{name}">{charts[name]}</figure>')
        else:
            sections.append('<p class="none">nothing in this period</p>')
    sections.append("<h2>Cost per 1,000 predictions</h2>")
    sections.append(
        _table(
            ["model", "version", "predictions", "CPU seconds per 1,000", "mean batch size"],
            [
                [m, v, f"{int(n):,}", f"{float(c):.3f}", f"{float(b):.0f}"]
                for m, v, n, c, b in data.cost
            ],
        )
    )
    sections.append("<h2>Alert records</h2>")
    sections.append(
        _table(
            ["window", "state", "severity", "message"],
            [[f"{a[0]:%Y-%m-%d %H:%M:%S}", a[1], a[2], a[5]] for a in data.alerts],
        )
    )
    return PAGE.format(
        title=html.escape(f"stream report: {data.pipeline}"),
        span=html.escape(
            f"{data.since:%Y-%m-%d %H:%M} to {data.until:%Y-%m-%d %H:%M} UTC, "
            f"{data.events:,} scored events"
        ),
        sections="\n".join(sections),
    )
