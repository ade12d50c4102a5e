"""The peer tests call other systems' real code (the ``[peers]`` extra: trl, liger-kernel, triton)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)
