"""``stream worker``: one process with a scoring engine per pipeline and the faust app."""

from __future__ import annotations

import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust

from stream.app import create_app, faust_datadir
from stream.background import sink_thread
from stream.deploy.control import ControlWatcher, ensure_control_topics, read_states
from stream.deploy.state import DeploymentState, initial_state
from stream.engine.deployer import Deployer
from stream.engine.runtime import build_runtime
from stream.engine.scorer import EngineSerdes
from stream.engine.scoring import ScoringEngine
from stream.logs import logging_config
from stream.metrics import WorkerMetrics
from stream.models.registry import ModelRegistry
from stream.serde import AvroSerde, JsonSerde, Serde, load_schema
from stream.serde.registry import schema_registry, writer_serde
from stream.services.topics import ensure_topics, wait_for_broker
from stream.settings import PipelineConfig, Settings, load_pipeline
from stream.sinks.clickhouse import (
    ClickHouse,
    ClickHouseSink,
    apply_retention,
    connect,
    migrate,
)

log = logging.getLogger(__name__)

# How long a thread may hold the interpreter lock while another waits for it. The
# engine thread lets go of it in every call into C (consume, ONNX, produce) and waits
# to take it back while the logger, the ClickHouse writer or faust's loops run Python:
# with Python's 5 ms, up to 5 ms a time, often several in a row.
SWITCH_INTERVAL_S = 0.001


def build_serdes(
    settings: Settings, pipeline: PipelineConfig, registry: Any = None
) -> EngineSerdes:
    events: Serde
    if pipeline.input.format == "json":
        events = JsonSerde()
    else:
        events = AvroSerde(load_schema(settings.schemas_dir, pipeline.input.schema_file), registry)
    return EngineSerdes(
        events=events,
        predictions=writer_serde(settings, "prediction.avsc", pipeline.predictions_topic, registry),
        review=writer_serde(settings, "review.avsc", pipeline.review_topic, registry),
    )


class Worker(faust.Worker):
    """faust's worker, for which a stop signal during start-up is a stop, not a failure.

    A SIGTERM while faust is still starting stops the services it is starting,
    and the start-up can then trip over what the stop cancelled (mode's
    stampede guard around topic creation sets the result of a future the stop
    cancelled: ``InvalidStateError``). The stop itself goes on as usual (the
    engines checkpoint); without this the process exited 1 for a stop it was
    asked for. And a worker that is not a terminal session: no start-up spinner.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """No terminal spinner: faust's, at WARNING and above, set the root logger to
        DEBUG to spin once per record, so every thread built a record for every debug
        call of every library (aiokafka's for each fetch) only for the handler to drop
        it, and the spinner's escape codes went into the worker's log."""
        self.spinner = None

    async def start(self) -> None:
        try:
            await super().start()
        except Exception as exc:
            # faust's own flag for "a signal came while starting" (it skips its ready banner).
            if not self._shutdown_immediately:
                raise
            log.warning("faust stopped while it was starting: %r", exc)


def _deployment(states: dict[str, DeploymentState], pipeline: PipelineConfig) -> DeploymentState:
    """The pipeline's state from ``stream.control``, or the pipeline file's model."""
    return states.get(pipeline.name) or initial_state(pipeline.name, pipeline.model)


def _open_clickhouse(settings: Settings) -> ClickHouse:
    clickhouse = connect(settings.dsn, settings.clickhouse_database)
    try:
        migrate(clickhouse, settings.migrations_dir)
        apply_retention(
            clickhouse, settings.clickhouse_retention_days, settings.clickhouse_log_retention_days
        )
    except BaseException:
        clickhouse.close()
        raise
    return clickhouse


def run_worker(settings: Settings, pipeline_files: list[Path]) -> None:
    """Check every setting and service, then run until stopped (SIGTERM / Ctrl-C)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    pipelines = [load_pipeline(path) for path in pipeline_files]
    kafka_config = settings.kafka_config()
    wait_for_broker(kafka_config)
    ensure_topics(kafka_config, pipelines, settings.replication_factor)
    ensure_control_topics(kafka_config, settings.replication_factor)
    states, control_offset = read_states(kafka_config)
    # Every ClickHouse call of the worker runs on this one thread, below scoring's priority.
    # The embedded engine is opened on it too, so the threads the engine starts for
    # inserts, merges and queries inherit that priority.
    writer = ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix="clickhouse-sink",
        initializer=sink_thread,
        initargs=(settings.clickhouse_nice,),
    )
    try:
        clickhouse = writer.submit(_open_clickhouse, settings).result()
    except BaseException:
        writer.shutdown()
        raise
    try:
        registry = ModelRegistry(settings.registry_path)
        schemas = schema_registry(settings)
        engines = [
            ScoringEngine(
                p,
                build_runtime(p, _deployment(states, p).current, registry),
                build_serdes(settings, p, schemas),
                kafka_config,
                stall_after=settings.stall_seconds,
            )
            for p in pipelines
        ]
        deployer = Deployer({e.pipeline.name: e for e in engines}, registry, kafka_config)
        watcher = ControlWatcher(
            kafka_config, control_offset, deployer.apply, settings.stall_seconds
        )
        faust_datadir(settings).parent.mkdir(parents=True, exist_ok=True)
        metrics = WorkerMetrics()
        sink = ClickHouseSink(clickhouse, observe=metrics.observe_write)
        app = create_app(settings, pipelines, engines, watcher, registry, sink, writer, metrics)
        for engine in engines:
            engine.start()
        watcher.start()
        try:
            worker = Worker(
                app,
                loglevel=settings.log_level,
                quiet=True,
                logging_config=logging_config(settings.log_level, settings.log_format),
            )
            worker.execute_from_commandline()
        finally:
            watcher.stop()
            for engine in engines:
                engine.stop()
    finally:
        writer.submit(clickhouse.close).result()
        writer.shutdown()
