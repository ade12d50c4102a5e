"""Third-party-style backend ports used to test the harness: one correct port and one per classic KD bug.

``good_port`` is an independent, correct implementation of the backend protocol in plain numpy (it does not
import ``reference``). Every ``bug_*`` module is a small variant of it with exactly one classic KD bug; each
exposes ``BACKEND`` so it can be put under test as ``tests.ports.<module>:BACKEND`` (the repository root
must be on ``sys.path``, as it is under pytest).
"""

PORTS: dict[str, str] = {
    "good_port": "tests.ports.good_port:BACKEND",
    "bug_wrong_kl_direction": "tests.ports.bug_wrong_kl_direction:BACKEND",
    "bug_missing_t_squared": "tests.ports.bug_missing_t_squared:BACKEND",
    "bug_mean_over_all_rows": "tests.ports.bug_mean_over_all_rows:BACKEND",
    "bug_kd_on_ignored_rows": "tests.ports.bug_kd_on_ignored_rows:BACKEND",
    "bug_softmax_no_max_shift": "tests.ports.bug_softmax_no_max_shift:BACKEND",
    "bug_alpha_wrong_term": "tests.ports.bug_alpha_wrong_term:BACKEND",
    "bug_temperature_on_ce": "tests.ports.bug_temperature_on_ce:BACKEND",
    "bug_undivided_mean_gradient": "tests.ports.bug_undivided_mean_gradient:BACKEND",
}
"""Module name -> ``module:attribute`` target of every port here."""

BUGGY: tuple[str, ...] = tuple(name for name in PORTS if name.startswith("bug_"))
"""The ports with a bug (every one but ``good_port``)."""
