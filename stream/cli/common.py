"""What every ``stream`` command shares: the console, settings with logging, pipeline look-up."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from stream import logs
from stream.settings import PROJECT_ROOT, Settings, load_settings

console = Console()


def configure() -> Settings:
    """Settings from the environment, with logging set up for a command."""
    loaded = load_settings()
    logs.setup(loaded.log_level, loaded.log_format)
    return loaded


def pipeline_path(name_or_file: str) -> Path:
    """A pipeline file given by path, or by name under ``pipelines/``."""
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return PROJECT_ROOT / "pipelines" / f"{name_or_file}.yaml"
