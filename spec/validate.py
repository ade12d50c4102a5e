"""``python -m spec validate``: schema and semantic rules over a set of contracts.

Every rule has a stable ID (see ``RULES``); every finding is reported with its file, line and column.
Validation reads files and imports the binding module the contracts name; it never executes a check and
never writes a file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spec import checklang
from spec.binding import Binding, BindingError, load_binding
from spec.contract import Contract, FalsifierSpec
from spec.diagnostics import ERROR, WARNING, Diagnostic
from spec.schema_check import schema_diagnostics
from spec.yaml_source import load_or_diagnostics

RULES: dict[str, str] = {
    "FILE-UNREADABLE": "the file cannot be read",
    "FILE-ENCODING": "the file is not UTF-8",
    "FILE-EMPTY": "the file is empty or holds only comments",
    "FILE-NOT-MAPPING": "the top level is not a mapping",
    "YAML-SYNTAX": "the YAML does not parse",
    "YAML-DUPLICATE-KEY": "a mapping repeats a key",
    "YAML-UNSAFE-TAG": "a tag other than plain data (!!python/..., merge keys)",
    "YAML-TOO-LARGE": "the file, or its alias expansion, is too large",
    "SCHEMA-UNKNOWN-KEY": "a key the format does not define",
    "SCHEMA-REQUIRED": "a required field is missing",
    "SCHEMA-EMPTY": "a required field is empty",
    "SCHEMA-TYPE": "a field has the wrong type",
    "SCHEMA-VALUE": "a field is not one of its allowed values",
    "SCHEMA-FORMAT": "a field does not have its required form",
    "SCHEMA-INVALID": "any other schema violation",
    "ID-DUPLICATE": "a falsifier ID is used twice, in one contract or across contracts",
    "DEPENDS-MISSING": "depends_on names a contract that does not exist",
    "BINDING-INVALID": "the binding module cannot be imported or has no BINDING",
    "CHECK-MISSING": "a falsifier has no executable check",
    "CHECK-SYNTAX": "a check expression does not parse",
    "CHECK-FORBIDDEN": "a check expression uses something outside the whitelist",
    "CHECK-UNKNOWN-NAME": "a check expression uses a name nobody declared",
    "CHECK-UNKNOWN-ATTRIBUTE": "a check expression uses an attribute the namespace does not declare",
    "CHECK-SCOPE": "a check uses a name that is not available in its scope",
    "CHECK-SHADOW": "a given or let name hides a binding name",
    "CHECK-UNKNOWN-STRATEGY": "a given variable names a strategy the binding does not declare",
    "CHECK-STRATEGY-ARG": "a strategy is given a parameter it does not take",
    "CHECK-UNKNOWN-ERROR": "raises names an exception the binding does not declare",
    "CHECK-MATCH": "match is not a valid regular expression",
    "CHECK-DTYPE": "a check names a dtype the binding does not support",
    "TOLERANCE-INVALID": "a tolerance is not a positive finite number, or a dtype has none",
    "TOLERANCE-REASON": "float32/bfloat16 tolerances without tolerance_reason (warning)",
    "QA-GATE-MISSING": "the contract has no qa_gate (warning)",
    "COVERS-UNKNOWN": "a falsifier's covers names no invariant or proof obligation of its contract",
    "COVERAGE-MISSING": "an invariant or proof obligation with no falsifier that covers it (warning)",
    "COVERAGE-DTYPE": "an invariant or obligation covered on fewer dtypes than the contract declares (warning)",
    "GENERATED-MISSING": "the generated test file of a contract is missing",
    "GENERATED-STALE": "the generated test file of a contract does not match the contract",
}


class UsageError(Exception):
    """A bad command-line argument (exit 2)."""


@dataclass
class Validation:
    contracts: list[Contract] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    bindings: dict[str, Binding] = field(default_factory=dict)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == ERROR]

    @property
    def n_falsifiers(self) -> int:
        return sum(len(c.falsifiers) for c in self.contracts)


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """The contract files named by ``paths``: files as given, directories' ``*.yaml``/``*.yml``."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not found:
                raise UsageError(f"{raw}: the directory holds no *.yaml contract")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(
                f"{raw}: no such file or directory (run from the project root, or name the contracts)"
            )
    return files


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def validate(paths: Iterable[str | Path], *, generated_dir: Path | None = None) -> Validation:
    """Validate the contracts at ``paths``. With ``generated_dir``, also report generated test files
    that are missing or stale there."""
    result = Validation()
    for path in discover(paths):
        doc, diags = load_or_diagnostics(path, _display(path))
        result.diagnostics.extend(diags)
        if doc is None:
            continue
        schema = schema_diagnostics(doc)
        result.diagnostics.extend(schema)
        result.contracts.append(Contract.from_document(path, doc))
    _cross_contract_rules(result)
    for contract in result.contracts:
        _contract_rules(contract, result)
        _coverage_rules(contract, result)
    if generated_dir is not None and not result.errors:
        from spec.generate import stale_files

        for path, problem in stale_files(result.contracts, generated_dir):
            rule = "GENERATED-MISSING" if problem == "missing" else "GENERATED-STALE"
            what = {
                "missing": "is missing",
                "stale": "does not match its contract",
                "orphan": "was generated from a contract that no longer exists",
            }[problem]
            result.diagnostics.append(
                Diagnostic(_display(path), 0, 0, ERROR, rule, f"{what}: run `python -m spec generate`")
            )
    result.diagnostics.sort()
    return result


def _add(
    result: Validation,
    contract: Contract,
    pointer: tuple[Any, ...],
    rule: str,
    message: str,
    severity: str = ERROR,
    *,
    key: bool = False,
) -> None:
    line, col = contract.doc.where(pointer, key=key)
    result.diagnostics.append(Diagnostic(contract.doc.path, line, col, severity, rule, message))


def _cross_contract_rules(result: Validation) -> None:
    seen: dict[str, tuple[Contract, int]] = {}
    names = {c.name for c in result.contracts}
    for contract in result.contracts:
        for f in contract.falsifiers:
            if not f.id:
                continue
            if f.id in seen:
                other, line = seen[f.id]
                _add(
                    result,
                    contract,
                    ("falsification_tests", f.index, "id"),
                    "ID-DUPLICATE",
                    f"falsifier ID {f.id} is already used in {other.doc.path}:{line}: IDs are unique across contracts",
                )
            else:
                seen[f.id] = (contract, contract.doc.where(("falsification_tests", f.index, "id"))[0])
        deps = contract.metadata.get("depends_on")
        for i, dep in enumerate(deps if isinstance(deps, list) else []):  # not a list: a schema error
            if isinstance(dep, str) and dep not in names:
                hint = checklang.did_you_mean(dep, names)
                _add(
                    result,
                    contract,
                    ("metadata", "depends_on", i),
                    "DEPENDS-MISSING",
                    f"depends_on names '{dep}', but no contract file {dep}.yaml is being validated{hint}",
                )


def _contract_rules(contract: Contract, result: Validation) -> None:
    if "qa_gate" not in contract.data:
        _add(
            result,
            contract,
            (),
            "QA-GATE-MISSING",
            "the contract has no qa_gate: add one naming its pass criteria",
            WARNING,
        )
    binding = _binding(contract, result)
    for f in contract.falsifiers:
        where = ("falsification_tests", f.index)
        if f.check is None:
            if "check" not in contract.data["falsification_tests"][f.index]:
                _add(
                    result,
                    contract,
                    where,
                    "CHECK-MISSING",
                    f"falsifier {f.id or f.index} has no check: every falsifier carries an executable check",
                )
            continue
        if binding is not None:
            _check_rules(contract, f, binding, result)


def _binding(contract: Contract, result: Validation) -> Binding | None:
    name = contract.binding
    if not isinstance(name, str) or not name:
        return None
    if name not in result.bindings:
        try:
            result.bindings[name] = load_binding(name)
        except BindingError as exc:
            _add(result, contract, ("metadata", "binding"), "BINDING-INVALID", str(exc))
            return None
    return result.bindings[name]


def _check_rules(contract: Contract, f: FalsifierSpec, binding: Binding, result: Validation) -> None:
    check = f.check
    assert check is not None
    base = ("falsification_tests", f.index, "check")

    def add(pointer: tuple[Any, ...], rule: str, message: str, severity: str = ERROR) -> None:
        _add(result, contract, (*base, *pointer), rule, f"{f.id}: {message}", severity)

    for dtype in check.dtypes:
        if dtype not in binding.dtypes:
            add(
                ("dtypes",),
                "CHECK-DTYPE",
                f"dtype {dtype} is not one the binding supports ({', '.join(binding.dtypes)})",
            )
    records: dict[str, tuple[str, ...]] = {}
    plain: set[str] = set()
    for var, (strategy_name, params) in check.given.items():
        strategy = binding.strategies.get(strategy_name)
        if strategy is None:
            hint = checklang.did_you_mean(strategy_name, binding.strategies)
            add(
                ("given", var),
                "CHECK-UNKNOWN-STRATEGY",
                f"'{var}' draws from unknown strategy '{strategy_name}'{hint}",
            )
            plain.add(var)
            continue
        for param in params:
            if param not in strategy.params:
                hint = checklang.did_you_mean(param, strategy.params) or (
                    f" (it takes: {', '.join(strategy.params) or 'nothing'})"
                )
                add(
                    ("given", var, "with", param),
                    "CHECK-STRATEGY-ARG",
                    f"strategy '{strategy_name}' takes no parameter '{param}'{hint}",
                )
        if strategy.fields:
            records[var] = strategy.fields
        else:
            plain.add(var)
    subject = set(binding.subject_namespaces)
    namespaces = {
        k: v
        for k, v in binding.namespace_attributes.items()
        if check.scope == "per_backend" or k not in subject
    }
    unavailable = {
        k: "stands for the backend under test: it is only available when scope is per_backend"
        for k in subject
        if check.scope != "per_backend"
    }
    names = set(binding.names) | plain
    if check.tolerance or contract.data["falsification_tests"][f.index]["check"].get("tolerance") is not None:
        names.add("tol")
    else:
        unavailable["tol"] = "is only defined when the falsifier declares a tolerance"
    declared = set(binding.names) | set(binding.namespace_attributes)
    for var in check.given:
        if var in declared or var == "tol":
            add(
                ("given", var),
                "CHECK-SHADOW",
                f"given variable '{var}' hides the binding's '{var}': rename it",
            )
    scope = checklang.Scope(names=names, namespaces=namespaces, records=records, unavailable=unavailable)
    if check.assume and not check.given:
        add(("assume",), "CHECK-SCOPE", "assume needs given variables to filter; this check draws none")
    for i, expr in enumerate(check.assume):
        _expression(add, ("assume", i), expr, scope)
    for name, expr in check.let:
        _expression(add, ("let", name), expr, scope)
        if name in declared or name in check.given or name == "tol":
            add(("let", name), "CHECK-SHADOW", f"let name '{name}' hides another name: rename it")
        scope.names.add(name)
    # a missing expect is SCHEMA-REQUIRED already: not also an "empty expression" at another line
    _expression(add, ("expect",), contract.data["falsification_tests"][f.index]["check"].get("expect"), scope)
    if check.raises is not None and check.raises not in binding.errors:
        hint = checklang.did_you_mean(check.raises, binding.errors)
        add(
            ("raises",),
            "CHECK-UNKNOWN-ERROR",
            f"raises names '{check.raises}', which the binding does not declare "
            f"(declared: {', '.join(binding.errors) or 'none'}){hint}",
        )
    if check.match is not None:
        if check.raises is None:
            add(("match",), "CHECK-MATCH", "match is only meaningful with raises")
        try:
            re.compile(check.match)
        except re.error as exc:
            add(("match",), "CHECK-MATCH", f"match is not a valid regular expression: {exc}")
    _tolerance_rules(contract, f, add)


def _expression(add: Any, pointer: tuple[Any, ...], expr: str, scope: checklang.Scope) -> None:
    if not isinstance(expr, str):  # missing or not a string: the schema reports it
        return
    for problem in checklang.problems(expr, scope):
        add(pointer, problem.rule, f"{problem.message} (at column {problem.col} of `{_short(expr)}`)")


def _short(expr: str, limit: int = 60) -> str:
    one = " ".join(str(expr).split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def _tolerance_rules(contract: Contract, f: FalsifierSpec, add: Any) -> None:
    check = f.check
    assert check is not None
    raw = contract.data["falsification_tests"][f.index]["check"].get("tolerance")
    if raw is None:
        return
    items = raw.items() if isinstance(raw, dict) else [(None, raw)]
    for dtype, value in items:
        pointer = ("tolerance", dtype) if dtype is not None else ("tolerance",)
        label = f"tolerance for {dtype}" if dtype is not None else "tolerance"
        if dtype is not None and dtype not in ("float64", "float32", "bfloat16"):
            add(
                pointer,
                "TOLERANCE-INVALID",
                f"{label}: '{dtype}' is not a dtype (float64, float32, bfloat16)",
            )
        elif isinstance(value, str):
            add(
                pointer,
                "TOLERANCE-INVALID",
                f"{label} is the string {value!r}: YAML reads 1e-6 as text, write it as 1.0e-6",
            )
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            add(pointer, "TOLERANCE-INVALID", f"{label} must be a positive finite number, not {value!r}")
        elif not math.isfinite(value) or value <= 0:
            add(pointer, "TOLERANCE-INVALID", f"{label} is {value}: it must be a positive finite number")
    if isinstance(raw, dict):
        for dtype in check.dtypes:
            if dtype not in raw:
                add(
                    ("tolerance",),
                    "TOLERANCE-INVALID",
                    f"the check runs in {dtype} but declares no tolerance for it",
                )
        if any(d != "float64" for d in raw) and not check.tolerance_reason:
            add(
                ("tolerance",),
                "TOLERANCE-REASON",
                "float32/bfloat16 tolerances need a tolerance_reason saying where the error comes from",
                WARNING,
            )


def _coverage_rules(contract: Contract, result: Validation) -> None:
    """Every invariant (``equations.<name>.invariants[i]``) and proof obligation (``proof_obligations[i].
    property``) is named by the ``covers`` list of a falsifier that tests it, on every dtype the contract's
    per-backend checks declare; a ``covers`` entry must name one of them."""
    claims: dict[str, tuple[tuple[Any, ...], str]] = {}  # text -> (pointer, what)
    equations = contract.data.get("equations")
    for name, eq in (equations.items() if isinstance(equations, dict) else []):
        invariants = eq.get("invariants") if isinstance(eq, dict) else None
        for i, text in enumerate(invariants if isinstance(invariants, list) else []):
            if isinstance(text, str):
                claims.setdefault(text, (("equations", name, "invariants", i), f"invariant '{text}' of {name}"))
    obligations = contract.data.get("proof_obligations")
    for i, ob in enumerate(obligations if isinstance(obligations, list) else []):
        if isinstance(ob, dict) and isinstance(ob.get("property"), str):
            text = ob["property"]
            claims.setdefault(text, (("proof_obligations", i, "property"), f"proof obligation '{text}'"))

    declared: set[str] = set()
    tested: dict[str, set[str]] = {text: set() for text in claims}
    items = contract.data.get("falsification_tests")
    for f in contract.falsifiers:
        runs = set(f.check.dtypes) if f.check is not None and f.check.scope == "per_backend" else set()
        declared |= runs
        raw = items[f.index].get("covers") if isinstance(items, list) else None
        for j, text in enumerate(raw if isinstance(raw, list) else []):
            if not isinstance(text, str):
                continue  # a schema error already
            if text not in claims:
                hint = checklang.did_you_mean(text, claims)
                _add(
                    result,
                    contract,
                    ("falsification_tests", f.index, "covers", j),
                    "COVERS-UNKNOWN",
                    f"{f.id}: covers '{text}', which is no invariant or proof obligation of this contract{hint}",
                )
                continue
            # a check that runs once (not per backend and dtype) covers its claim whatever the dtype
            tested[text] |= runs if runs else {"*"}
    for text, (pointer, what) in claims.items():
        dtypes = tested[text]
        if not dtypes:
            _add(
                result,
                contract,
                pointer,
                "COVERAGE-MISSING",
                f"{what} has no falsifier that tests it: add one and name it in its covers list",
                WARNING,
            )
        elif "*" not in dtypes and declared - dtypes:
            missing = ", ".join(d for d in ("float64", "float32", "bfloat16") if d in declared - dtypes)
            _add(
                result,
                contract,
                pointer,
                "COVERAGE-DTYPE",
                f"{what} is tested on {', '.join(sorted(dtypes))} only, not on {missing}, which the contract's "
                "checks declare: add those dtypes to a covering falsifier (with a per-dtype tolerance, or on "
                "inputs every dtype holds exactly)",
                WARNING,
            )
