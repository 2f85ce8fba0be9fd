"""``create_app``: the faust app of a worker process, with its scoring engines.

Nothing here runs at import time; only the CLI calls ``create_app``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import faust
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST

from stream.background import BackgroundLoop
from stream.deploy.control import (
    EVENTS_TOPIC,
    MODEL_EVENT_COLUMNS,
    ControlWatcher,
    model_event_row,
    worker_id,
)
from stream.engine.scoring import ScoringEngine
from stream.metrics import WorkerCollector, WorkerMetrics
from stream.models.registry import ModelRegistry
from stream.monitor.agent import MonitorAgent
from stream.monitor.alerts import ALERT_COLUMNS, alert_row
from stream.quality.logger import PredictionLogger
from stream.retrain.runner import RetrainJobs
from stream.settings import PipelineConfig, Settings
from stream.sinks.clickhouse import ClickHouseSink
from stream.sinks.copier import CopyRoute, TopicCopier

log = logging.getLogger(__name__)


class EngineService(Service):
    """Watches the scoring engines for as long as the faust app runs, and stops them with it.

    The engines start before the app (scoring does not wait for faust's
    rebalances); this service starts once faust has (an app task: after its
    tables are recovered), and ``running`` says so. An engine or the control
    watcher that failed, ended or stalled, or a monitor agent gone silent,
    crashes the app, so the worker process exits non-zero and its supervisor
    restarts it.
    """

    def __init__(
        self,
        engines: list[ScoringEngine],
        watcher: ControlWatcher,
        monitors: list[MonitorAgent],
        stall_after: float,
        loggers: list[PredictionLogger] | None = None,
        jobs: list[RetrainJobs] | None = None,
        copier: TopicCopier | None = None,
        **kwargs: Any,
    ) -> None:
        self.engines = engines
        # Loops that start with the faust app and stop with it, after the engines.
        self.followers: list[BackgroundLoop] = [
            *(loggers or []), *(jobs or []), *([copier] if copier else [])
        ]  # fmt: skip
        self.loops: list[BackgroundLoop] = [*engines, watcher, *self.followers]
        self.monitors = monitors
        self.stall_after = stall_after
        self.running = False
        super().__init__(**kwargs)

    def troubles(self) -> list[tuple[str, BaseException | None]]:
        """What cannot be trusted to make progress: failed, ended or stuck loops and agents."""
        found = [(t, loop.failure) for loop in self.loops if (t := loop.trouble()) is not None]
        found += [
            (t, None) for m in self.monitors if (t := m.trouble(self.stall_after)) is not None
        ]
        return found

    async def on_start(self) -> None:
        for loop in self.followers:
            loop.start()
        # A full collection walks every object the collector tracks, and the start-up's
        # (faust, models, clients, about 190,000) live as long as the process: under load
        # that stopped every thread for ~100 ms every few seconds, the p99 of end-to-end
        # latency. Frozen, they stay out of all later collections (< 1 ms each).
        gc.collect()
        gc.freeze()
        self.running = True

    def ready(self) -> bool:
        """The worker has started (faust too) and every engine has its partitions."""
        return self.running and all(e.alive and e.ready.is_set() for e in self.engines)

    async def on_stop(self) -> None:
        loop = asyncio.get_running_loop()
        for engine in self.engines:
            await loop.run_in_executor(None, engine.stop)
        for background in self.followers:
            await loop.run_in_executor(None, background.stop)

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            troubles = self.troubles()
            if troubles:
                trouble, failure = troubles[0]
                log.critical("%s; stopping the worker so that it is restarted", trouble)
                await self.crash(failure or RuntimeError(trouble))
                return
            await self.sleep(0.5)


def faust_broker_url(bootstrap: str) -> str:
    return ";".join(
        f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip()
    )


def faust_datadir(settings: Settings) -> Path:
    return settings.home / "faust" / f"{settings.app_id}-data"


def create_app(
    settings: Settings,
    pipelines: list[PipelineConfig],
    engines: list[ScoringEngine],
    watcher: ControlWatcher,
    registry: ModelRegistry,
    sink: ClickHouseSink,
    writer: ThreadPoolExecutor,
    metrics: WorkerMetrics | None = None,
) -> faust.App:
    """Build the worker's faust app: monitor agents, engines, and the status pages.

    ``writer`` is the worker's one thread for ClickHouse calls."""
    app = faust.App(
        settings.app_id,
        broker=faust_broker_url(settings.kafka_bootstrap or ""),
        store=f"{settings.table_store}://",
        datadir=str(faust_datadir(settings)),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        topic_replication_factor=settings.replication_factor,
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        # A crashed worker's monitor partitions move on after 10 s, not faust's default 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
    )
    kafka_config = settings.kafka_config()
    # What workers did with deployment revisions, the steps people and policies took,
    # and each pipeline's alerts, into ClickHouse.
    copier = TopicCopier(
        kafka_config,
        f"{settings.app_id}.copier",
        worker_id(),
        [
            CopyRoute(EVENTS_TOPIC, "model_events", MODEL_EVENT_COLUMNS, model_event_row),
            *(CopyRoute(p.alerts_topic, "alerts", ALERT_COLUMNS, alert_row) for p in pipelines),
        ],
        sink,
        writer,
        settings.stall_seconds,
    )
    monitors = {
        p.name: MonitorAgent(app, p, registry, sink, writer, kafka_config, copier)
        for p in pipelines
    }
    loggers = {
        e.pipeline.name: PredictionLogger(
            e.pipeline, kafka_config, sink, writer, e.worker_id,
            settings.stall_seconds,
        )
        for e in engines
        if e.pipeline.quality.log_sample_rate > 0
    }  # fmt: skip
    # Workers with retrain jobs on run retraining requests and the pipelines' triggers.
    jobs = {
        p.name: RetrainJobs(p, kafka_config, registry, sink, writer, settings.stall_seconds)
        for p in pipelines
        if settings.retrain_jobs
    }
    engine_service = EngineService(
        engines,
        watcher,
        list(monitors.values()),
        settings.stall_seconds,
        list(loggers.values()),
        list(jobs.values()),
        copier,
        loop=None,
    )

    @app.task
    async def start_engines() -> None:
        await app.add_runtime_dependency(engine_service)

    @app.page("/stream/status/")
    async def status(web: Any, request: Any) -> Any:
        return web.json(
            {
                "ready": engine_service.ready(),
                "pipelines": {
                    e.pipeline.name: {
                        "engine": {
                            **asdict(e.counters),
                            "alive": e.alive,
                            "ready": e.ready.is_set(),
                        },
                        "monitor": monitors[e.pipeline.name].status(),
                        "logger": (
                            loggers[e.pipeline.name].status()
                            if e.pipeline.name in loggers
                            else None
                        ),
                        "retrain": (
                            jobs[e.pipeline.name].status() if e.pipeline.name in jobs else None
                        ),
                    }
                    for e in engines
                },
                "clickhouse": sink.status(),
                "copier": copier.status(),
            }
        )

    metrics = metrics or WorkerMetrics()
    metrics.watch(WorkerCollector(lambda: engines, monitors.values, loggers.values, jobs.values))

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        """Prometheus metrics (text exposition format)."""
        return web.bytes(metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/stream/health/")
    async def health(web: Any, request: Any) -> Any:
        """Liveness: no loop or agent in trouble. A ClickHouse outage degrades, it does not kill."""
        troubles = [trouble for trouble, _ in engine_service.troubles()]
        degraded = []
        if not sink.available:
            degraded.append(f"ClickHouse does not take writes: {sink.last_error}")
        degraded += [
            f"monitor of {name} is not reading partials: {sum(m.unwritten.values())} "
            "closed windows wait for ClickHouse"
            for name, m in monitors.items()
            if m.paused_since is not None
        ]
        body = {"healthy": not troubles, "troubles": troubles, "degraded": degraded}
        return web.json(body, status=503 if troubles else 200)

    @app.page("/stream/ready/")
    async def ready(web: Any, request: Any) -> Any:
        """Readiness: the worker has started and every engine has its partitions; with lags."""
        is_ready = engine_service.ready()
        body = {
            "ready": is_ready,
            "lag": {e.pipeline.name: e.counters.lag for e in engines},
        }
        return web.json(body, status=200 if is_ready else 503)

    return app
