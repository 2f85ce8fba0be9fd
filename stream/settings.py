"""Process settings (``STREAM_*`` environment) and pipeline files (YAML).

Settings say where things are: Kafka, ClickHouse, the model registry. A
pipeline file says what one pipeline does: its input, model, thresholds and
windows. Both are frozen once loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream.errors import SettingsError
from stream.models.key import ModelKey

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOME = PROJECT_ROOT / ".stream"


def embedded_dsn(home: Path) -> str:
    """The embedded ClickHouse engine's DSN under a state folder (the default)."""
    return f"chdb://{(home / 'clickhouse').resolve()}"


class Settings(BaseSettings):
    """Where the services are. Every field reads ``STREAM_<NAME>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix="STREAM_", frozen=True, extra="ignore")

    home: Path = Field(DEFAULT_HOME, description="State folder: broker data, registry, ClickHouse")
    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers; unset means start a local broker (demo only)"
    )
    kafka_security_protocol: str | None = Field(
        None, description="librdkafka security.protocol, e.g. SASL_SSL"
    )
    kafka_sasl_mechanism: str | None = Field(None, description="librdkafka sasl.mechanism")
    kafka_sasl_username: str | None = Field(None, description="librdkafka sasl.username")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="librdkafka sasl.password (never logged or printed)"
    )
    kafka_ssl_ca_location: str | None = Field(None, description="librdkafka ssl.ca.location")
    clickhouse_dsn: SecretStr | None = Field(
        None,
        description="chdb:///path (embedded; default chdb://{STREAM_HOME}/clickhouse) or "
        "http(s)://user:pass@host:8123/db",
    )
    clickhouse_database: str = Field("stream", description="Database for the tables")
    clickhouse_retention_days: int = Field(
        365, ge=0, description="Days ClickHouse keeps window, alert and model event rows; 0: always"
    )
    clickhouse_log_retention_days: int = Field(
        30, ge=0, description="Days ClickHouse keeps prediction_log and feedback rows; 0: always"
    )
    clickhouse_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Linux nice value of a worker's ClickHouse work: its writer thread and the "
        "embedded engine's inserts, merges and queries, so that scoring gets a core first; "
        "0: the same priority as scoring",
    )
    registry: Path | None = Field(
        None, description="Model registry folder (default {STREAM_HOME}/registry)"
    )
    schemas_dir: Path = Field(
        PROJECT_ROOT / "schemas", description="Avro schemas (default schemas/ in the project)"
    )
    migrations_dir: Path = Field(
        PROJECT_ROOT / "ops" / "clickhouse",
        description="ClickHouse migrations (default ops/clickhouse/ in the project)",
    )
    schema_registry_url: str | None = Field(
        None,
        description="Confluent Schema Registry: events are read and outputs written in its "
        "wire format, output schemas registered",
    )
    app_id: str = Field(
        "stream-worker",
        description="faust app id (consumer group of the monitor agents; "
        "`{id}.copier` is the copier's)",
    )
    web_host: str = Field(
        "127.0.0.1", description="Address of the status, health and metrics pages"
    )
    web_port: int = Field(6066, description="Port of the status, health and metrics pages")
    replication_factor: int = Field(1, description="Replication factor of the topics created")
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text (lines for people) or json (one object per line, for log "
        "shippers); `stream --log-json` sets it",
    )
    table_store: Literal["memory", "rocksdb"] = Field(
        "memory",
        description="Where the monitor's window state lives: memory (rebuilt from its changelog "
        "topic at start) or rocksdb (on disk under STREAM_HOME, one STREAM_HOME per worker)",
    )
    stall_seconds: float = Field(
        120.0,
        gt=0,
        description="A loop without a turn, or a partition without progress while records "
        "wait, for this long takes the worker down (exit 1) so that it is restarted",
    )
    retrain_jobs: bool = Field(
        False,
        description="This worker runs retraining jobs: requests on {pipeline}.retrain and "
        "the pipeline's retrain.trigger, each job in a process of its own",
    )

    @property
    def registry_path(self) -> Path:
        return self.registry or self.home / "registry"

    @property
    def dsn(self) -> str:
        if self.clickhouse_dsn is not None:
            return self.clickhouse_dsn.get_secret_value()
        return embedded_dsn(self.home)

    @property
    def clickhouse_embedded(self) -> bool:
        """Whether the DSN is the embedded engine (one process per data folder)."""
        return self.dsn.startswith("chdb:")

    def kafka_config(self, bootstrap: str | None = None) -> dict[str, Any]:
        """librdkafka settings shared by every client of this process."""
        bootstrap = bootstrap or self.kafka_bootstrap
        if not bootstrap:
            raise SettingsError("STREAM_KAFKA_BOOTSTRAP", "not set")
        conf: dict[str, Any] = {"bootstrap.servers": bootstrap}
        if self.kafka_security_protocol:
            conf["security.protocol"] = self.kafka_security_protocol
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_ca_location:
            conf["ssl.ca.location"] = self.kafka_ssl_ca_location
        return conf


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        name = "STREAM_" + str(err["loc"][0]).upper() if err["loc"] else "settings"
        raise SettingsError(name, err["msg"]) from None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSpec(_Frozen):
    """What producers write to ``{name}.events``."""

    format: Literal["avro", "json"] = Field("avro", description="Encoding of the events")
    schema_file: str = Field(
        "payments_event.avsc", alias="schema", description="Avro schema of the events in schemas/"
    )
    event_id_field: str = Field("event_id", description="Field holding the event's unique id")
    event_time_field: str | None = Field(
        "event_time",
        description="Field holding the event time (epoch ms, up to the year 2299; later or negative"
        " times are dead letters); the Kafka timestamp when unset",
    )
    max_event_bytes: int = Field(
        64 * 1024, gt=0, description="Larger events are dead letters (reason invalid)"
    )


class BatchSpec(_Frozen):
    """How the scoring engine batches."""

    max_size: int = Field(1000, gt=0, description="Most events in one batch (one ONNX run)")
    max_wait_ms: int = Field(
        5, ge=0, description="How long a batch waits for more events after its first"
    )


class MonitorSpec(_Frozen):
    """Windows, drift statistics and alert bands."""

    window_seconds: float = Field(60.0, gt=0, description="Length of a monitor window")
    grace_seconds: float = Field(
        3.0, ge=0, description="How long after its end a window waits for late partials"
    )
    flush_interval_seconds: float = Field(
        1.0, gt=0, description="Checkpoint interval: partials sent and offsets committed"
    )
    min_samples: int = Field(
        200, ge=0, description="Fewer values than this in a window: no drift verdict"
    )
    psi_warn: float = Field(0.1, gt=0, description="PSI band for warn (with a significant test)")
    psi_alert: float = Field(0.25, gt=0, description="PSI band for alert")
    mean_shift_warn: float = Field(
        0.25, gt=0, description="Mean shift in training standard deviations for warn"
    )
    mean_shift_alert: float = Field(0.5, gt=0, description="Mean shift for alert")
    drift_alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="Chance that a window without drift flags anything (Bonferroni over the "
        "tests in the window)",
    )
    unseen_warn: float = Field(
        0.01, gt=0, le=1, description="Share of a category feature's values never seen, for warn"
    )
    unseen_alert: float = Field(0.05, gt=0, le=1, description="The same, for alert")
    latency_p99_alert_ms: float | None = Field(
        None, gt=0, description="A window's end-to-end p99 above this raises an alert"
    )
    cost_alert_cpu_seconds_per_1k: float | None = Field(
        None, gt=0, description="A window's CPU seconds per 1,000 predictions above this alert"
    )
    max_unwritten_windows: int = Field(
        30,
        gt=0,
        description="Closed windows kept while ClickHouse is away; past this the monitor "
        "stops reading partials (they wait in Kafka)",
    )

    @model_validator(mode="after")
    def _bands(self) -> MonitorSpec:
        if self.psi_warn > self.psi_alert:
            raise ValueError("psi_warn must not exceed psi_alert")
        if self.mean_shift_warn > self.mean_shift_alert:
            raise ValueError("mean_shift_warn must not exceed mean_shift_alert")
        if self.unseen_warn > self.unseen_alert:
            raise ValueError("unseen_warn must not exceed unseen_alert")
        return self


class QualitySpec(_Frozen):
    """Labels from ``{name}.feedback`` joined with logged predictions, in ClickHouse."""

    log_sample_rate: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of events logged to prediction_log, by a hash of the Kafka key; "
        "0 turns the log (and quality) off",
    )
    log_features: bool = Field(True, description="Log the model's input values with each")
    segments: list[str] = Field(
        [], description="Event fields that split quality by segment, e.g. [channel, country]"
    )
    label_horizon_seconds: float = Field(
        3600.0,
        gt=0,
        description="A label counts when it came at most this long after its prediction; "
        "later ones are counted as late_labels",
    )
    min_accuracy: float | None = Field(
        None, gt=0, le=1, description="A segment's accuracy in a window below this alerts"
    )
    min_labels: int = Field(
        100, gt=0, description="Labels a segment needs in a window before it is judged"
    )


class RetrainTriggerSpec(_Frozen):
    """An alert that stays open asks for a retraining (run by workers with retrain jobs on)."""

    metric: Literal["drift", "quality", "unseen_categories", "latency_p99", "cost"] = Field(
        description="Alert metric that triggers (quality: accuracy from labels)"
    )
    subject: str | None = Field(
        None,
        description="Only alerts on this feature, or segment for quality ('all events', "
        "'channel=web'); any when unset",
    )
    severity: Literal["warning", "critical"] = Field(
        "critical", description="Least severity that counts"
    )
    windows: int = Field(
        3, gt=0, description="The alert still open this many monitor windows after it opened"
    )
    cooldown_minutes: float = Field(
        60.0, ge=0, description="No new request within this many minutes of the last one"
    )


class RetrainSpec(_Frozen):
    """``stream models retrain``: a candidate from logged features and labels, and its gate."""

    trainer: str = Field(
        "stream.demo.trainer:train",
        description="MODULE:FUNCTION taking (DataFrame, TrainingTask), returning a TrainedModel",
    )
    lookback_hours: float = Field(
        24.0, gt=0, description="Train on predictions logged this many hours back (--since)"
    )
    min_rows: int = Field(500, gt=0, description="Labeled events needed to train at all")
    holdout_share: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="The newest share of the labeled events, kept out of training to "
        "validate the candidate against the champion",
    )
    primary_metric: Literal["accuracy", "brier", "log_loss", "mae", "rmse"] | None = Field(
        None, description="The metric the gate judges by; accuracy (classifiers) or rmse when unset"
    )
    min_improvement: float = Field(
        0.0,
        description="The candidate must beat the champion on the primary metric by at least "
        "this on the holdout (negative: may be this much worse)",
    )
    max_segment_regression: float = Field(
        0.02,
        ge=0,
        description="…and be no worse than this on any segment (quality.segments) with "
        "min_segment_labels labels",
    )
    min_segment_labels: int = Field(
        100, gt=0, description="Labels a segment needs in the holdout to be judged"
    )
    shadow_on_pass: bool = Field(
        False, description="Deploy a candidate that passes as a shadow right away"
    )
    trigger: RetrainTriggerSpec | None = Field(
        None, description="An alert that asks for a retraining on {name}.retrain"
    )


class PromotionSpec(_Frozen):
    """``stream models promote``: the shadow evidence a candidate needs to take traffic."""

    min_labeled: int = Field(
        300, gt=0, description="Labeled events both the shadow and the champion scored"
    )
    min_improvement: float = Field(
        0.0,
        description="The lower end of the 95% interval of the shadow's gain over the champion "
        "on the primary metric must be at least this",
    )
    max_latency_ratio: float = Field(
        2.0, gt=0, description="Shadow inference p99 at most this times the champion's"
    )
    max_cost_ratio: float = Field(
        2.0, gt=0, description="Shadow CPU s per 1,000 events at most this times the champion's"
    )
    lookback_minutes: float = Field(
        1440.0, gt=0, description="Evidence from the shadow's predictions in this many minutes"
    )
    steps: list[float] = Field(
        [100.0],
        description="Traffic shares in percent the candidate takes in turn, e.g. [10, 50, 100]",
    )
    step_seconds: float = Field(
        300.0, ge=0, description="Time at each step before its checks, then the next step"
    )

    @model_validator(mode="after")
    def _steps(self) -> PromotionSpec:
        if not self.steps or self.steps[-1] != 100 or sorted(self.steps) != self.steps:
            raise ValueError("steps must increase and end at 100")
        if any(not 0 < s <= 100 for s in self.steps):
            raise ValueError("steps are percentages in (0, 100]")
        return self


class PipelineConfig(_Frozen):
    """One pipeline: ``{name}.events`` in, predictions, review items and dead letters out."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$", description="Pipeline name: topics are {name}.events, …"
    )
    model: ModelKey = Field(
        description="NAME:VERSION that serves when stream.control has no state for the pipeline"
    )
    input: InputSpec = Field(InputSpec(), description="The events")
    partitions: int = Field(4, gt=0, description="Partitions of the topics the worker creates")
    batch: BatchSpec = Field(BatchSpec(), description="Batching")
    review_threshold: float = Field(
        0.7, ge=0, le=1, description="Predictions less confident than this also go to review"
    )
    monitor: MonitorSpec = Field(MonitorSpec(), description="Windows, drift and alerts")
    quality: QualitySpec = Field(QualitySpec(), description="Prediction log and labels")
    retrain: RetrainSpec = Field(RetrainSpec(), description="Retraining and its gate")
    promotion: PromotionSpec = Field(PromotionSpec(), description="Promotion from shadow")
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once", description="at_least_once, or exactly_once with Kafka transactions"
    )

    @property
    def events_topic(self) -> str:
        return f"{self.name}.events"

    @property
    def predictions_topic(self) -> str:
        return f"{self.name}.predictions"

    @property
    def review_topic(self) -> str:
        return f"{self.name}.review"

    @property
    def deadletter_topic(self) -> str:
        return f"{self.name}.deadletter"

    @property
    def shadow_topic(self) -> str:
        return f"{self.name}.shadow"

    @property
    def alerts_topic(self) -> str:
        return f"{self.name}.alerts"

    @property
    def feedback_topic(self) -> str:
        return f"{self.name}.feedback"

    @property
    def retrain_topic(self) -> str:
        return f"{self.name}.retrain"

    @property
    def log_topic(self) -> str:
        return f"{self.name}.log"

    @property
    def log_group(self) -> str:
        return f"stream.{self.name}.log"

    @property
    def monitor_topic(self) -> str:
        return f"{self.name}.monitor"

    @property
    def engine_group(self) -> str:
        return f"stream.{self.name}.engine"

    def with_overrides(self, **changes: Any) -> PipelineConfig:
        return self.model_validate({**self.model_dump(by_alias=True), **changes})


def load_pipeline(path: Path) -> PipelineConfig:
    """Read a pipeline file; any problem is one SettingsError naming the file and field."""
    if not path.is_file():
        raise SettingsError("--pipeline", f"no pipeline file at {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SettingsError(str(path), f"not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise SettingsError(str(path), "expected a mapping at the top level")
    try:
        return PipelineConfig.model_validate(raw)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise SettingsError(f"{path}: {field}", err["msg"]) from None
