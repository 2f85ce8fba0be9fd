from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema
from fastavro.validation import validate

from stream.deploy.control import model_event
from stream.deploy.state import initial_state
from stream.models.key import ModelKey
from stream.monitor.alerts import rejection_alert
from stream.retrain.trigger import RetrainRequest
from stream.schemas import SchemaCheck, check, previous_versions
from stream.settings import PROJECT_ROOT

SCHEMAS = PROJECT_ROOT / "schemas"


def schema(name: str) -> Any:
    return parse_schema(json.loads((SCHEMAS / name).read_text()))


def fields(node: Any) -> list[dict[str, Any]]:
    """Every field of every record in a schema, nested ones too."""
    out = []
    if isinstance(node, dict):
        for f in node.get("fields", []):
            out.append(f)
            out += fields(f["type"])
        out += fields(node.get("items"))
    elif isinstance(node, list):
        for member in node:
            out += fields(member)
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in SCHEMAS.glob("*.avsc")))
def test_every_schema_has_a_namespace_and_says_what_each_field_is(name: str) -> None:
    raw = json.loads((SCHEMAS / name).read_text())
    assert raw["namespace"] and raw["doc"]
    assert all(f.get("doc") for f in fields(raw)), name
    parse_schema(raw)


def test_the_records_the_pipeline_writes_fit_their_schemas() -> None:
    notice = rejection_alert("payments", 3, "host:1", "fraud:9", "checksum mismatch", 1_000)
    assert validate({**notice.record(), "revision": 3, "worker": "host:1"}, schema("alert.avsc"))
    state = initial_state("payments", ModelKey(name="fraud", version="1"))
    changed = state.deploy(ModelKey(name="fraud", version="2"), weight=10)
    assert validate(changed.model_dump(mode="json"), schema("control.avsc"))
    feedback = schema("feedback.avsc")
    assert validate({"event_id": "e1", "label": "fraud", "label_time": 5}, feedback)
    assert validate({"event_id": "e1", "label": "fraud", "label_time": None}, feedback)
    answer = model_event("payments", 3, "host-1", "applied", "serves revision 3", "fraud:2")
    step = model_event("payments", 3, "", "promoted", "fraud:2 serves", "fraud:2", "a@h", "why")
    assert validate(answer, schema("model_event.avsc")) and validate(
        step, schema("model_event.avsc")
    )
    request = RetrainRequest("payments", "policy:retrain.trigger", "Accuracy fell.", "a1", 5)
    assert validate(request.record(), schema("retrain_request.avsc"))


def write(folder: Path, name: str, change: Any) -> Path:
    folder.mkdir(exist_ok=True)
    for path in SCHEMAS.glob("*.avsc"):
        shutil.copy(path, folder / path.name)
    raw = json.loads((folder / name).read_text())
    change(raw)
    (folder / name).write_text(json.dumps(raw))
    return folder


def result_for(name: str, previous: Path) -> SchemaCheck:
    (result,) = [
        r for r in check(SCHEMAS, previous_versions(str(previous), SCHEMAS)) if r.name == name
    ]
    return result


def test_check_tells_compatible_changes_from_breaking_ones(tmp_path: Path) -> None:
    unchanged = check(SCHEMAS, previous_versions(str(SCHEMAS), SCHEMAS))
    assert {r.status for r in unchanged} == {"unchanged"}
    # The previous version lacked an optional field: adding it with a default is fine.
    older = write(tmp_path / "a", "feedback.avsc", lambda s: s["fields"].pop())  # label_time
    result = result_for("feedback.avsc", older)
    assert (result.status, result.backward, result.forward) == ("compatible", True, True)
    # The previous version lacked a required field: new readers cannot read old data.
    older = write(tmp_path / "b", "prediction.avsc", lambda s: s["fields"].pop(9))
    result = result_for("prediction.avsc", older)
    assert (result.status, result.backward, result.forward) == ("incompatible", False, True)
    assert "reader field missing default value" in result.detail
    # A schema that did not exist before is new.
    missing = tmp_path / "c"
    missing.mkdir()
    assert {r.status for r in check(SCHEMAS, previous_versions(str(missing), SCHEMAS))} == {"new"}


def test_against_a_git_revision() -> None:
    if not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    versions = previous_versions("HEAD", SCHEMAS)
    assert "prediction.avsc" in versions
    json.loads(versions["prediction.avsc"])
