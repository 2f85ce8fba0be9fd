"""Clients nobody here wrote: kcat produces JSON events and reads the predictions back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from stream.demo.data import events
from tests.integration.conftest import PipelineHarness

pytestmark = pytest.mark.integration


def kcat() -> str:
    found = shutil.which("kcat") or shutil.which("kafkacat")
    if found is None:
        if os.environ.get("STREAM_REQUIRE_TOOLS"):
            pytest.fail("kcat is not installed (Debian: apt-get install kcat)")
        pytest.skip("kcat is not installed; .ci/run installs it")
    return found


def test_kcat_produces_json_events_and_consumes_the_predictions(harness: PipelineHarness) -> None:
    tool = kcat()
    pipeline, path = harness.pipeline(input={"format": "json"})
    worker = harness.worker(path)
    worker.wait_ready()
    sent = list(events(200, np.random.default_rng(41), now_ms=1_764_480_000_000))
    lines = "".join(f"{e['event_id']}\t{json.dumps(e)}\n" for e in sent)
    lines += "broken-1\t{not json\n"
    produced = subprocess.run(
        [tool, "-P", "-b", harness.bootstrap, "-t", pipeline.events_topic, "-K", "\t"],
        input=lines, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    keys = {e["event_id"].encode() for e in sent} | {b"broken-1"}
    out = harness.outcomes(pipeline, keys)
    assert worker.stop() == 0
    assert len(out[pipeline.predictions_topic]) == 200
    assert [m.key() for m in out[pipeline.deadletter_topic]] == [b"broken-1"]

    consumed = subprocess.run(
        [tool, "-C", "-b", harness.bootstrap, "-t", pipeline.predictions_topic, "-o", "beginning",
         "-e", "-q", "-f", "%k %S\\n"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert consumed.returncode == 0, consumed.stderr
    rows = [line.split() for line in consumed.stdout.splitlines() if line.strip()]
    assert {key for key, _ in rows} == {e["event_id"] for e in sent}
    assert all(int(size) > 0 for _, size in rows)
