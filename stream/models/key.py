"""The identity of a model version: NAME:VERSION."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from stream.errors import SettingsError


class ModelKey(BaseModel):
    """A model version in the registry; in pipeline files and deployment states."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str

    @field_validator("version", mode="before")
    @classmethod
    def _text(cls, value: Any) -> str:
        return str(value)

    @classmethod
    def parse(cls, text: str) -> ModelKey:
        name, sep, version = text.partition(":")
        if not sep or not name or not version:
            raise SettingsError("NAME:VERSION", f"expected a model as NAME:VERSION, got {text!r}")
        return cls(name=name, version=version)

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"
