"""``python -m spec validate``: schema and semantic rules over a set of contracts.

Every rule has a stable ID (see ``RULES``); every finding is reported with its file, line and column.
Validation reads files and imports the binding module the contracts name; it never executes a check and
never writes a file.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spec import checklang
from spec.binding import Binding, BindingError, load_binding
from spec.contract import Contract, FalsifierSpec
from spec.diagnostics import ERROR, WARNING, Diagnostic
from spec.generate import escape
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
    "YAML-BAD-VALUE": "a scalar does not construct as its tag says (!!int abc), or holds a lone surrogate",
    "CONTRACT-NAME": "the contract's file name is not lowercase words joined by hyphens, ending .yaml or .yml",
    "GENERATED-COLLISION": "two contracts would generate the same test file",
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
    "CHECK-MISSING": "a falsifier has neither an executable check nor a test",
    "TEST-INVALID": "a falsifier's test is missing, or does not name the falsifier back",
    "TEST-AND-CHECK": "a falsifier has both a check and a test: keep one",
    "CHECK-SYNTAX": "a check expression does not parse",
    "CHECK-TOO-COMPLEX": "a check expression is too long or nests too deeply",
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


CONTRACT_FILE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*\.ya?ml$")
"""A contract's file name: lowercase words of letters and digits joined by single hyphens, then ``.yaml`` or
``.yml`` (``kd-loss-v1.yaml``). The stem is the contract's name, and it reaches generated code and file names."""

MAX_NAME = 100


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """The contract files named by ``paths``: files as given, directories' ``*.yaml``/``*.yml``.

    Nothing is opened here: a FIFO, a device or a symlink loop is listed and then reported by the loader."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if _is_dir(path):
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not found:
                raise UsageError(f"{_shown(raw)}: the directory holds no *.yaml contract")
            files.extend(found)
        elif os.path.lexists(path):
            files.append(path)
        else:
            raise UsageError(
                f"{_shown(raw)}: no such file or directory (run from the project root, or name the contracts)"
            )
    return files


def scanned_directories(paths: Iterable[str | Path]) -> list[Path]:
    """The directories among ``paths``: the only places whose retired contracts' generated files may go."""
    return [Path(p) for p in paths if _is_dir(Path(p))]


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a symlink loop, a name too long: not a directory
        return False


def _shown(raw: str | Path) -> str:
    return escape(str(raw))


def _display(path: Path) -> str:
    try:
        shown = str(path.absolute().relative_to(Path.cwd()))
    except (ValueError, OSError):
        shown = str(path)
    return escape(shown)


def _name_rules(result: Validation) -> None:
    """CONTRACT-NAME for file names outside the documented pattern; GENERATED-COLLISION for two contracts
    that would write the same test file (``kd-loss-v1.yaml`` and ``kd-loss-v1.yml``)."""
    from spec.generate import test_file_name

    first: dict[str, Contract] = {}
    for contract in result.contracts:
        name = contract.path.name
        if len(name) > MAX_NAME or not CONTRACT_FILE.match(name):
            result.diagnostics.append(
                Diagnostic(
                    contract.doc.path,
                    0,
                    0,
                    ERROR,
                    "CONTRACT-NAME",
                    f"the file name '{escape(name[:MAX_NAME])}' is not a contract name: use lowercase letters, "
                    f"digits and single hyphens, ending .yaml or .yml, at most {MAX_NAME} characters "
                    "(e.g. kd-loss-v1.yaml)",
                )
            )
            continue
        target = test_file_name(contract)
        if target in first:
            result.diagnostics.append(
                Diagnostic(
                    contract.doc.path,
                    0,
                    0,
                    ERROR,
                    "GENERATED-COLLISION",
                    f"this contract and {first[target].doc.path} would both generate {target}: rename one",
                )
            )
        else:
            first[target] = contract


def validate(paths: Iterable[str | Path], *, generated_dir: Path | None = None) -> Validation:
    """Validate the contracts at ``paths``. With ``generated_dir``, also report generated test files
    that are missing or stale there."""
    paths = list(paths)
    result = Validation()
    for path in discover(paths):
        doc, diags = load_or_diagnostics(path, _display(path))
        result.diagnostics.extend(diags)
        if doc is None:
            continue
        schema = schema_diagnostics(doc)
        result.diagnostics.extend(schema)
        result.contracts.append(Contract.from_document(path, doc))
    _name_rules(result)
    _cross_contract_rules(result)
    for contract in result.contracts:
        _contract_rules(contract, result)
        _coverage_rules(contract, result)
    if generated_dir is not None and not result.errors:
        from spec.generate import stale_files

        for path, problem in stale_files(result.contracts, generated_dir, scanned_directories(paths)):
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
        if "test" in contract.data["falsification_tests"][f.index]:
            _named_test_rules(contract, f, result)
            continue
        if f.check is None:
            if "check" not in contract.data["falsification_tests"][f.index]:
                _add(
                    result,
                    contract,
                    where,
                    "CHECK-MISSING",
                    f"falsifier {f.id or f.index} has no check: every falsifier carries an executable check "
                    "(or names a Python test with test: path/to/test_file.py::test_name)",
                )
            continue
        if binding is not None:
            _check_rules(contract, f, binding, result)


def _named_test_rules(contract: Contract, f: FalsifierSpec, result: Validation) -> None:
    """A ``test:`` falsifier: the test exists (read, not imported) and names the falsifier ID back."""
    from spec import named_tests

    where = ("falsification_tests", f.index)
    if "check" in contract.data["falsification_tests"][f.index]:
        _add(result, contract, (*where, "check"), "TEST-AND-CHECK",
             f"{f.id}: has both a check and a test: keep the one that reads better, delete the other", key=True)
    if not f.test or not f.id:  # not a string, or no ID: a schema error already
        return
    root = contract.path.resolve().parent.parent
    for problem in named_tests.problems(root, f.test, f.id):
        _add(result, contract, (*where, "test"), "TEST-INVALID", f"{f.id}: {problem}")


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
        reason = checklang.pattern_problem(check.match)
        if reason is not None:
            add(("match",), "CHECK-MATCH", f"match is not a valid regular expression: {reason}")
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
