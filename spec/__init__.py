"""spec: a domain-free contract harness.

It loads YAML contracts, validates them (``python -m spec validate``), generates a pytest falsifier
suite from them (``python -m spec generate``) and runs it (``python -m spec check``). The domain
vocabulary -- which functions a check may call, which strategies draw its inputs, which backends can be
put under test -- comes from one *binding* module that the contracts name (see ``spec.binding``).
"""

__version__ = "0.1.0"
