"""A correct KD backend written the way a third party would port it: plain numpy, float64.

It deliberately does **not** import ``reference``: it is an independent implementation of the backend
protocol (``backends/protocol.py``), so agreeing with the reference means something. It is also the base of
the ``bug_*`` ports next to it, each of which overrides one of the small hooks below to plant one classic
KD bug; so the hooks are where the math lives:

* :meth:`GoodPort._log_softmax` / :meth:`GoodPort._softmax`: ``log_softmax(z / T)``, shifted by the row max;
* :meth:`GoodPort._kd_divergence`: the divergence used *inside* kd_loss, ``KL(p_teacher || q_student)``;
* :meth:`GoodPort._weights`: the loss weights ``(w_ce, w_kl) = (alpha, (1 - alpha) T^2)``
  (:meth:`GoodPort._loss_weights` lets a bug change them in the loss only);
* :meth:`GoodPort._ce_temperature`: the temperature of the CE term (1: CE is untempered);
* :meth:`GoodPort._kd_rows_mask`: the rows the KD term is computed on (the valid ones);
* :meth:`GoodPort._loss_mean_count` / :meth:`GoodPort._gradient_mean_count`: the ``mean`` denominators.

The gradient is derived from the same hooks (``w_ce (softmax(s/Tc) - e_y) / Tc + (w_kl / T) (q - p)``), so a
bug planted in a hook changes loss and gradient consistently unless the bug is meant to split them.

It takes float64 and float32 logits (computing in float64, as the numpy backend does) and int64 and int32
labels. Use: ``python -m spec check --backend tests.ports.good_port:BACKEND`` (from the repository root).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backends.protocol import Availability

REDUCTIONS = ("none", "sum", "mean")
ARRAY_DTYPES = {"float64": np.float64, "float32": np.float32, "int64": np.int64, "int32": np.int32}


class GoodPort:
    """A correct, independent numpy port of the KD math surface."""

    name = "good-port"
    device = "cpu"
    dtypes: tuple[str, ...] = ("float64", "float32")

    # ----------------------------------------------------------------------------------------------------
    # Environment and conversion.
    # ----------------------------------------------------------------------------------------------------

    def available(self) -> Availability:
        return Availability(True)

    def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
        if dtype not in ARRAY_DTYPES:
            raise ValueError(f"{self.name} supports float64/float32 logits and int64/int32 labels, not {dtype!r}")
        return np.asarray(array, dtype=ARRAY_DTYPES[dtype])

    def to_numpy(self, x: Any) -> np.ndarray:
        array = np.asarray(x)
        return array.astype(np.float64) if array.dtype.kind == "f" else array

    # ----------------------------------------------------------------------------------------------------
    # Input checks (this port's own words; the same inputs are refused as by the reference).
    # ----------------------------------------------------------------------------------------------------

    @staticmethod
    def _temperature(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"temperature must be a positive finite number, not {value!r}")
        if not math.isfinite(float(value)) or float(value) <= 0:
            raise ValueError(f"temperature must be a positive finite number, not {value!r}")
        return float(value)

    @staticmethod
    def _alpha(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"alpha must be a number in [0, 1], not {value!r}")
        if not 0.0 <= float(value) <= 1.0:  # NaN fails this comparison too
            raise ValueError(f"alpha must be a number in [0, 1], not {value!r}")
        return float(value)

    @staticmethod
    def _reduction(value: Any) -> str:
        if not isinstance(value, str) or value not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, not {value!r}")
        return value

    @staticmethod
    def _ignore_index(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"ignore_index must be an int, not {value!r}")
        return int(value)

    @staticmethod
    def _logits(name: str, x: Any) -> np.ndarray:
        try:
            z = np.asarray(x)
        except ValueError as error:
            raise ValueError(f"{name}: not an array ({error})") from None
        if z.dtype.kind not in "fiu":
            raise ValueError(f"{name}: dtype {z.dtype} is not real")
        if z.ndim == 0 or z.shape[-1] == 0:
            raise ValueError(f"{name}: needs a non-empty last (vocab) axis, shape is {z.shape}")
        z = z.astype(np.float64)
        if np.isnan(z).any():
            raise ValueError(f"{name}: NaN")
        if np.isposinf(z).any():
            raise ValueError(f"{name}: +inf")
        if not np.isfinite(z).any(axis=-1).all():
            raise ValueError(f"{name}: a row has no finite logit")
        return z

    @staticmethod
    def _labels(y: Any, logits_shape: tuple[int, ...], ignore_index: int) -> np.ndarray:
        labels = np.asarray(y)
        if labels.size == 0 and not hasattr(y, "dtype"):
            labels = labels.astype(np.int64)
        if labels.dtype.kind not in "iu":
            raise ValueError(f"labels: dtype {labels.dtype} is not an integer type")
        if labels.shape != logits_shape[:-1]:
            raise ValueError(f"labels: shape {labels.shape} does not match logits {logits_shape}")
        vocab = logits_shape[-1]
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
        if bad.any():
            raise ValueError(f"labels: {labels[bad][0]} is outside [0, {vocab})")
        return labels.astype(np.int64)

    @staticmethod
    def _pair(s: np.ndarray, t: np.ndarray) -> None:
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(f"vocab sizes differ: student {s.shape[-1]}, teacher {t.shape[-1]}")
        if s.shape != t.shape:
            raise ValueError(f"student {s.shape} and teacher {t.shape} logits differ in shape")

    def _kd_args(self, s, t, y, temperature, alpha, ignore_index, reduction):  # type: ignore[no-untyped-def]
        temperature = self._temperature(temperature)
        alpha = self._alpha(alpha)
        reduction = self._reduction(reduction)
        ignore_index = self._ignore_index(ignore_index)
        s = self._logits("student_logits", s)
        t = self._logits("teacher_logits", t)
        self._pair(s, t)
        y = self._labels(y, s.shape, ignore_index)
        return s, t, y, y != ignore_index, temperature, alpha, reduction

    # ----------------------------------------------------------------------------------------------------
    # Hooks: the math, one idea each (the bug ports override these).
    # ----------------------------------------------------------------------------------------------------

    def _log_softmax(self, z: np.ndarray, temperature: float) -> np.ndarray:
        scaled = z / temperature
        shifted = scaled - scaled.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

    def _softmax(self, z: np.ndarray, temperature: float) -> np.ndarray:
        return np.exp(self._log_softmax(z, temperature))

    def _kl(self, s: np.ndarray, t: np.ndarray, temperature: float) -> np.ndarray:
        """Per-row KL(softmax(t/T) || softmax(s/T)); entries where the teacher has no mass add 0."""
        log_p = self._log_softmax(t, temperature)
        log_q = self._log_softmax(s, temperature)
        p = np.exp(log_p)
        with np.errstate(invalid="ignore"):
            return np.where(p > 0, p * (log_p - log_q), 0.0).sum(axis=-1)

    def _kd_divergence(self, s: np.ndarray, t: np.ndarray, temperature: float) -> np.ndarray:
        """The divergence inside kd_loss: forward KL(teacher || student)."""
        return self._kl(s, t, temperature)

    def _weights(self, alpha: float, temperature: float) -> tuple[float, float]:
        """(weight of CE, weight of KL) in the loss; the gradient is derived from the same weights."""
        return alpha, (1.0 - alpha) * temperature**2

    def _loss_weights(self, alpha: float, temperature: float) -> tuple[float, float]:
        """The weights kd_loss itself uses: :meth:`_weights` (a hook to split loss from gradient)."""
        return self._weights(alpha, temperature)

    def _ce_temperature(self, temperature: float) -> float:
        """Temperature of the CE term: 1, the hard-label loss is untempered."""
        return 1.0

    def _kd_rows_mask(self, valid: np.ndarray) -> np.ndarray:
        """Rows the KD term is computed on: the valid ones."""
        return valid

    def _loss_mean_count(self, valid: np.ndarray) -> int:
        return int(valid.sum())

    def _gradient_mean_count(self, valid: np.ndarray) -> int:
        return int(valid.sum())

    # ----------------------------------------------------------------------------------------------------
    # Assembly.
    # ----------------------------------------------------------------------------------------------------

    def _ce(self, s: np.ndarray, y: np.ndarray, valid: np.ndarray, temperature: float) -> np.ndarray:
        log_q = self._log_softmax(s, temperature)
        picked = np.take_along_axis(log_q, np.where(valid, y, 0)[..., None], axis=-1)[..., 0]
        return np.where(valid, -picked, 0.0)

    @staticmethod
    def _scaled(weight: float, term: np.ndarray) -> np.ndarray:
        return np.zeros_like(term) if weight == 0 else weight * term

    def _reduce(self, rows: np.ndarray, valid: np.ndarray, reduction: str) -> Any:
        if reduction == "none":
            return rows
        if reduction == "sum":
            return np.float64(rows.sum())
        count = self._loss_mean_count(valid)
        return np.float64(rows.sum() / count) if count else np.float64(0.0)

    def _loss_rows(self, s, t, y, valid, temperature, alpha):  # type: ignore[no-untyped-def]
        w_ce, w_kl = self._loss_weights(alpha, temperature)
        ce = self._ce(s, y, valid, self._ce_temperature(temperature))
        kl = np.where(self._kd_rows_mask(valid), self._kd_divergence(s, t, temperature), 0.0)
        return self._scaled(w_ce, ce) + self._scaled(w_kl, kl)

    def _gradient_rows(self, s, t, y, valid, temperature, alpha):  # type: ignore[no-untyped-def]
        w_ce, w_kl = self._weights(alpha, temperature)
        t_ce = self._ce_temperature(temperature)
        one_hot = np.arange(s.shape[-1]) == y[..., None]
        hard = (self._softmax(s, t_ce) - one_hot) / t_ce
        soft = self._softmax(s, temperature) - self._softmax(t, temperature)
        hard = np.where(valid[..., None], hard, 0.0)
        soft = np.where(self._kd_rows_mask(valid)[..., None], soft, 0.0)
        return w_ce * hard + (w_kl / temperature) * soft

    # ----------------------------------------------------------------------------------------------------
    # The math surface.
    # ----------------------------------------------------------------------------------------------------

    def softmax(self, logits: Any, temperature: float = 1.0) -> np.ndarray:
        temperature = self._temperature(temperature)
        return self._softmax(self._logits("logits", logits), temperature)

    def log_softmax(self, logits: Any, temperature: float = 1.0) -> np.ndarray:
        temperature = self._temperature(temperature)
        return self._log_softmax(self._logits("logits", logits), temperature)

    def cross_entropy(self, logits: Any, labels: Any, *, ignore_index: int = -100, reduction: str = "mean") -> Any:
        reduction = self._reduction(reduction)
        ignore_index = self._ignore_index(ignore_index)
        s = self._logits("logits", logits)
        y = self._labels(labels, s.shape, ignore_index)
        valid = y != ignore_index
        return self._reduce(self._ce(s, y, valid, 1.0), valid, reduction)

    def kl_divergence(self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0) -> np.ndarray:
        temperature = self._temperature(temperature)
        s = self._logits("student_logits", student_logits)
        t = self._logits("teacher_logits", teacher_logits)
        self._pair(s, t)
        return self._kl(s, t, temperature)

    def kd_loss(
        self,
        student_logits: Any,
        teacher_logits: Any,
        labels: Any,
        *,
        temperature: float,
        alpha: float,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> Any:
        s, t, y, valid, temperature, alpha, reduction = self._kd_args(
            student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction
        )
        return self._reduce(self._loss_rows(s, t, y, valid, temperature, alpha), valid, reduction)

    def kd_logit_gradient(
        self,
        student_logits: Any,
        teacher_logits: Any,
        labels: Any,
        *,
        temperature: float,
        alpha: float,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> np.ndarray:
        s, t, y, valid, temperature, alpha, reduction = self._kd_args(
            student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction
        )
        gradient = self._gradient_rows(s, t, y, valid, temperature, alpha)
        if reduction == "mean":
            count = self._gradient_mean_count(valid)
            if count:
                gradient = gradient / count
        return gradient


BACKEND = GoodPort()
"""``tests.ports.good_port:BACKEND``."""
