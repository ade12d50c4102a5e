"""Hand-written tests of the contract harness (``spec``): the validator's rules, the CLI, the generator,
the pytest plugin and ``python -m spec check``. Fixtures are in ``fixtures/``; see ``support.py``."""
