"""The OpenAPI 3.1 document, built from the declared operations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from teleconsult import __version__
from teleconsult.api.models import Health, Problem, Readiness
from teleconsult.api.problems import PROBLEM_CONTENT_TYPE
from teleconsult.api.registry import Operation

_REF = "#/components/schemas/{model}"
_ERROR_TEXT = {
    400: "Invalid request (validation_failed, malformed_json, invalid_cursor)",
    401: "Missing, invalid or expired credentials",
    403: "The caller's role may not do this",
    404: "No such object, or not visible to the caller",
    409: "Conflicts with the current state",
    413: "Request body too large",
    415: "Request body is not JSON",
    429: "Too many attempts; see Retry-After",
}


# Every operation takes it (core/logging.py), so clients know and fuzzers send it.
_REQUEST_ID: dict[str, Any] = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Echoed on the answer and in the logs when it is 1 to 64 of "
    "[A-Za-z0-9._-]; anything else is replaced by a new id.",
    "schema": {"type": "string"},
}


def _problem(status: int) -> dict[str, Any]:
    return {
        "description": _ERROR_TEXT.get(status, "Error"),
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": _REF.format(model="Problem")}}},
    }


def _fhir_outcome(status: int) -> dict[str, Any]:  # fhir (issue 14, F)
    text = "Accepted, in progress" if status < 400 else _ERROR_TEXT.get(status, "Error")
    return {
        "description": text + " (an OperationOutcome)",
        "content": {
            "application/fhir+json": {
                "schema": {
                    "type": "object",
                    "required": ["resourceType", "issue"],
                    "properties": {
                        "resourceType": {"const": "OperationOutcome"},
                        "issue": {"type": "array", "minItems": 1},
                    },
                }
            }
        },
    }


def _error_statuses(op: Operation) -> list[int]:
    statuses = set(op.errors)
    if op.body is not None or op.query is not None:
        statuses.add(400)
    if op.body is not None:
        statuses.update({413, 415})
    if op.action is not None:
        statuses.update({401, 403})
    if op.path_params:
        statuses.add(404)
    return sorted(statuses)


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF)
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        prop.pop("title", None)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if "description" in prop:
            param["description"] = prop.pop("description")
        params.append(param)
    return params


Mode = Literal["validation", "serialization"]


def build_openapi(operations: list[Operation]) -> dict[str, Any]:
    wanted: list[tuple[type[BaseModel], Mode]] = [(Problem, "serialization")]
    shared: tuple[type[BaseModel], ...] = (Health, Readiness)
    wanted += [(m, "serialization") for m in shared]
    for op in operations:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        if op.response is not None:
            wanted.append((op.response, "serialization"))
        wanted += [(model, "serialization") for _, model in op.alternatives]
    unique = list(dict.fromkeys(wanted))
    refs, top = models_json_schema(unique, ref_template=_REF)
    schemas: dict[str, Any] = top.get("$defs", {})

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag],
        }
        if op.description:
            item["description"] = op.description
        parameters: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": 128}
                if name in op.string_params
                else {"type": "string", "format": "uuid"},
            }
            for name in op.path_params
        ]
        if op.query is not None:
            parameters += _query_parameters(op.query)
        parameters.append(_REQUEST_ID)
        if parameters:
            item["parameters"] = parameters
        if op.body is not None:
            item["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
            }
        responses: dict[str, Any] = {}
        if op.response is not None:
            responses[str(op.status)] = {
                "description": "Success",
                "content": {"application/json": {"schema": refs[(op.response, "serialization")]}},
            }
        elif op.media_type is not None:
            responses[str(op.status)] = {
                "description": "Success",
                "content": {
                    op.media_type: {
                        "schema": {"type": "object"}
                        if op.media_type.endswith("json")
                        else {"type": "string"}
                    }
                },
            }
        else:
            responses[str(op.status)] = {"description": "Success, no content"}
        for status in _error_statuses(op):
            # fhir (issue 14, F): errors under /fhir/ are OperationOutcomes (fhir/outcome.py)
            fhir = op.path.startswith("/fhir/")
            responses[str(status)] = _fhir_outcome(status) if fhir else _problem(status)
        for status, model in op.alternatives:
            responses[str(status)] = {
                "description": "See the body",
                "content": {"application/json": {"schema": refs[(model, "serialization")]}},
            }
        item["responses"] = responses
        item["security"] = [{"bearerAuth": []}] if op.action is not None else []
        if op.action is not None:
            item["x-policy-action"] = op.action.value
        paths.setdefault(op.path, {})[op.method.lower()] = item

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "teleconsult API",
            "version": __version__,
            "description": "REST core of teleconsult. Errors are RFC 9457 problem documents "
            "with a stable `code`. Lists are paginated by opaque cursor.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
