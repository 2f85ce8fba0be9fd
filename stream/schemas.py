"""``stream schemas check``: is every schema in ``schemas/`` compatible with its last version?

Backward: a reader with the new schema reads data written with the old one
(consumers upgrade first). Forward: a reader with the old schema reads data
written with the new one (producers upgrade first). The avro package's
``ReaderWriterCompatibilityChecker`` decides both, as Schema Registry does.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.errors import SchemaParseException
from avro.schema import Schema, parse

from stream.errors import SettingsError


@dataclass(frozen=True)
class SchemaCheck:
    name: str
    status: str  # new | unchanged | compatible | incompatible
    backward: bool = True
    forward: bool = True
    detail: str = ""


def previous_versions(against: str, schemas_dir: Path) -> dict[str, str]:
    """Each schema's text in ``against``: a folder of .avsc files, or a git revision."""
    folder = Path(against)
    if folder.is_dir():
        return {p.name: p.read_text() for p in sorted(folder.glob("*.avsc"))}
    ok, _ = _git(["rev-parse", "--verify", "--quiet", f"{against}^{{commit}}"], schemas_dir)
    if not ok:
        raise SettingsError("--against", f"{against!r} is neither a folder nor a git revision")
    _, top = _git(["rev-parse", "--show-toplevel"], schemas_dir)
    root = Path(top.strip()).resolve()
    relative = schemas_dir.resolve().relative_to(root).as_posix()
    ok, listing = _git(["ls-tree", "--name-only", f"{against}:{relative}"], root)
    if not ok:
        return {}  # no schemas folder then: every schema is new
    versions = {}
    for name in listing.split():
        if name.endswith(".avsc"):
            _, versions[name] = _git(["show", f"{against}:{relative}/{name}"], root)
    return versions


def _git(args: list[str], cwd: Path) -> tuple[bool, str]:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise SettingsError("--against", "git is not installed; give a folder instead") from None
    return done.returncode == 0, done.stdout


def _parse(text: str, name: str, where: str) -> Schema:
    try:
        return parse(text)
    except (SchemaParseException, ValueError) as exc:
        raise SettingsError(
            "schemas", f"{name} ({where}) is not a valid Avro schema: {exc}"
        ) from None


def check(schemas_dir: Path, previous: dict[str, str]) -> list[SchemaCheck]:
    checker = ReaderWriterCompatibilityChecker()
    out = []
    for path in sorted(schemas_dir.glob("*.avsc")):
        new = _parse(path.read_text(), path.name, "now")
        if path.name not in previous:
            out.append(SchemaCheck(path.name, "new"))
            continue
        old = _parse(previous[path.name], path.name, "before")
        if old == new:
            out.append(SchemaCheck(path.name, "unchanged"))
            continue
        backward = checker.get_compatibility(reader=new, writer=old)
        forward = checker.get_compatibility(reader=old, writer=new)
        ok_back = backward.compatibility is SchemaCompatibilityType.compatible
        ok_forward = forward.compatibility is SchemaCompatibilityType.compatible
        ways = (("backward", backward, ok_back), ("forward", forward, ok_forward))
        detail = "; ".join(
            f"{way}: "
            + ", ".join(i.value.replace("_", " ") for i in result.incompatibilities)
            + f" ({', '.join(sorted(result.messages))} at {', '.join(sorted(result.locations))})"
            for way, result, ok in ways
            if not ok
        )
        status = "compatible" if ok_back and ok_forward else "incompatible"
        out.append(SchemaCheck(path.name, status, ok_back, ok_forward, detail))
    return out
