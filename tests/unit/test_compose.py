"""docker-compose.yml must be valid for people with a Docker engine (none runs here)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
import yaml

from stream.cli import app
from stream.settings import PROJECT_ROOT, Settings


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text()))


def test_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "clickhouse", "worker"} <= set(services)
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", services["kafka"]["image"])
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["worker"]["deploy"]["replicas"] >= 2


def test_references_resolve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith((".", "/")) or source in volumes, f"{name}: volume {source}"
        if "build" in service:
            assert (PROJECT_ROOT / service["build"] / "Dockerfile").is_file()


def test_environment_names_real_settings(compose: dict[str, Any]) -> None:
    fields = {f"STREAM_{name.upper()}" for name in Settings.model_fields}
    for service in compose["services"].values():
        for key in service.get("environment") or {}:
            if key.startswith("STREAM_"):
                assert key in fields, f"{key} is not a setting"


def test_commands_exist(compose: dict[str, Any]) -> None:
    root = typer.main.get_command(app)
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or command[0] != "stream":
            continue
        group: Any = root
        for word in command[1:]:
            if word.startswith("-") or not hasattr(group, "get_command"):
                break
            sub = group.get_command(None, word)
            if sub is None:
                break
            group = sub
        assert not hasattr(group, "get_command"), f"{name}: unknown command {command}"


def test_dockerfile_copies_what_exists() -> None:
    for line in (PROJECT_ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (PROJECT_ROOT / source).exists(), source
