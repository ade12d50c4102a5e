"""Counterexample files: the full-precision values of a failed falsifier, and replaying them.

A failure writes ``<failures dir>/<ID>.<subject>.npz`` (default ``.kd-contracts/failures/`` under the
current directory, or ``$KD_CONTRACTS_FAILURES``). It holds

* every drawn array and number at full precision, under readable names (``b.student``, ``r``), and every
  ``let`` value that is an array or a number (``let.analytic``), for a porter to load with ``numpy.load``;
* ``__drawn__``: the drawn values exactly as the check received them (pickled), which ``replay`` feeds back;
* ``__meta__``: JSON naming the falsifier, contract, subject, backend spec and the command that replays it.

``python -m spec replay FILE`` runs that one falsifier on those values again (no search), with the same
report. Replaying unpickles ``__drawn__``: replay only files you (or your CI) wrote.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from spec.files import write_bytes_atomic

DEFAULT_DIR = ".kd-contracts/failures"
ENV = "KD_CONTRACTS_FAILURES"


def failures_dir(option: str | None = None) -> Path:
    return Path(option or os.environ.get(ENV) or DEFAULT_DIR)


def file_name(falsifier_id: str, subject: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]+", "_", f"{falsifier_id}.{subject}") + ".npz"


def _flatten(prefix: str, value: Any, out: dict[str, np.ndarray]) -> None:
    if isinstance(value, np.ndarray) and value.dtype != object:
        out[prefix] = value
    elif isinstance(value, (bool, int, float, np.number)) or isinstance(value, str):
        out[prefix] = np.asarray(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _flatten(f"{prefix}.{f.name}", getattr(value, f.name), out)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, (list, tuple)):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return
        out[prefix] = arr
    elif hasattr(value, "__array__"):
        try:
            out[prefix] = np.asarray(value)
        except Exception:
            return


def save(path: Path, drawn: dict[str, Any], bound: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write the counterexample file (atomically, mode 0644 under the usual umask)."""
    arrays: dict[str, np.ndarray] = {}
    for name, value in drawn.items():
        _flatten(name, value, arrays)
    for name, value in bound.items():
        _flatten(f"let.{name}", value, arrays)
    try:
        blob = pickle.dumps(drawn, protocol=pickle.HIGHEST_PROTOCOL)
        arrays["__drawn__"] = np.frombuffer(blob, dtype=np.uint8)
    except Exception as exc:  # a drawn value that cannot be pickled: the arrays are still saved
        meta = {**meta, "replayable": False, "why_not_replayable": f"{type(exc).__name__}: {exc}"}
    arrays["__meta__"] = np.asarray(json.dumps(meta, sort_keys=True))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())
    return path


class ReplayError(Exception):
    """The file is not a counterexample this harness wrote; the message says why."""


def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(meta, drawn)`` of a counterexample file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "__meta__" not in data.files:
                raise ReplayError(f"{path} holds no __meta__: it is not a counterexample file of spec")
            meta = json.loads(str(data["__meta__"]))
            if "__drawn__" not in data.files:
                raise ReplayError(f"{path} cannot be replayed: {meta.get('why_not_replayable', 'no __drawn__')}")
            drawn = pickle.loads(data["__drawn__"].tobytes())
    except FileNotFoundError:
        raise ReplayError(f"{path}: no such file") from None
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise ReplayError(f"{path} is not a counterexample file: {exc}") from None
    return meta, drawn
