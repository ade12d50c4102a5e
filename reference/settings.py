"""Parsing of the distillation command's flags and environment variables.

One function per setting. Each returns a plain value or raises :class:`SettingsError` whose message is one
sentence naming the variable or flag, the bad value and the fix, for example::

    DISTILL_MAX_STEPS='abc' is not an integer: set it to a whole number >= 1, or unset it

Rules shared by every setting:

- A flag wins over its environment variable. When the flag is given, the variable is not read at all.
- An environment variable that is unset, empty or only whitespace counts as unset (shells make ``VAR=`` easy
  to leave behind; an empty value has no other sensible meaning). An explicitly empty flag is an error.
- Integers are written in plain decimal (``7``, ``+7``; surrounding whitespace is ignored). ``7.0``, ``1e3``,
  ``0x10`` and ``1_000`` are rejected rather than guessed at.
- Nothing is clamped and nothing is silently ignored: a value out of range is an error.

Functions take the environment as a mapping argument (never ``os.environ`` directly) so callers and tests can
pass their own.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "DEFAULT_LOG_EVERY",
    "ENV_LOG_EVERY",
    "ENV_MAX_STEPS",
    "ENV_PROJECT_TO_STEPS",
    "SettingsError",
    "log_every",
    "max_steps",
    "non_negative_int",
    "output_dir",
    "positive_float",
    "positive_int",
    "project_to_steps",
    "temperature",
    "unit_interval_float",
]

ENV_MAX_STEPS = "DISTILL_MAX_STEPS"
ENV_LOG_EVERY = "DISTILL_LOG_EVERY"
ENV_PROJECT_TO_STEPS = "DISTILL_PROJECT_TO_STEPS"

DEFAULT_LOG_EVERY = 10

_INTEGER = re.compile(r"[+-]?[0-9]+")

MAX_INT = 10**15
"""The largest whole number any flag or variable takes: far past any real run, far below where a count stops
fitting a float (a 400-digit DISTILL_PROJECT_TO_STEPS raised OverflowError in the projection)."""

NAME_MAX = 255
"""The longest path component most file systems accept (bytes); a longer one fails only when it is created."""


class SettingsError(ValueError):
    """A flag or environment variable holds a value the command cannot use."""


def _source(name: str, raw: str) -> str:
    return f"{name}={_short(raw)!r}"


def _short(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters for a message (a 400-digit value is shown by its head)."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _fix(name: str, wanted: str) -> str:
    if name.startswith("-"):
        return f"pass {wanted}, or leave the flag out"
    return f"set it to {wanted}, or unset it"


def _parse_int(name: str, raw: str, minimum: int) -> int:
    wanted = f"a whole number >= {minimum}"
    text = raw.strip()
    if not _INTEGER.fullmatch(text):
        raise SettingsError(f"{_source(name, raw)} is not an integer: {_fix(name, wanted)}")
    if len(text.lstrip("+-").lstrip("0")) > len(str(MAX_INT)) or int(text) > MAX_INT:
        raise SettingsError(
            f"{_source(_short(name), _short(raw))} is too large: {_fix(name, f'{wanted} and at most {MAX_INT:,}')}"
        )
    value = int(text)
    if value < minimum:
        raise SettingsError(f"{_source(name, raw)} is below {minimum}: {_fix(name, wanted)}")
    return value


def _parse_float(name: str, raw: str, wanted: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{_source(name, raw)} is not a number: {_fix(name, wanted)}") from None
    if not math.isfinite(value):
        raise SettingsError(f"{_source(name, raw)} is not finite: {_fix(name, wanted)}")
    return value


def _from_env(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return raw


def positive_int(name: str, raw: str) -> int:
    """Parse a flag or variable ``name`` whose value must be a whole number >= 1."""
    return _parse_int(name, raw, 1)


def non_negative_int(name: str, raw: str) -> int:
    """Parse a flag or variable ``name`` whose value must be a whole number >= 0."""
    return _parse_int(name, raw, 0)


def output_dir(name: str, raw: str, cwd: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the output directory flag ``name`` against ``cwd`` (default: the working directory).

    The directory need not exist, but the path must not be empty and must not be, or lie under, a file.
    Nothing is created here.
    """
    if raw.strip() == "":
        raise SettingsError(f"{_source(name, raw)} is empty: pass a directory path, or leave the flag out")
    long = next((part for part in Path(raw).parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long is not None:
        raise SettingsError(
            f"{_source(name, raw)} has a component of {len(os.fsencode(long))} bytes, over the {NAME_MAX}-byte "
            "limit of file names: pass a shorter path"
        )
    path = Path(os.getcwd() if cwd is None else cwd) / raw
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise SettingsError(
                    f"{_source(name, raw)} is not a directory ({candidate} is a file): "
                    f"pass a directory path, or leave the flag out"
                )
            break
    return path


def positive_float(name: str, raw: str) -> float:
    """Parse a flag or variable ``name`` whose value must be a finite number > 0."""
    wanted = "a finite number > 0"
    value = _parse_float(name, raw, wanted)
    if value <= 0:
        raise SettingsError(f"{_source(name, raw)} is not > 0: {_fix(name, wanted)}")
    return value


def temperature(name: str, raw: str) -> float:
    """Parse a temperature flag: a number in the range every KD function accepts
    (:data:`reference.checks.TEMPERATURE_MIN` to :data:`~reference.checks.TEMPERATURE_MAX`)."""
    from reference.checks import TEMPERATURE_MAX, TEMPERATURE_MIN

    wanted = f"a number in [{TEMPERATURE_MIN:g}, {TEMPERATURE_MAX:g}]"
    value = _parse_float(name, raw, wanted)
    if not TEMPERATURE_MIN <= value <= TEMPERATURE_MAX:
        raise SettingsError(
            f"{_source(name, raw)} is outside [{TEMPERATURE_MIN:g}, {TEMPERATURE_MAX:g}]: {_fix(name, wanted)}"
        )
    return value


def unit_interval_float(name: str, raw: str) -> float:
    """Parse a flag or variable ``name`` whose value must be a number in [0, 1]."""
    wanted = "a number between 0 and 1 inclusive"
    value = _parse_float(name, raw, wanted)
    if not 0.0 <= value <= 1.0:
        raise SettingsError(f"{_source(name, raw)} is outside [0, 1]: {_fix(name, wanted)}")
    return value


def max_steps(flag: str | None, env: Mapping[str, str]) -> int | None:
    """Smoke-mode step count from ``--max-steps`` or ``DISTILL_MAX_STEPS``; ``None`` when neither is set.

    The value must be a whole number >= 1: 0 and negative values are errors, not "no limit".
    """
    if flag is not None:
        return _parse_int("--max-steps", flag, 1)
    raw = _from_env(env, ENV_MAX_STEPS)
    return None if raw is None else _parse_int(ENV_MAX_STEPS, raw, 1)


def log_every(flag: str | None, env: Mapping[str, str]) -> int:
    """Progress interval from ``--log-every`` or ``DISTILL_LOG_EVERY`` (default 10).

    0 prints epoch lines only, 1 prints every step; negative or non-integer values are errors.
    """
    if flag is not None:
        return _parse_int("--log-every", flag, 0)
    raw = _from_env(env, ENV_LOG_EVERY)
    return DEFAULT_LOG_EVERY if raw is None else _parse_int(ENV_LOG_EVERY, raw, 0)


def project_to_steps(env: Mapping[str, str], default: int) -> int:
    """Step count a smoke run projects its wall time to, from ``DISTILL_PROJECT_TO_STEPS``.

    ``default`` (the configured epochs * steps per epoch) applies when the variable is unset or empty.
    """
    raw = _from_env(env, ENV_PROJECT_TO_STEPS)
    return default if raw is None else _parse_int(ENV_PROJECT_TO_STEPS, raw, 1)
