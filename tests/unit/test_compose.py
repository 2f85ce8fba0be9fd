"""docker-compose.yml must be valid for people with a Docker engine (none runs here)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import typer
import yaml

from stream.cli import app
from stream.metrics import WorkerCollector, WorkerMetrics
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


DASHBOARDS = PROJECT_ROOT / "ops" / "grafana" / "dashboards"


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def test_prometheus_and_grafana_are_provisioned(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = yaml.safe_load((PROJECT_ROOT / "ops/prometheus/prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"][0]["names"] == ["worker"] and "worker" in services
    assert job["dns_sd_configs"][0]["port"] == Settings().web_port
    sources = yaml.safe_load(
        (PROJECT_ROOT / "ops/grafana/provisioning/datasources/datasources.yml").read_text()
    )
    kinds = {d["uid"]: d["type"] for d in sources["datasources"]}
    assert kinds == {"prometheus": "prometheus", "clickhouse": "grafana-clickhouse-datasource"}
    assert (
        "grafana-clickhouse-datasource" in services["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    )
    provider = yaml.safe_load(
        (PROJECT_ROOT / "ops/grafana/provisioning/dashboards/dashboards.yml").read_text()
    )
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert mounts[provider["providers"][0]["options"]["path"]] == "./ops/grafana/dashboards"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (PROJECT_ROOT / source).exists(), f"{name} mounts {source}"


def test_dashboards_are_valid_and_ask_for_what_workers_export() -> None:
    boards = dashboards()
    assert set(boards) == {"operations", "models"}
    families = {f.name for f in WorkerMetrics().registry.collect()} | _collector_families()
    exported = {
        name + end for name in families for end in ("", "_total", "_bucket", "_sum", "_count")
    }
    uids = {"prometheus", "clickhouse"}
    for name, board in boards.items():
        assert board["uid"] and board["title"] and board["panels"], name
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] in uids, (name, panel["title"])
            for target in panel["targets"]:
                if panel["datasource"]["uid"] == "prometheus":
                    for metric in re.findall(r"\b(stream_[a-z0-9_]+)", target["expr"]):
                        assert metric in exported, (panel["title"], metric)
                else:
                    assert target["rawSql"].lstrip().upper().startswith("SELECT")


def _collector_families() -> set[str]:
    """Names of the families the worker's collector yields (from an idle collector's types)."""
    collector = WorkerCollector(lambda: [], lambda: [], lambda: [])
    return {family.name for family in collector.collect()}
