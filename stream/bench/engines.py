"""One timed run of one engine over the prepared events topic.

Every engine reads the same topic from the beginning with a consumer group
of its own and writes one output per event; each runs as a process of its
own, so CPU time and peak RSS are its alone. The pipeline runs as a real
``stream worker`` with every feature on; the others are the scripts in
``bench/`` (the bare loop, Quix Streams, a faust agent).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from stream.errors import ServiceError
from stream.produce import EventSource, PacedProducer, event_serde
from stream.services.worker_process import WorkerProcess
from stream.settings import PROJECT_ROOT, PipelineConfig, Settings, embedded_dsn

PEERS_DIR = PROJECT_ROOT / "bench"
QUIX_REQUIREMENT = "quixstreams==3.28.1"
ENGINES = ("pipeline", "pipeline-eos", "pipeline-nolog", "bare", "quix", "faust")
# What each pipeline engine changes in the bench pipeline.
PIPELINE_VARIANTS: dict[str, dict[str, Any]] = {
    "pipeline": {},
    "pipeline-eos": {"processing_guarantee": "exactly_once"},
    # The cost of the prediction log that quality from labels reads.
    "pipeline-nolog": {"quality": {"log_sample_rate": 0.0}},
}
TITLES = {
    "pipeline": "this pipeline, every feature on",
    "pipeline-eos": "this pipeline, exactly-once",
    "pipeline-nolog": "this pipeline, prediction log off",
    "bare": "bare confluent-kafka loop",
    "quix": "Quix Streams, sdf.apply per event",
    "faust": "faust agent, per event",
}


# A CPU figure over fewer events than this says more about start-up than about scoring.
MIN_CPU_EVENTS = 1000


@dataclass(frozen=True)
class RunResult:
    events: int
    seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    # False: the pipeline had scored over half its events when its worker was fully up, so
    # the run is timed from its partition assignment, the worker's start-up included, and
    # its CPU seconds (mostly the catching up of what was scored while faust started) say
    # nothing about scoring.
    steady: bool = True
    # Events the pipeline had scored when its worker was fully up; None for the peers.
    done_at_start: int | None = None
    # Seconds the prediction log still needed after the last event was scored
    # (0: it kept up); None where it is off.
    log_behind_s: float | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_1k(self) -> float | None:
        """CPU seconds per 1,000 events; None when the run cannot say (too few, not steady)."""
        if not self.steady or self.events < MIN_CPU_EVENTS:
            return None
        return self.cpu_seconds / self.events * 1000

    def as_dict(self) -> dict[str, float | None]:
        return {
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
            "cpu_s_per_1k": None if self.cpu_per_1k is None else round(self.cpu_per_1k, 4),
            "peak_rss_mib": round(self.peak_rss_mib, 1),
            **({} if self.log_behind_s is None else {"log_behind_s": round(self.log_behind_s, 2)}),
            **({} if self.done_at_start is None else {"done_at_start": self.done_at_start}),
            "steady": self.steady,
        }


@dataclass(frozen=True)
class Workbench:
    """What every run shares: the broker, the prepared topic, files and folders."""

    bootstrap: str
    folder: Path
    pipeline: PipelineConfig
    pipeline_files: dict[str, Path]  # engine → pipeline file (at-least-once, exactly-once)
    registry: Path
    spec: Path
    events: int
    batch: int
    timeout: float
    features: int
    schemas_dir: Path  # the project's schemas, plus the event schema of --features N
    source: EventSource | None  # the events of --features N; None: the demo's payments
    # A ClickHouse server (http(s):// DSN) every worker writes to; None: an embedded
    # engine in each worker's own folder, whatever embedded DSN the environment names.
    clickhouse_server: str | None = None

    def output_topic(self, engine: str) -> str:
        return f"{self.pipeline.name}.bench-{engine}"

    def producer(
        self, settings: Settings, pipeline: PipelineConfig, topic: str | None = None
    ) -> PacedProducer:
        """The load generator for ``pipeline``'s events, to its topic or to ``topic``."""
        kafka_config = {"bootstrap.servers": self.bootstrap}
        serde = event_serde(settings, pipeline)
        return PacedProducer(kafka_config, topic or pipeline.events_topic, serde, self.source)

    def worker(self, pipeline_file: Path, home: Path, app_id: str | None = None) -> WorkerProcess:
        """A `stream worker` with a state folder of its own (ClickHouse: ``worker_env``), not
        started: it is started inside the ``try`` that stops it, so that a stop signal that
        comes between the two does not leave it running."""
        env = self.worker_env(home, app_id)
        return WorkerProcess(pipeline_file, env, home / "worker.log")

    def worker_env(self, home: Path, app_id: str | None = None) -> dict[str, str]:
        """A worker's settings. Workers run side by side in scaling mode, so each embedded
        engine gets a folder of its own (the engine allows one process per folder)."""
        return {
            "STREAM_KAFKA_BOOTSTRAP": self.bootstrap,
            "STREAM_HOME": str(home),
            "STREAM_CLICKHOUSE_DSN": self.clickhouse_server or embedded_dsn(home),
            "STREAM_REGISTRY": str(self.registry),
            "STREAM_SCHEMAS_DIR": str(self.schemas_dir),
            "STREAM_APP_ID": app_id or f"bench-{uuid.uuid4().hex[:8]}",
            "STREAM_LOG_LEVEL": "WARNING",
        }


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_pipeline(bench: Workbench, engine: str, run: int) -> RunResult:
    """A `stream worker`, timed by its status page once it is fully up, to its last event."""
    group = bench.pipeline.engine_group
    _delete_groups(bench.bootstrap, [group])  # read the topic from the start again
    _start_log_group(bench)
    worker = bench.worker(bench.pipeline_files[engine], bench.folder / f"{engine}-{run}")
    try:
        pid = worker.start().pid
        assert pid is not None
        # (time, CPU seconds, events done) when the worker is fully up: engine assigned and
        # the faust app past its start-up and rebalance (its monitor owns its topic).
        first: tuple[float, float, int] | None = None
        deadline = time.monotonic() + bench.timeout
        while True:
            status = worker.wait_until(lambda s: True, bench.timeout, "status")
            pipeline = status["pipelines"][bench.pipeline.name]
            counters = pipeline["engine"]
            done = int(counters["predictions"]) + int(counters["dead_letters"])
            if first is None and counters["ready"] and pipeline["monitor"]["owns_topic"]:
                first = (time.time(), _cpu_seconds(pid), done)
            if done >= bench.events and first is not None:
                finished, cpu = time.time(), _cpu_seconds(pid)
                peak = worker.memory_mib()["peak"]
                behind = _log_catch_up(worker, bench, pipeline["logger"], finished)
                break
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{engine}: {done} of {bench.events} events after {bench.timeout:.0f}s; "
                    f"see {worker.log_path}"
                )
            time.sleep(0.05)
    finally:
        code = worker.stop()
    if code not in (0, None):
        raise ServiceError(f"{engine}: worker exited with code {code}; see {worker.log_path}")
    if int(counters["dead_letters"]):
        # Every benchmark event is valid: a dead letter means the run measured something else.
        raise ServiceError(
            f"{engine}: {counters['dead_letters']} of {bench.events} events were dead letters; "
            f"see {worker.log_path}"
        )
    started, cpu_started, done_then = first
    if done_then < bench.events // 2:
        # Steady state, as the peers are measured from their first event: the engine
        # starts before the faust app, which takes CPU while it boots.
        return RunResult(
            bench.events - done_then, finished - started, cpu - cpu_started, peak,
            log_behind_s=behind, done_at_start=done_then,
        )  # fmt: skip
    # A run the engine mostly finished while the app booted: time it from the partition
    # assignment, and say so (the report asks for more events).
    return RunResult(
        bench.events,
        finished - float(counters["assigned_at"]),
        cpu - cpu_started,
        peak,
        log_behind_s=behind,
        steady=False,
        done_at_start=done_then,
    )


def run_peer(bench: Workbench, engine: str, python: str, run: int) -> RunResult:
    """One of the scripts in ``bench/``; it reports its own timing as one JSON line."""
    log = bench.folder / f"{engine}-{run}.log"
    command = peer_command(
        bench, engine, python, bench.pipeline.events_topic, bench.output_topic(engine),
        f"bench-{engine}-{uuid.uuid4().hex[:8]}", bench.events,
    )  # fmt: skip
    with log.open("wb") as err:
        try:
            done = subprocess.run(
                command, cwd=peer_home(bench, engine, str(run)), stdout=subprocess.PIPE,
                stderr=err, timeout=bench.timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ServiceError(
                f"{engine}: no result after {bench.timeout:.0f}s; see {log}"
            ) from None
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if not lines:
        raise ServiceError(f"{engine}: exited with code {done.returncode}; see {log}")
    report: dict[str, Any] = json.loads(lines[-1])
    return RunResult(
        int(report["count"]),
        float(report["last"]) - float(report["first"]),
        float(report["cpu_seconds"]),
        float(report["peak_rss_mib"]),
    )


def peer_command(
    bench: Workbench, engine: str, python: str, topic: str, out_topic: str, group: str, count: int
) -> list[str]:
    """The command line of a peer that scores ``count`` events of ``topic``, then exits."""
    script = {"bare": "bare_loop.py", "quix": "quix_app.py", "faust": "faust_agent.py"}[engine]
    return [
        python, str(PEERS_DIR / script), "--bootstrap", bench.bootstrap,
        "--topic", topic, "--out-topic", out_topic, "--group", group, "--count", str(count),
        "--spec", str(bench.spec), "--batch", str(bench.batch),
    ]  # fmt: skip


def peer_group_id(engine: str, group: str) -> str:
    """The consumer group a peer started with ``--group group`` joins (faust: its app id)."""
    return f"bench-faust-{group}" if engine == "faust" else group


def peer_home(bench: Workbench, engine: str, run: str) -> Path:
    """Where a peer runs: faust's data folder and Quix Streams' state folder go there."""
    home = bench.folder / f"{engine}-{run}"
    home.mkdir(parents=True, exist_ok=True)
    return home


def _log_catch_up(
    worker: WorkerProcess, bench: Workbench, logger: dict[str, Any] | None, finished: float
) -> float | None:
    """Wait for the prediction log to hold every prediction of the run; the seconds it took."""
    if logger is None:
        return None
    name = bench.pipeline.name
    worker.wait_until(
        lambda s: s["pipelines"][name]["logger"]["predictions"] >= bench.events,
        bench.timeout,
        "the prediction log to catch up",
    )
    return time.time() - finished


def _start_log_group(bench: Workbench) -> None:
    """The logger of the next run reads that run's log only, whatever the last one left."""
    pipeline = bench.pipeline
    consumer = Consumer({"bootstrap.servers": bench.bootstrap, "group.id": pipeline.log_group})
    try:
        offsets = []
        for topic in (pipeline.log_topic, pipeline.feedback_topic):
            for partition in range(pipeline.partitions):
                tp = TopicPartition(topic, partition)
                _, high = consumer.get_watermark_offsets(tp, timeout=10)
                offsets.append(TopicPartition(topic, partition, high))
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


def _delete_groups(bootstrap: str, groups: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    for future in admin.delete_consumer_groups(groups, request_timeout=15).values():
        with contextlib.suppress(Exception):  # a group that does not exist yet is fine
            future.result()


def peer_python(engine: str) -> str:
    """The interpreter for a peer: this one, or Quix Streams' own virtual environment.

    Quix Streams pins confluent-kafka below the version this project uses, so
    it gets a virtual environment of its own, made once in the cache folder.
    """
    if engine != "quix":
        return sys.executable
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    venv = cache / "stream" / f"bench-{QUIX_REQUIREMENT.replace('==', '-')}"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", QUIX_REQUIREMENT,
             "fastavro", "onnxruntime", "numpy"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["unknown error"]
            raise ServiceError(f"quix: cannot install {QUIX_REQUIREMENT}: {tail[0]}")
        marker.touch()
    return str(python)
