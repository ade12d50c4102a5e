"""Schema validation of one loaded contract, reported as diagnostics with rule IDs and places."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from spec.checklang import did_you_mean
from spec.diagnostics import ERROR, Diagnostic
from spec.yaml_source import Document


@cache
def contract_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the contract format, as shipped in the package."""
    return json.loads(resources.files("spec").joinpath("schema/contract.schema.json").read_text("utf-8"))


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(contract_schema())


def _where(pointer: tuple[Any, ...]) -> str:
    return (
        ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in pointer).replace(".[", "[")
        or "top level"
    )


def _subschema_properties(error: jsonschema.ValidationError) -> list[str]:
    return sorted(error.schema.get("properties", {}))


def schema_diagnostics(doc: Document) -> list[Diagnostic]:
    """Every way ``doc.data`` departs from the contract schema."""
    out: list[Diagnostic] = []
    for error in _validator().iter_errors(doc.data):
        pointer = tuple(error.absolute_path)
        kind = error.validator
        if kind == "additionalProperties":
            allowed = _subschema_properties(error)
            extra = [k for k in error.instance if k not in error.schema.get("properties", {})]
            for key in extra:
                line, col = doc.where((*pointer, key), key=True)
                hint = did_you_mean(str(key), allowed) or f" (allowed: {', '.join(allowed)})"
                out.append(
                    Diagnostic(
                        doc.path,
                        line,
                        col,
                        ERROR,
                        "SCHEMA-UNKNOWN-KEY",
                        f"unknown key '{key}' in {_where(pointer)}{hint}",
                    )
                )
            continue
        if "propertyNames" in error.schema_path:  # the error is about a key of the mapping at pointer
            line, col = doc.where((*pointer, error.instance), key=True)
            out.append(
                Diagnostic(
                    doc.path,
                    line,
                    col,
                    ERROR,
                    "SCHEMA-FORMAT",
                    f"key {error.instance!r} in {_where(pointer)} must be lower_snake_case",
                )
            )
            continue
        line, col = doc.where(pointer)
        if kind == "required":  # at the key that opens the mapping, not at its first entry
            line, col = doc.where(pointer, key=True)
            missing = [k for k in error.validator_value if k not in error.instance]
            for key in missing:
                out.append(
                    Diagnostic(
                        doc.path,
                        line,
                        col,
                        ERROR,
                        "SCHEMA-REQUIRED",
                        f"missing required field '{key}' in {_where(pointer)}",
                    )
                )
            continue
        blank = isinstance(error.instance, str) and not error.instance.strip()
        if kind in ("minLength", "minItems", "minProperties") or (kind == "pattern" and blank):
            rule, message = "SCHEMA-EMPTY", f"{_where(pointer)} is empty: it needs a value"
        elif kind == "type":
            rule = "SCHEMA-TYPE"
            message = (
                f"{_where(pointer)} must be {_article(error.validator_value)}, not {_kind(error.instance)}"
            )
        elif kind == "enum":
            choices = ", ".join(map(str, error.validator_value))
            rule, message = (
                "SCHEMA-VALUE",
                f"{_where(pointer)} is {error.instance!r}: choose one of {choices}",
            )
        elif kind == "pattern":
            rule, message = "SCHEMA-FORMAT", _pattern_message(pointer, error)
        else:
            rule, message = "SCHEMA-INVALID", f"{_where(pointer)}: {error.message}"
        out.append(Diagnostic(doc.path, line, col, ERROR, rule, message))
    return list(dict.fromkeys(out))  # one finding once: "" fails both minLength and pattern


def _pattern_message(pointer: tuple[Any, ...], error: jsonschema.ValidationError) -> str:
    field = pointer[-1] if pointer else ""
    examples = {
        "version": 'a semantic version such as "1.0.0" (quoted)',
        "id": "an upper-case ID such as F-DISTILL-KDSTEP-001",
        "binding": "a dotted module path such as bindings.kd",
    }
    want = examples.get(str(field), f"to match {error.validator_value}")
    if isinstance(field, int) and len(pointer) > 1 and pointer[-2] == "depends_on":
        want = "a contract name: a file stem such as kd-loss-v1"
    return f"{_where(pointer)} is {error.instance!r}: expected {want}"


def _article(kind: Any) -> str:
    if isinstance(kind, list):
        return " or ".join(_article(k) for k in kind)
    return {
        "object": "a mapping",
        "array": "a list",
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
        "null": "null",
    }.get(kind, str(kind))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"
