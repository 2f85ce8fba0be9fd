"""The benchmark's events: the demo's payments, or N float features (``--features N``).

With ``--features N`` every event is an id, an event time and N doubles
``x0`` … ``x{N-1}``; the label depends on a few of them through a logistic
link, so a gradient-boosting model learns something real and scores the way
the demo model does. The schema is written beside the benchmark's other files
and the workers read it from there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stream.demo.trainer import gradient_boosting_onnx
from stream.models.manifest import FeatureSpec, ModelManifest, OutputSpec, numeric_reference
from stream.models.reference import with_output_references
from stream.produce import EventSource

SCHEMA_FILE = "bench_event.avsc"


def event_schema(features: int) -> dict[str, Any]:
    fields: list[dict[str, Any]] = [
        {"name": "event_id", "type": "string", "doc": "Unique id of the event."},
        {"name": "event_time", "type": "long", "doc": "Event time, epoch milliseconds."},
    ]
    fields += [{"name": f"x{i}", "type": "double", "doc": f"Feature {i}."} for i in range(features)]
    return {
        "type": "record",
        "name": "BenchEvent",
        "namespace": "stream.bench",
        "doc": f"A benchmark event with {features} float features.",
        "fields": fields,
    }


def schemas_folder(source: Path, folder: Path, features: int) -> Path:
    """A copy of the project's schemas with the benchmark's event schema added."""
    target = folder / "schemas"
    shutil.copytree(source, target, dirs_exist_ok=True)
    (target / SCHEMA_FILE).write_text(json.dumps(event_schema(features), indent=2))
    return target


def _weights(features: int) -> np.ndarray:
    """Six features carry the signal, whatever the width."""
    weights = np.zeros(features)
    strong = np.random.default_rng(99).choice(features, size=min(6, features), replace=False)
    weights[strong] = [1.2, -0.9, 0.8, 0.7, -0.6, 0.5][: strong.size]
    return weights


def generate(n: int, features: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(0.0, 1.0, (n, features))
    logit = -2.5 + x @ _weights(features)
    return x, (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)


def float_events(features: int) -> EventSource:
    """Events of ``features`` floats for ``PacedProducer``."""

    def source(
        n: int, rng: np.random.Generator, now_ms: int, run_id: str, first: int
    ) -> Iterator[dict[str, Any]]:
        x, _ = generate(n, features, rng)
        names = [f"x{i}" for i in range(features)]
        for i in range(n):
            event: dict[str, Any] = {"event_id": f"{run_id}-{first + i}", "event_time": now_ms}
            event.update(zip(names, x[i].tolist(), strict=True))
            yield event

    return source


def train_float_model(
    name: str, version: str, features: int, trees: int, depth: int, rows: int = 20_000
) -> tuple[bytes, ModelManifest]:
    rng = np.random.default_rng(7)
    x, y = generate(rows, features, rng)
    onnx_bytes, _ = gradient_boosting_onnx(x.astype(np.float32), y, "features", trees, depth, 7)
    manifest = ModelManifest(
        name=name,
        version=version,
        onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        input_name="features",
        features=[
            FeatureSpec(name=f"x{i}", type="numeric", reference=numeric_reference(x[:, i]))
            for i in range(features)
        ],
        output=OutputSpec(labels=["legit", "fraud"], positive_label="fraud"),
        training={
            "algorithm": f"sklearn GradientBoostingClassifier({trees} trees, depth {depth})",
            "rows": rows,
            "data": f"stream.bench.workload: {features} float features",
        },
    )
    fresh, _ = generate(rows // 2, features, np.random.default_rng(8))
    return onnx_bytes, with_output_references(manifest, onnx_bytes, fresh)
