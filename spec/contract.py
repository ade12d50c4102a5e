"""The parsed form of a contract: what the validator checks and the generator writes out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spec.yaml_source import Document

DTYPES = ("float64", "float32", "bfloat16")


@dataclass(frozen=True)
class CheckSpec:
    """The executable part of a falsifier (``falsification_tests[i].check``)."""

    expect: str
    scope: str = "per_backend"
    dtypes: tuple[str, ...] = ("float64",)
    given: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    assume: tuple[str, ...] = ()
    let: tuple[tuple[str, str], ...] = ()
    raises: str | None = None
    match: str | None = None
    tolerance: dict[str, float] = field(default_factory=dict)
    tolerance_reason: str | None = None
    max_examples: int | None = None

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> CheckSpec:
        given: dict[str, tuple[str, dict[str, Any]]] = {}
        for var, spec in (data.get("given") or {}).items():
            if isinstance(spec, str):
                given[var] = (spec, {})
            else:
                given[var] = (str(spec.get("strategy", "")), dict(spec.get("with") or {}))
        # A field of the wrong type has a schema error already; read it as absent rather than dropping
        # the whole check (a string tolerance must not silence every other rule of the falsifier).
        dtypes = tuple(d for d in _list(data.get("dtypes")) if isinstance(d, str)) or ("float64",)
        tol = data.get("tolerance")
        tolerance = {d: tol for d in DTYPES} if _is_number(tol) else (tol if isinstance(tol, dict) else {})
        return cls(
            expect=data.get("expect", ""),
            scope=data.get("scope", "per_backend"),
            dtypes=dtypes,
            given=given,
            assume=tuple(_list(data.get("assume"))),
            let=tuple((data.get("let") or {}).items()),
            raises=_str(data.get("raises")),
            match=_str(data.get("match")),
            tolerance={k: float(v) for k, v in tolerance.items() if _is_number(v)},
            tolerance_reason=data.get("tolerance_reason"),
            max_examples=data.get("max_examples"),
        )


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class FalsifierSpec:
    id: str
    rule: str
    prediction: str
    if_fails: str
    index: int
    check: CheckSpec | None
    requires: tuple[str, ...] = ()
    """Optional backend members the falsifier needs (``requires:`` in the contract)."""


@dataclass
class Contract:
    """One contract file: ``name`` is the file stem (``kd-loss-v1``), the name ``depends_on`` uses."""

    path: Path
    doc: Document
    falsifiers: list[FalsifierSpec]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def data(self) -> dict[str, Any]:
        return self.doc.data

    @property
    def metadata(self) -> dict[str, Any]:
        meta = self.data.get("metadata")
        return meta if isinstance(meta, dict) else {}

    @property
    def binding(self) -> str | None:
        return self.metadata.get("binding")

    @property
    def version(self) -> str | None:
        return self.metadata.get("version")

    @classmethod
    def from_document(cls, path: Path, doc: Document) -> Contract:
        falsifiers = []
        items = doc.data.get("falsification_tests")
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                continue
            try:  # a malformed check has schema errors already; it gets no semantic checks
                check = CheckSpec.from_data(item["check"]) if isinstance(item.get("check"), dict) else None
            except (AttributeError, TypeError, ValueError):
                check = None
            falsifiers.append(
                FalsifierSpec(
                    id=str(item.get("id", "")),
                    rule=str(item.get("rule", "")),
                    prediction=str(item.get("prediction", "")),
                    if_fails=str(item.get("if_fails", "")),
                    index=i,
                    check=check,
                    requires=tuple(r for r in _list(item.get("requires")) if isinstance(r, str)),
                )
            )
        return cls(path, doc, falsifiers)
