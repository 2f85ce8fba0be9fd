from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stream.errors import SettingsError
from stream.settings import PROJECT_ROOT, load_pipeline, load_settings


def test_demo_pipeline_file_loads() -> None:
    pipeline = load_pipeline(PROJECT_ROOT / "pipelines" / "payments.yaml")
    assert pipeline.events_topic == "payments.events"
    assert pipeline.model.version == "1"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name: [", "not valid YAML"),
        ("- a\n- b\n", "mapping"),
        ("name: p\n", "model"),
        ("name: p\nmodel: {name: m, version: 1}\nreview_threshold: 3\n", "review_threshold"),
        ("name: p\nmodel: {name: m, version: 1}\nbatch: {max_size: 0}\n", "batch.max_size"),
        ("name: 'a b'\nmodel: {name: m, version: 1}\n", "name"),
        ("name: p\nmodel: {name: m, version: 1}\nsurprise: 1\n", "surprise"),
    ],
)
def test_bad_pipeline_files_name_the_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(content)
    with pytest.raises(SettingsError, match=message) as info:
        load_pipeline(path)
    assert "\n" not in str(info.value)


def test_missing_pipeline_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="--pipeline: no pipeline file"):
        load_pipeline(tmp_path / "nope.yaml")


def test_bad_environment_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_WEB_PORT", "eighty")
    with pytest.raises(SettingsError, match="STREAM_WEB_PORT"):
        load_settings()


def test_secrets_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_CLICKHOUSE_DSN", "http://u:hunter2@h:8123/db")
    monkeypatch.setenv("STREAM_KAFKA_SASL_PASSWORD", "hunter3")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert "hunter3" not in repr(settings)
    assert settings.dsn.endswith("/db")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_cli_unknown_pipeline_file(tmp_path: Path) -> None:
    result = run_cli("worker", "--pipeline", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert_one_line_error(result, "--pipeline", "missing.yaml")


def test_cli_unreachable_broker(tmp_path: Path) -> None:
    from stream.services.kafka import free_port

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "p", "model": {"name": "m", "version": "1"}}))
    result = run_cli(
        "worker", "--pipeline", str(pipeline),
        env={"STREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"},
    )  # fmt: skip
    assert_one_line_error(result, "STREAM_KAFKA_BOOTSTRAP", "no Kafka broker answered")


def test_cli_worker_without_bootstrap(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "p", "model": {"name": "m", "version": "1"}}))
    env = {k: v for k, v in os.environ.items() if k != "STREAM_KAFKA_BOOTSTRAP"}
    result = subprocess.run(
        [sys.executable, "-m", "stream", "worker", "--pipeline", str(pipeline)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert_one_line_error(result, "STREAM_KAFKA_BOOTSTRAP", "not set")


@pytest.mark.parametrize(
    ("dsn", "word"),
    [
        ("mysql://x/y", "unsupported scheme"),
        ("chdb://", "needs a data folder"),
        ("chdb://host/x", "chdb:///"),
    ],
)
def test_cli_bad_dsn(dsn: str, word: str) -> None:
    result = run_cli("db", "migrate", env={"STREAM_CLICKHOUSE_DSN": dsn})
    assert_one_line_error(result, "STREAM_CLICKHOUSE_DSN", word)


def test_cli_unreachable_clickhouse_server() -> None:
    from stream.services.kafka import free_port

    result = run_cli(
        "db", "migrate", env={"STREAM_CLICKHOUSE_DSN": f"http://127.0.0.1:{free_port()}"}
    )
    assert_one_line_error(result, "STREAM_CLICKHOUSE_DSN", "cannot use ClickHouse")


@pytest.mark.parametrize(
    ("args", "option"),
    [(("report", "--out"), "--out"), (("bench", "--events", "100", "--json"), "--json")],
)
def test_cli_output_file_is_checked_before_the_command_runs(
    tmp_path: Path, args: tuple[str, ...], option: str
) -> None:
    """A folder, or a path under a file, is refused at once (a bench is not run for nothing)."""
    result = run_cli(*args, str(tmp_path))
    assert result.returncode == 2
    assert_one_line_error(result, option, str(tmp_path), "is a folder")
    (tmp_path / "file").write_text("")
    result = run_cli(*args, str(tmp_path / "file" / "out"))
    assert result.returncode == 2
    assert_one_line_error(result, option, "cannot create the folder", str(tmp_path / "file"))


def test_cli_bench_json_file_is_not_where_its_chart_goes(tmp_path: Path) -> None:
    result = run_cli("bench", "--events", "100", "--json", str(tmp_path / "bench.png"))
    assert result.returncode == 2
    assert_one_line_error(result, "--json", "the chart is written beside it")


def test_cli_bad_env_value() -> None:
    result = run_cli("db", "migrate", env={"STREAM_WEB_PORT": "eighty"})
    assert result.returncode == 2
    assert_one_line_error(result, "STREAM_WEB_PORT")


def test_secrets_never_reach_the_output(tmp_path: Path) -> None:
    from stream.services.kafka import free_port

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "p", "model": {"name": "m", "version": "1"}}))
    env = {
        "STREAM_CLICKHOUSE_DSN": f"http://user:hunter2@127.0.0.1:{free_port()}/db",
        "STREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "STREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAM_KAFKA_SASL_MECHANISM": "PLAIN",
        "STREAM_KAFKA_SASL_USERNAME": "user",
        "STREAM_KAFKA_SASL_PASSWORD": "hunter3",
        "STREAM_LOG_LEVEL": "DEBUG",
    }
    for args in (("db", "migrate"), ("worker", "--pipeline", str(pipeline))):
        result = run_cli(*args, env=env)
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "hunter2" not in output and "hunter3" not in output, args


def test_the_readme_lists_every_setting_as_the_classes_define_it() -> None:
    from stream.reference import README, reference

    assert reference() in README.read_text(), "run: python -m stream.reference"


def test_log_json_gives_one_json_object_per_line(tmp_path: Path) -> None:
    env = {**os.environ, "STREAM_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}"}
    result = subprocess.run(
        [sys.executable, "-m", "stream", "--log-json", "db", "migrate"],
        capture_output=True, text=True, timeout=60, check=True, env=env,
    )  # fmt: skip
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["message"] == "applied migration 001_windows.sql" for r in records)
