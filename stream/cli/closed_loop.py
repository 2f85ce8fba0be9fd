"""``stream models retrain`` and ``stream models promote``: the closed loop's commands."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from stream.cli.common import configure, console, pipeline_path
from stream.cli.models import (
    Model,
    Pipeline,
    Reason,
    Timeout,
    models,
    print_change,
    report_change,
)
from stream.errors import SettingsError
from stream.models.key import ModelKey

if TYPE_CHECKING:
    from stream.retrain.evidence import Evidence
    from stream.retrain.gate import GateResult
    from stream.settings import PipelineConfig

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime) -> datetime:
    """``90m``, ``6h``, ``2d`` back from now, or an ISO 8601 time (UTC when it has no zone)."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise SettingsError(
            "--since", f"expected 6h, 90m, 2d or an ISO time, got {text!r}"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@models.command("retrain")
def models_retrain(
    pipeline: Pipeline,
    since: Annotated[
        str | None,
        typer.Option(
            help="Train on events since: 6h, 90m, 2d or an ISO time; "
            "default retrain.lookback_hours."
        ),
    ] = None,
    trainer: Annotated[
        str | None, typer.Option(help="MODULE:FUNCTION; default the pipeline's retrain.trainer.")
    ] = None,
    champion: Annotated[
        str | None,
        typer.Option(help="NAME:VERSION to judge against; default the serving champion."),
    ] = None,
    version: Annotated[str | None, typer.Option(help="Version; default the next number.")] = None,
    seed: Annotated[int, typer.Option(help="Seed handed to the trainer.")] = 0,
    request: Annotated[
        bool,
        typer.Option(
            "--request",
            help="Ask a worker with retrain jobs on to do it, with the pipeline's retrain "
            "settings (a request on {pipeline}.retrain).",
        ),
    ] = False,
    reason: Reason = "",
    timeout: Timeout = 30.0,
) -> None:
    """Train a candidate on logged features and labels, judge it against the champion on the
    newest held-out events, and register it (rejected ones marked so). Exit 1 if rejected."""
    from stream.deploy.commands import current_state
    from stream.deploy.control import current_actor
    from stream.models.registry import ModelRegistry
    from stream.retrain.job import announce, retrain
    from stream.settings import load_pipeline
    from stream.sinks.clickhouse import connect, migrate

    settings = configure()
    config = load_pipeline(pipeline_path(pipeline))
    kafka_config = settings.kafka_config()
    if request:
        _request(kafka_config, config, reason)
        return
    state = current_state(kafka_config, config).current
    incumbent = ModelKey.parse(champion) if champion else state.serving[0].model
    now = datetime.now(UTC)
    start = (
        parse_since(since, now) if since else now - timedelta(hours=config.retrain.lookback_hours)
    )
    trainer_ref = trainer or config.retrain.trainer
    registry = ModelRegistry(settings.registry_path)
    ch = connect(settings.dsn, settings.clickhouse_database)
    try:
        migrate(ch, settings.migrations_dir)
        with console.status(f"training with {trainer_ref}…"):
            candidate = retrain(
                ch.client, registry, config, incumbent, trainer_ref, start, now, version, seed
            )
    finally:
        ch.close()
    gate = candidate.gate
    console.print(
        f"[bold]{candidate.key}[/] trained on {candidate.train_rows:,} labeled events by "
        f"{trainer_ref}; judged against {incumbent} on {gate.holdout_rows:,} newer ones"
    )
    _print_gate(gate)
    result = announce(
        kafka_config, config, registry, candidate, trainer_ref, state.revision, current_actor(),
        reason, timeout,
    )  # fmt: skip
    if not gate.passed:
        console.print(f"[red]rejected[/]: {'; '.join(gate.reasons)}")
        console.print(f"registered as rejected in {candidate.folder}; deploying it needs --force")
        raise typer.Exit(1)
    console.print(f"[green]passed[/]: registered in {candidate.folder}")
    if result is not None:
        report_change(result, timeout)


def _request(kafka_config: dict[str, Any], pipeline: PipelineConfig, reason: str) -> None:
    import time

    from stream.deploy.control import current_actor
    from stream.retrain.runner import publish_request
    from stream.retrain.trigger import RetrainRequest

    at = int(time.time() * 1000)
    request = RetrainRequest(pipeline.name, current_actor(), reason, "", at)
    publish_request(kafka_config, pipeline, request)
    console.print(
        f"asked for a retraining on {pipeline.retrain_topic}; a worker with "
        "STREAM_RETRAIN_JOBS=true runs it (its status page and model_events tell the outcome)"
    )


def _print_gate(gate: GateResult) -> None:
    table = Table("metric", "segment", "labeled", "candidate", "champion", "gain", "rule", "")
    for r in gate.rows:
        verdict = "" if not r.rule else ("[green]pass[/]" if r.passed else "[red]fail[/]")
        table.add_row(
            r.metric, f"{r.segment}={r.segment_value}" if r.segment_value else r.segment,
            f"{r.labeled:,}", f"{r.candidate:.4f}", f"{r.champion:.4f}", f"{r.gain:+.4f}",
            r.rule, verdict,
        )  # fmt: skip
    console.print(table)


@models.command("promote")
def models_promote(
    pipeline: Pipeline,
    model: Model,
    force: Annotated[
        bool, typer.Option("--force", help="Skip the shadow evidence (and the gate's verdict).")
    ] = False,
    reason: Reason = "",
    timeout: Timeout = 30.0,
) -> None:
    """Switch traffic to a shadowing candidate once its evidence holds (promotion.* in the
    pipeline file), in steps with checks between them; or refuse with the reasons (exit 1)."""
    from stream.deploy.control import current_actor
    from stream.models.registry import ModelRegistry
    from stream.retrain.promote import promote
    from stream.settings import load_pipeline
    from stream.sinks.clickhouse import connect, migrate

    settings = configure()
    config = load_pipeline(pipeline_path(pipeline))
    if len(config.promotion.steps) > 1 and settings.clickhouse_embedded:
        raise SettingsError(
            "promotion.steps",
            "checks between steps read ClickHouse while the workers write it, which the "
            "embedded engine (one process per data folder) cannot do: use a ClickHouse server "
            "(STREAM_CLICKHOUSE_DSN=http://…) or a single step [100]",
        )

    @contextlib.contextmanager
    def read() -> Iterator[Any]:
        ch = connect(settings.dsn, settings.clickhouse_database)
        try:
            migrate(ch, settings.migrations_dir)
            yield ch.client
        finally:
            ch.close()

    def show(stage: str, evidence: Evidence) -> None:
        table = Table(f"{stage}: check", "", "evidence")
        for c in evidence.checks:
            table.add_row(c.name, "[green]pass[/]" if c.passed else "[red]fail[/]", c.detail)
        console.print(table)

    key = ModelKey.parse(model)
    outcome = promote(
        settings.kafka_config(), config, ModelRegistry(settings.registry_path), key, read,
        current_actor(), reason, force, timeout, report=show,
        changed=lambda result: print_change(result, timeout),
    )  # fmt: skip
    if not outcome.promoted:
        console.print(f"[red]{key} not promoted[/]: {'; '.join(outcome.reasons)}")
        raise typer.Exit(1)
    console.print(
        f"[green]{key} serves all traffic of {config.name}[/] in place of {outcome.champion}; "
        f"`stream models rollback {pipeline}` undoes the last step"
    )
