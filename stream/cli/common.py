"""What every ``stream`` command shares: the console, settings with logging, pipeline look-up,
and the files a command writes."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from stream import logs
from stream.errors import SettingsError
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


def output_file(option: str, path: Path) -> Path:
    """A file the command writes when it is done, checked before it starts: a long run
    must not end in a traceback over a folder or a path it cannot write."""
    if path.is_dir():
        raise SettingsError(option, f"{path} is a folder; name a file in it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problem = f"cannot create the folder {path.parent}: {exc.strerror}"
        raise SettingsError(option, problem) from None
    if not os.access(path.parent, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.W_OK)
    ):
        raise SettingsError(option, f"cannot write {path}")
    return path
