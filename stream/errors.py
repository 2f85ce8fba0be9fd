"""One root exception with specific subclasses.

Errors that concern one event carry the context a person needs to find it:
topic, partition, offset and, when a model was involved, its name and version.
"""

from __future__ import annotations

from dataclasses import dataclass


class StreamError(Exception):
    """Root of every error this package raises on purpose."""


class SettingsError(StreamError):
    """A setting is missing or wrong. The message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class ServiceError(StreamError):
    """A service the pipeline needs (Kafka, ClickHouse) is not usable."""


class DataFolderBusy(ServiceError):
    """The embedded ClickHouse data folder is held by another process."""


class SinkUnavailable(ServiceError):
    """ClickHouse did not take a write; the caller keeps the rows and tries again later."""


class ModelLoadError(StreamError):
    """A model failed verification or could not be loaded; it must not serve."""


class DeliveryError(StreamError):
    """Kafka did not acknowledge an output; offsets must not be committed."""


@dataclass(frozen=True)
class EventContext:
    """Where an event came from, attached to every per-event error."""

    topic: str = ""
    partition: int = -1
    offset: int = -1


class EventError(StreamError):
    """A single event could not be scored. It goes to the dead-letter topic."""

    reason = "event_error"

    def __init__(self, message: str, ctx: EventContext | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.ctx = ctx or EventContext()


class KeyDecodeError(EventError):
    reason = "key_decode"


class ValueDecodeError(EventError):
    reason = "value_decode"


class ValidationError(EventError):
    reason = "invalid"


class UnknownCategory(ValidationError):
    """A categorical feature holds a value the model was not trained on.

    The event is dead-lettered like any invalid one; the monitor counts it as
    an unseen category of that feature (``feature`` is its index).
    """

    def __init__(self, message: str, feature: int, ctx: EventContext | None = None) -> None:
        super().__init__(message, ctx)
        self.feature = feature


class ModelError(EventError):
    """The model failed at run time on a batch containing this event."""

    reason = "model_error"

    def __init__(
        self,
        message: str,
        ctx: EventContext | None = None,
        model: str = "",
        version: str = "",
    ) -> None:
        super().__init__(message, ctx)
        self.model = model
        self.version = version


class RetrainError(StreamError):
    """Retraining could not produce a candidate: too few labeled events, or the trainer failed."""
