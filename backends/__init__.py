"""Backends: ports of the KD math surface of :mod:`reference.kd`, loaded as plugins.

``import backends`` is cheap: it imports neither torch nor cupy. The protocol a port implements is in
:mod:`backends.protocol`; finding and selecting backends is :mod:`backends.registry`, re-exported here.
"""

from backends.protocol import (
    FLOAT_DTYPES,
    REQUIRED_MEMBERS,
    Availability,
    Backend,
    BackendError,
    conformance_problems,
    missing_members,
)
from backends.registry import GROUP, Selection, clear_cache, get, known, select

__all__ = [
    "FLOAT_DTYPES",
    "GROUP",
    "REQUIRED_MEMBERS",
    "Availability",
    "Backend",
    "BackendError",
    "Selection",
    "clear_cache",
    "conformance_problems",
    "get",
    "known",
    "missing_members",
    "select",
]
