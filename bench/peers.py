"""What every peer engine does to one event, shared so the engines differ only in their loop.

Decode the Avro event (fastavro), build the float32 feature vector (nulls
filled, categories as codes), score with ONNX, encode an Avro prediction.
Needs only numpy, fastavro and onnxruntime, so it runs in the peers' own
virtual environment too. ``spec.json`` is written by ``stream bench``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from typing import Any

import fastavro
import numpy as np
import onnxruntime as ort


class Scoring:
    def __init__(self, spec_path: str) -> None:
        with open(spec_path) as f:
            spec = json.load(f)
        self.event_schema = fastavro.parse_schema(spec["event_schema"])
        self.prediction_schema = fastavro.parse_schema(spec["prediction_schema"])
        self.json = spec["format"] == "json"
        self.features = spec["features"]
        self.codes = [{c: float(i) for i, c in enumerate(f["categories"])} for f in self.features]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            spec["onnx"], options, providers=["CPUExecutionProvider"]
        )
        self.input_name = spec["input_name"]
        self.output_name = spec["output_name"]
        self.model = spec["model"]
        self.version = spec["version"]
        self.pipeline = spec["pipeline"]

    def decode(self, value: bytes) -> dict[str, Any]:
        if self.json:
            return dict(json.loads(value))
        return fastavro.schemaless_reader(io.BytesIO(value), self.event_schema, None)

    def vector(self, event: dict[str, Any]) -> list[float]:
        row = []
        for feature, codes in zip(self.features, self.codes, strict=True):
            value = event.get(feature["name"])
            if codes:
                row.append(codes.get(value, -1.0))
            else:
                row.append(feature["fill"] if value is None else float(value))
        return row

    def predict(self, rows: list[list[float]]) -> np.ndarray:
        x = np.asarray(rows, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: x})[0][:, 1]

    def encode(self, event: dict[str, Any], score: float) -> bytes:
        now = int(time.time() * 1000)
        label = "fraud" if score >= 0.5 else "legit"
        record = {
            "event_id": event["event_id"], "key": event["event_id"].encode(),
            "pipeline": self.pipeline,
            "model_name": self.model, "model_version": self.version, "variant": "champion",
            "label": label, "score": float(score),
            "probabilities": [1.0 - float(score), float(score)],
            "confidence": max(float(score), 1.0 - float(score)),
            "event_time": event.get("event_time") or now, "scored_time": now,
            "latency_ms": float(now - (event.get("event_time") or now)), "inference_ms": 0.0,
        }  # fmt: skip
        out = io.BytesIO()
        fastavro.schemaless_writer(out, self.prediction_schema, record)
        return out.getvalue()


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out-topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--batch", type=int, default=1000)
    return parser.parse_args()


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). getrusage's ru_maxrss would count the parent's
    peak too: Linux keeps it across fork and exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Meter:
    """First event in, last output acknowledged, CPU seconds between them, peak RSS."""

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.cpu_first = 0.0

    def started(self) -> None:
        if not self.first:
            self.first = time.time()
            self.cpu_first = time.process_time()

    def report(self) -> None:
        line = json.dumps(
            {
                "count": self.count,
                "first": self.first,
                "last": time.time(),
                "cpu_seconds": time.process_time() - self.cpu_first,
                "peak_rss_mib": peak_rss_mib(),
            }
        )
        os.write(1, (line + "\n").encode())  # fd 1 itself: faust redirects sys.stdout
