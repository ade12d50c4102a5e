"""Hand-written tests of the harness, the reference and the backends.

A package so that pytest puts the repository root on ``sys.path`` (rootdir-based import), which makes
``tests.ports.<module>:BACKEND`` importable as a ``module:attribute`` backend.
"""
