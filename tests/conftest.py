"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.demo.data import train_demo_model
from stream.models.manifest import ModelManifest
from stream.models.registry import ModelRegistry

# Figures that tests measure (rates, counts, times), printed after the run.
_FIGURES: list[str] = []

MODEL_NAME = "payments-fraud"
MODEL_VERSION = "1"


@pytest.fixture(scope="session")
def trained_model() -> tuple[bytes, ModelManifest]:
    """A small demo model (20 trees on 4,000 rows): real ONNX, trained in about a second."""
    return train_demo_model(MODEL_NAME, MODEL_VERSION, rows=4_000, trees=20)


@pytest.fixture
def manifest(trained_model: tuple[bytes, ModelManifest]) -> ModelManifest:
    return trained_model[1]


@pytest.fixture
def manifests_parsed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders whose manifest files are parsed during the test, in order."""
    parsed: list[Path] = []
    read = ModelManifest.read

    def counting_read(folder: Path) -> ModelManifest:
        parsed.append(folder)
        return read(folder)

    monkeypatch.setattr(ModelManifest, "read", counting_read)
    return parsed


@pytest.fixture(scope="session")
def registry(
    tmp_path_factory: pytest.TempPathFactory, trained_model: tuple[bytes, ModelManifest]
) -> ModelRegistry:
    """payments-fraud "1" and "2" (the same ONNX file), and two that must not load:
    "corrupt" (bytes that do not match the checksum) and "wrong-shape" (a manifest
    with one feature fewer than the model's input)."""
    reg = ModelRegistry(tmp_path_factory.mktemp("registry"))
    onnx_bytes, manifest = trained_model
    reg.register(onnx_bytes, manifest)
    reg.register(onnx_bytes, manifest.model_copy(update={"version": "2"}))
    folder = reg.register(onnx_bytes, manifest.model_copy(update={"version": "corrupt"}))
    (folder / "model.onnx").write_bytes(b"\x08\x01not really onnx")
    fewer = manifest.model_copy(
        update={"version": "wrong-shape", "features": manifest.features[:-1]}
    )
    reg.register(onnx_bytes, fewer)
    return reg


@pytest.fixture
def registry_path(registry: ModelRegistry) -> Path:
    return registry.root


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves Python threads running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in leaked:
        t.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"test leaked threads: {still}"


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Report a measured figure; every one is printed in a "figures" section at the end."""

    def report(line: str) -> None:
        _FIGURES.append(f"{request.node.name}: {line}")

    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
