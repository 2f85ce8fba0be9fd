"""A single-node Apache Kafka broker in KRaft mode, started from the Maven Central jars.

``ops/kafka/pom.xml`` names the artifacts; ``mvn dependency:copy-dependencies``
fetches them once into a cache folder. The broker runs as ``java … kafka.Kafka``
on free loopback ports, is ready when it answers a metadata request and hands
out producer ids, and is stopped by its own pid.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from stream.errors import ServiceError
from stream.services.stopping import terminate, uninterrupted
from stream.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

POM = PROJECT_ROOT / "ops" / "kafka" / "pom.xml"
LOG_CONFIG = PROJECT_ROOT / "ops" / "kafka" / "log4j2.yaml"


def kafka_version(pom: Path = POM) -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom.read_text())
    if not match:
        raise ServiceError(f"{pom} does not set kafka.version")
    return match.group(1)


def default_jars_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "stream" / f"kafka-{kafka_version()}"


def ensure_jars(jars_dir: Path | None = None, pom: Path = POM) -> Path:
    """Fetch the broker jars with Maven unless the cache folder already has them."""
    jars_dir = jars_dir or default_jars_dir()
    version = kafka_version(pom)
    if (jars_dir / f"kafka_2.13-{version}.jar").is_file():
        return jars_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("Maven (mvn) is needed to fetch the Kafka broker jars; install it")
    log.info("fetching Apache Kafka %s jars into %s", version, jars_dir)
    tmp = jars_dir.with_name(jars_dir.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise ServiceError("mvn could not fetch the Kafka jars: " + " | ".join(tail))
    shutil.rmtree(jars_dir, ignore_errors=True)
    tmp.rename(jars_dir)
    return jars_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        return bool(admin.list_topics(timeout=timeout).brokers)
    except Exception:
        return False


def issues_producer_ids(bootstrap: str, timeout: float = 5.0) -> bool:
    """True when a broker at ``bootstrap`` hands out a producer id within ``timeout``.

    Every idempotent producer asks for one. A new KRaft broker fetches its first
    block of ids from the controller when first asked, and answers "coordinator
    load in progress" meanwhile, which librdkafka logs as a warning in every
    producer that asks then. A silent transactional producer asks first.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"stream-ready-{uuid.uuid4().hex[:8]}",
            "log_level": 0,
        }
    )
    try:
        producer.init_transactions(timeout)
        return True
    except KafkaException:
        return False


class KafkaBroker:
    """One KRaft node (broker and controller) whose data lives under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        jars_dir: Path | None = None,
        port: int | None = None,
        heap: str = "512m",
    ) -> None:
        self.data_dir = data_dir
        self.jars_dir = jars_dir
        self.port = port or free_port()
        self.controller_port = free_port()
        self.heap = heap
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def _properties(self, logs: Path) -> str:
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={logs}",
                "num.partitions=1",
                "auto.create.topics.enable=false",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=4",
                # Abort a crashed producer's expired transaction within seconds, so
                # read_committed consumers are not held back long.
                "transaction.abort.timed.out.transaction.cleanup.interval.ms=2000",
                "group.initial.rebalance.delay.ms=0",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "",
            ]
        )

    def start(self, timeout: float = 90.0, fresh: bool = True) -> KafkaBroker:
        """Format new storage and start (``fresh``), or start again on the data there is."""
        java = shutil.which("java")
        if java is None:
            raise ServiceError("Java 17+ is needed to run the Kafka broker; install a JDK")
        jars = ensure_jars(self.jars_dir)
        classpath = f"{jars}/*"
        logs = self.data_dir / "kraft"
        if fresh:
            shutil.rmtree(logs, ignore_errors=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(self._properties(logs))
        jvm = [java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
               f"-Dlog4j2.configurationFile={LOG_CONFIG}", f"-Dkafka.logs.dir={self.data_dir}",
               "-cp", classpath]  # fmt: skip
        if not (logs / "meta.properties").is_file():
            cluster_id = uuid.uuid4().hex[:22]
            fmt = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if fmt.returncode != 0:
                raise ServiceError(f"formatting Kafka storage failed: {fmt.stderr.strip()[-500:]}")
        try:
            with uninterrupted(), self.log_path.open("ab") as log_file:
                self._process = subprocess.Popen(
                    [*jvm, "kafka.Kafka", str(props)],
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )  # fmt: skip
            self._wait_ready(timeout)
        except BaseException:
            self.stop()  # the caller has no broker to stop: a signal, or it never got ready
            raise
        log.info("Kafka broker ready at %s (pid %d)", self.bootstrap, self._process.pid)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-10:]
                raise ServiceError("Kafka broker exited at start: " + " | ".join(tail))
            if broker_answers(self.bootstrap, timeout=1.0) and issues_producer_ids(self.bootstrap):
                return
            time.sleep(0.2)
        raise ServiceError(
            f"Kafka broker did not answer within {timeout:.0f}s (log: {self.log_path})"
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self, timeout: float = 30.0) -> None:
        with uninterrupted():  # the handle is not dropped before the broker is stopped
            process, self._process = self._process, None
            if process is not None:
                terminate(process, timeout, "Kafka broker")

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
