"""Root conftest: pytest reads options only from conftests it meets before collection, so ``--backend``
(used by the falsifier suite in ``falsifiers/``) is registered here too, for ``pytest`` run from the root."""

from spec.pytest_plugin import FalsifierPlugin


def pytest_addoption(parser):
    FalsifierPlugin.add_options(parser)
