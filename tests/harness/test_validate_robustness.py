"""Validation of arbitrarily damaged contracts, in-process: it never raises, every finding names a rule
of ``RULES`` and a place inside the file, and a contract it accepts generates Python that compiles."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from spec.generate import render
from spec.validate import RULES, validate

from .support import MINIMAL, REPO

BASES = {
    "minimal": yaml.safe_load(MINIMAL.read_text("utf-8")),
    "kd-loss": yaml.safe_load((REPO / "contracts" / "kd-loss-v1.yaml").read_text("utf-8")),
}

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "",
            " ",
            "x",
            "kd_batch",
            "1e-6",
            "tol",
            "kd",
            "b.student",
            "__import__('os')",
            "(",
            "'",
            '"""',
            "\\",
            "float16",
            "ValueError",
            "per_backend",
            "once",
            "bindings.kd",
            ".kd",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.one_of(st.sampled_from(["strategy", "with", "expect", "x", "tol"]), st.integers(0, 2)), inner, max_size=3
        ),
    ),
    max_leaves=6,
)
KEYS = st.one_of(
    st.sampled_from(
        [
            "scope",
            "dtypes",
            "given",
            "assume",
            "let",
            "raises",
            "match",
            "tolerance",
            "check",
            "depends_on",
            "with",
            "strategy",
            "Bad Key",
            "tol",
            "kd",
        ]
    ),
    st.integers(0, 2),
    st.none(),
    st.booleans(),
)


def _pointers(value: Any, pointer: tuple = ()) -> list[tuple]:
    out = [pointer]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _pointers(v, (*pointer, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _pointers(v, (*pointer, i))
    return out


@st.composite
def damaged(draw: st.DrawFn) -> dict:
    data = copy.deepcopy(BASES[draw(st.sampled_from(sorted(BASES)))])
    for _ in range(draw(st.integers(1, 3))):
        pointer = draw(st.sampled_from(_pointers(data)[1:]))
        parent = data
        for part in pointer[:-1]:
            parent = parent[part]
        if isinstance(parent[pointer[-1]], dict) and draw(st.booleans()):
            parent[pointer[-1]][draw(KEYS)] = draw(VALUES)  # add (or replace) a key
        else:
            parent[pointer[-1]] = draw(VALUES)
    return data


@given(damaged())
def test_validation_of_a_damaged_contract_never_raises(tmp_path_factory: pytest.TempPathFactory, data: dict) -> None:
    path = tmp_path_factory.mktemp("damaged") / "damaged-v1.yaml"
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    path.write_text(text, "utf-8")
    result = validate([path])
    n_lines = len(text.splitlines())
    for d in result.diagnostics:
        assert d.rule in RULES, d
        assert 0 <= d.line <= n_lines and d.col >= 0, d
        assert (d.line == 0) == (d.col == 0), d
    if not result.errors:
        for contract in result.contracts:
            compile(render(contract, Path("falsifiers")), "generated.py", "exec")
