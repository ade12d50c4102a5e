"""Third-party-style backend ports used to test the harness: one correct port and one per classic KD bug.

``good_port`` is an independent, correct implementation of the backend protocol in plain numpy (it does not
import ``reference``). Every ``bug_*`` module is a small variant of it with exactly one bug that real KD,
softmax or cross-entropy code has shipped; each exposes ``BACKEND`` so it can be put under test as
``tests.ports.<module>:BACKEND`` (the repository root must be on ``sys.path``, as it is under pytest).
:data:`KILL_TABLE` says which falsifier must be the first to fail on each, and ``tests/test_ports.py``
holds the suite to it.
"""

from __future__ import annotations

KILL_TABLE: dict[str, tuple[str, str]] = {
    # port: (the bug, the first falsifier that fails on it: a reference-free law in every row)
    "bug_wrong_kl_direction": ("loss uses KL(q||p), gradient KL(p||q) (the seed's bug)", "F-KD-EDGE-001"),
    "bug_missing_t_squared": ("KD term not multiplied by T^2 in the loss only", "F-KD-EXACT-002"),
    "bug_mean_over_all_rows": ("mean divides by all rows, ignored ones included", "F-DISTILL-KDSTEP-001"),
    "bug_kd_on_ignored_rows": ("KD term computed on ignored rows", "F-KD-MASK-001"),
    "bug_softmax_no_max_shift": ("softmax without the max shift", "F-KD-SHIFT-001"),
    "bug_alpha_wrong_term": ("alpha weights the KD term instead of CE", "F-DISTILL-KDSTEP-001"),
    "bug_temperature_on_ce": ("the temperature also divides the CE logits", "F-DISTILL-KDSTEP-001"),
    "bug_undivided_mean_gradient": ("mean gradient not divided by the valid-row count", "F-DISTILL-KDSTEP-001"),
    "bug_global_max_shift": ("softmax shifted by the global max, not per row", "F-KD-SHIFT-001"),
    "bug_float32_fast_path_no_shift": ("float32 fast path without the max shift", "F-KD-SHIFT-001"),
    "bug_int32_labels_crash": ("int32 labels crash the int64-only kernel", "F-DISTILL-KDSTEP-001"),
    "bug_online_softmax_no_rescale": ("chunked softmax forgets to rescale its running sum", "F-KD-BLOCK-001"),
    "bug_drops_partial_row_block": ("launch grid rows // BLOCK drops the last partial block", "F-KD-BLOCK-001"),
    "bug_log_of_softmax": ("log_softmax computed as log(softmax)", "F-KD-EXACT-001"),
    "bug_hardcoded_ignore_index": ("ignore_index hard-coded to -100", "F-KD-MASK-003"),
    "bug_zero_weight_times_inf": ("weight-0 term multiplied in: 0 * inf = NaN", "F-KD-EDGE-001"),
    "bug_default_reduction_sum": ("cross_entropy defaults to reduction='sum'", "F-KD-DEFAULTS-001"),
    "bug_reverse_kl_consistent": ("reverse KL in loss and gradient, consistently", "F-KD-EDGE-001"),
    "bug_t_not_t_squared_consistent": ("KD term times T, not T^2, in loss and gradient", "F-KD-EXACT-002"),
    "bug_kl_mean_over_vocab": ("KL averaged over the vocabulary, in loss and gradient", "F-KD-EXACT-002"),
    "bug_temperature_clamped": ("temperature silently clamped to 10", "F-KD-LIMIT-001"),
    "bug_negative_labels_as_padding": ("negative labels read as padding", "F-KD-INPUT-011"),
    "bug_negative_label_wraps": ("label -1 wraps to the last class", "F-KD-INPUT-011"),
    "bug_softmax_unvalidated": ("softmax/log_softmax accept NaN, +inf, bad T", "F-KD-INPUT-012"),
    "bug_cross_entropy_unvalidated": ("cross_entropy casts and never checks its labels", "F-KD-INPUT-011"),
    "bug_kl_truncates_vocab": ("kl_divergence truncates a wider vocabulary", "F-KD-INPUT-014"),
}
"""Bug port -> (its bug, the first falsifier that must fail on it, whatever the hypothesis seed)."""

PORTS: dict[str, str] = {
    name: f"tests.ports.{name}:BACKEND" for name in ("good_port", *KILL_TABLE)
}
"""Module name -> ``module:attribute`` target of every port here."""

BUGGY: tuple[str, ...] = tuple(KILL_TABLE)
"""The ports with a bug (every one but ``good_port``)."""

VALUE_BUGS: tuple[str, ...] = (
    "bug_wrong_kl_direction",
    "bug_missing_t_squared",
    "bug_mean_over_all_rows",
    "bug_kd_on_ignored_rows",
    "bug_softmax_no_max_shift",
    "bug_alpha_wrong_term",
    "bug_temperature_on_ce",
    "bug_undivided_mean_gradient",
    "bug_global_max_shift",
    "bug_reverse_kl_consistent",
    "bug_t_not_t_squared_consistent",
    "bug_kl_mean_over_vocab",
)
"""The bug ports whose loss, gradient or softmax values differ from the reference on ordinary float64 inputs
(the others differ only on particular shapes, dtypes, labels, keywords or bad inputs)."""
