"""Hypothesis profiles: ``ci`` (deterministic, used when CI=true), ``interpreter`` (deterministic, few examples:
the Triton interpreter), ``dev`` (default) and ``thorough``."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=25,
    deadline=None,
    print_blob=False,
    suppress_health_check=_QUIET,
)
# The Triton interpreter runs every kernel in numpy, about a second a call: CI runs the whole suite against
# `--backend triton` with this profile (deterministic, fewer examples).
settings.register_profile(
    "interpreter",
    derandomize=True,
    database=None,
    max_examples=6,
    deadline=None,
    print_blob=False,
    suppress_health_check=_QUIET,
)
settings.register_profile("dev", max_examples=50, deadline=None, suppress_health_check=_QUIET)
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=_QUIET)

PROFILES = ("ci", "interpreter", "dev", "thorough")


def default_profile() -> str:
    """``HYPOTHESIS_PROFILE`` if set, else ``ci`` when CI is true, else ``dev``."""
    chosen = os.environ.get("HYPOTHESIS_PROFILE")
    if chosen:
        if chosen not in PROFILES:
            raise ValueError(
                f"HYPOTHESIS_PROFILE={chosen!r} is not a profile: use one of {', '.join(PROFILES)}, or unset it"
            )
        return chosen
    return "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev"


def load(name: str | None = None) -> str:
    profile = name or default_profile()
    settings.load_profile(profile)
    return profile
