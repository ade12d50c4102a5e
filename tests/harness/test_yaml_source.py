"""spec.yaml_source in-process: plain data only, the place of every key and value, and the limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from spec import yaml_source
from spec.yaml_source import SourceError, load

from .support import MINIMAL


def write(tmp_path: Path, text: str | bytes, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def problems(tmp_path: Path, text: str | bytes) -> list[tuple[int, int, str, str]]:
    with pytest.raises(SourceError) as info:
        load(write(tmp_path, text))
    return [(d.line, d.col, d.rule, d.message) for d in info.value.diagnostics]


NESTED = """\
# a comment
metadata:
  version: "1.0.0"
  references:
    - first
    - {title: second, year: 2015}
falsification_tests:
  - id: F-A-001
    check:
      given:
        b: {strategy: kd_batch, with: {rows: [1, 4]}}
      expect: >-
        close(a,
        b, tol)
"""


def test_places_of_nested_keys_and_values(tmp_path: Path) -> None:
    doc = load(write(tmp_path, NESTED))
    assert doc.data["metadata"]["references"][1] == {"title": "second", "year": 2015}
    assert doc.where(()) == (2, 1)
    assert doc.where(("metadata",), key=True) == (2, 1)
    assert doc.where(("metadata",)) == (3, 3)  # a block mapping starts at its first key
    assert doc.where(("metadata", "version")) == (3, 12)
    assert doc.where(("metadata", "version"), key=True) == (3, 3)
    assert doc.where(("metadata", "references", 0)) == (5, 7)
    assert doc.where(("metadata", "references", 1, "year")) == (6, 29)
    assert doc.where(("metadata", "references", 1, "year"), key=True) == (6, 23)
    assert doc.where(("falsification_tests", 0)) == (8, 5)
    assert doc.where(("falsification_tests", 0, "id")) == (8, 9)
    given_b = ("falsification_tests", 0, "check", "given", "b")
    assert doc.where((*given_b, "with", "rows", 1)) == (11, 50)
    assert doc.where(("falsification_tests", 0, "check", "expect")) == (12, 15)
    assert doc.data["falsification_tests"][0]["check"]["expect"] == "close(a, b, tol)"


def test_a_missing_pointer_falls_back_to_the_nearest_enclosing_place(tmp_path: Path) -> None:
    doc = load(write(tmp_path, NESTED))
    assert doc.where(("metadata", "no-such-key", 3)) == doc.where(("metadata",))
    assert doc.where(("metadata", "no-such-key"), key=True) == doc.where(("metadata",))


def test_plain_scalars_stay_plain(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "a: 2015-01-01\nb: 1e-6\nc: 1.0e-6\nd: .nan\ne: ~\nf: yes\ng: '007'\n"))
    assert doc.data["a"] == "2015-01-01"  # timestamps are kept as text, not datetime objects
    assert doc.data["b"] == "1e-6"  # YAML 1.1: no dot, so a string (TOLERANCE-INVALID explains it)
    assert doc.data["c"] == 1.0e-6
    assert doc.data["d"] != doc.data["d"]
    assert doc.data["e"] is None and doc.data["f"] is True and doc.data["g"] == "007"


def test_sha256_is_of_the_bytes_on_disk(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.read_bytes())
    assert load(path).sha256 == yaml_source.sha256_of(path)


def test_duplicate_keys_name_both_lines(tmp_path: Path) -> None:
    found = problems(tmp_path, "a: 1\nb:\n  c: 1\n  d: 2\n  c: 3\na: 4\n")
    assert [(line, col, rule) for line, col, rule, _ in found] == [
        (5, 3, "YAML-DUPLICATE-KEY"),
        (6, 1, "YAML-DUPLICATE-KEY"),
    ]
    assert "duplicate key 'c' (first at line 3)" in found[0][3]
    assert "duplicate key 'a' (first at line 1)" in found[1][3]


def test_duplicate_keys_compare_values_not_spelling(tmp_path: Path) -> None:
    found = problems(tmp_path, "1: a\n'1': b\n0x1: c\n")  # int 1, str '1', int 1 again
    assert [(line, rule) for line, _, rule, _ in found] == [(3, "YAML-DUPLICATE-KEY")]


def test_merge_keys_are_refused_but_aliases_are_fine(tmp_path: Path) -> None:
    found = problems(tmp_path, "base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n")
    assert [(line, col, rule) for line, col, rule, _ in found] == [(3, 3, "YAML-UNSAFE-TAG")]
    assert "merge keys" in found[0][3]
    doc = load(write(tmp_path, "base: &b {x: 1}\nother: *b\n"))
    assert doc.data["other"] == {"x": 1}


def test_unsafe_tags_are_never_constructed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr("os.system", lambda cmd: calls.append(cmd) or 0)
    found = problems(
        tmp_path,
        (
            "a: !!python/object/apply:os.system ['echo pwned']\n"
            "b: !!python/object/new:pathlib.Path ['x']\n"
            "c: !!python/name:os.system\n"
            "d: !local tag\n"
        ),
    )
    assert [(line, col, rule) for line, col, rule, _ in found] == [
        (1, 4, "YAML-UNSAFE-TAG"),
        (2, 4, "YAML-UNSAFE-TAG"),
        (3, 4, "YAML-UNSAFE-TAG"),
        (4, 4, "YAML-UNSAFE-TAG"),
    ]
    assert calls == []


def test_a_complex_key_is_a_syntax_error(tmp_path: Path) -> None:
    found = problems(tmp_path, "a: 1\n? [x, y]\n: 2\n")
    assert [(line, col, rule) for line, col, rule, _ in found] == [(2, 3, "YAML-SYNTAX")]


def test_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_source, "MAX_NODES", 50)
    monkeypatch.setattr(yaml_source, "MAX_DEPTH", 4)
    [(_, _, rule, message)] = problems(tmp_path, "a: &a [1, 2, 3, 4, 5, 6, 7, 8]\nb: [*a, *a, *a, *a, *a, *a, *a]\n")
    assert rule == "YAML-TOO-LARGE" and "more than 50 nodes" in message
    [(line, col, rule, message)] = problems(tmp_path, "a:\n  b:\n    c:\n      d:\n        e: [1]\n")
    assert (line, col, rule) == (5, 9, "YAML-TOO-LARGE") and "nesting deeper than 4" in message
    monkeypatch.setattr(yaml_source, "MAX_BYTES", 10)
    [(line, col, rule, message)] = problems(tmp_path, "a: 123456789\n")
    assert (line, col, rule) == (0, 0, "YAML-TOO-LARGE") and "13 bytes" in message


def test_nesting_beyond_the_recursion_limit_is_reported(tmp_path: Path) -> None:
    [(line, col, rule, _)] = problems(tmp_path, "a: " + "[" * 3000 + "]" * 3000 + "\n")
    assert (line, col, rule) == (0, 0, "YAML-TOO-LARGE")


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (b"", "FILE-EMPTY"),
        (b"# only\n# comments\n", "FILE-EMPTY"),
        (b"\xef\xbb\xbf   \n", "FILE-EMPTY"),
        (b"- a\n- b\n", "FILE-NOT-MAPPING"),
        (b"just a string\n", "FILE-NOT-MAPPING"),
        (b"a: [1\n", "YAML-SYNTAX"),
        (b"a: caf\xe9\n", "FILE-ENCODING"),
    ],
)
def test_not_a_contract(tmp_path: Path, text: bytes, rule: str) -> None:
    [(_, _, found, _)] = problems(tmp_path, text)
    assert found == rule


def test_an_unreadable_path(tmp_path: Path) -> None:
    [d] = yaml_source.load_or_diagnostics(tmp_path / "missing.yaml")[1]
    assert (d.line, d.col, d.rule) == (0, 0, "FILE-UNREADABLE")


KEYS = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda k: k not in ("y", "n", "yes", "no", "on", "off", "true", "false", "null")
)
VALUES = st.recursive(
    st.one_of(st.integers(-1000, 1000), st.text("abc xyz", max_size=8), st.booleans()),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(KEYS, children, max_size=3)),
    max_leaves=12,
)


def _pointers(value: object, pointer: tuple = ()) -> list[tuple]:
    out = [pointer]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _pointers(v, (*pointer, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _pointers(v, (*pointer, i))
    return out


@given(st.dictionaries(KEYS, VALUES, min_size=1, max_size=4), st.booleans())
def test_round_trip_and_places_of_generated_documents(
    tmp_path_factory: pytest.TempPathFactory, data: dict, flow: bool
) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow, sort_keys=False, width=60)
    path = tmp_path_factory.mktemp("gen") / "c.yaml"
    path.write_text(text, "utf-8")
    doc = load(path)
    assert doc.data == data
    lines = text.splitlines()
    for pointer in _pointers(data):
        if pointer and isinstance(pointer[-1], str):  # every key is where its text is
            line, col = doc.where(pointer, key=True)
            assert lines[line - 1][col - 1 :].startswith(pointer[-1]), (pointer, line, col, text)
        line, col = doc.where(pointer)
        assert 1 <= line <= len(lines) and 1 <= col <= len(lines[line - 1]) + 1
