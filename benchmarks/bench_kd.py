"""KD loss + gradient: the project's paths against what users write by hand, in one run, as ratios.

    python benchmarks/bench_kd.py [--shapes 1024x32000,1024x128256] [--repeats 7] [--dtype float32]
                                  [--fused 4096x256x32000] [--no-compile] [--accuracy] [--liger]

Timing (every shape; methods interleaved round by round so CPU contention hits them alike; medians):

* ``torch``: the torch backend's ``kd_loss(...)`` then ``.backward()`` (the project's fast path);
* ``eager``: ``alpha * F.cross_entropy + (1 - alpha) * T^2 * F.kl_div(log_target=True)`` then ``.backward()``;
* ``torch-eager``: the same with ``KD_TORCH_COMPILE=never`` (the eager row-block kernel, as used without
  torch.compile or below its size threshold);
* ``compiled``: the same formula under ``torch.compile`` (compiled once before timing);
* ``floor``: ``torch.sub(s, t)``: read ``s`` and ``t`` and write one ``[N, V]`` tensor, the bandwidth floor;
* ``triton``: the Triton backend's ``kd_loss`` + backward, timed only on a CUDA GPU.

Peak memory: peak RSS (CPU) or peak allocated (CUDA) above the inputs during one loss + gradient, in units of
one ``[N, V]`` float32 tensor (``VmHWM`` is reset through ``/proc/self/clear_refs`` before each method).

Fused linear KD (``--fused NxHxV``): peak memory of ``kd_loss_from_hidden`` against ``hidden @ weight.T`` then
``kd_loss`` (both with the gradient of hidden and weight), and their time ratio.

``--accuracy``: the gradient's max absolute and row-relative error against the float64 reference on float32
inputs (several shapes, temperatures, peaked rows): the torch backend's eager and compiled kernels and autograd
through ``log_softmax``.

``--liger``: Liger-Kernel's LigerKLDIVLoss, LigerJSD and LigerFusedLinearJSDLoss against the project's values
on a small shape (correctness only; on CPU they run under the Triton interpreter and are not timed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

TEMPERATURE, ALPHA = 2.0, 0.5


def make_inputs(rows: int, vocab: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(rows, vocab, generator=g) * 3).to(device=device, dtype=dtype)
    t = (torch.randn(rows, vocab, generator=g) * 3).to(device=device, dtype=dtype)
    y = torch.randint(0, vocab, (rows,), generator=g)
    y[::7] = -100
    return s, t, y.to(device)


def formula(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The KD loss as training code writes it (the project's convention, mean over valid rows)."""
    valid = (y != -100).sum().clamp_min(1)
    ce = F.cross_entropy(s, y, ignore_index=-100)
    log_q = F.log_softmax(s / TEMPERATURE, dim=-1)
    log_p = F.log_softmax(t / TEMPERATURE, dim=-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    kl = torch.where(y != -100, kl, 0.0).sum() / valid
    return ALPHA * ce + (1 - ALPHA) * TEMPERATURE**2 * kl


def step_of(loss_fn: Callable) -> Callable:
    def step(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        leaf = s.detach().requires_grad_(True)
        loss_fn(leaf, t, y).backward()
        return leaf.grad

    return step


def project_loss(backend_name: str, compile_mode: str | None = None) -> Callable:
    """The backend's ``kd_loss``; ``compile_mode`` sets ``KD_TORCH_COMPILE`` around each call (torch only)."""
    from backends import registry
    from backends.torch_kd_kernel import COMPILE_ENV

    backend = registry.get(backend_name)

    def loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        before = os.environ.get(COMPILE_ENV)
        if compile_mode is not None:
            os.environ[COMPILE_ENV] = compile_mode
        try:
            return backend.kd_loss(s, t, y, temperature=TEMPERATURE, alpha=ALPHA)
        finally:
            if before is None:
                os.environ.pop(COMPILE_ENV, None)
            else:
                os.environ[COMPILE_ENV] = before

    return loss


def floor_step(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sub(s, t)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


def _mmap_every_block() -> None:
    """Serve blocks of 64 KiB or more with mmap, so that freed memory leaves the resident set and a block
    freed before the measurement cannot hide a new one (glibc's threshold otherwise grows up to 32 MiB)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    libc.malloc_trim(0)  # give back what earlier runs left in the heap


def peak_extra_bytes(fn: Callable[[], object], device: str) -> int:
    """Peak memory above what is live before ``fn`` runs, while it runs (its result included)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        del result
        return torch.cuda.max_memory_allocated() - base
    _mmap_every_block()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_kib("VmRSS")
    result = fn()
    peak = _rss_kib("VmHWM")
    del result
    return (peak - base) * 1024


def time_interleaved(methods: dict[str, Callable], args: tuple, repeats: int, device: str) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for fn in methods.values():  # warm-up (compiles, first allocations)
        fn(*args)
    for _ in range(repeats):
        for name, fn in methods.items():
            _sync(device)
            start = time.perf_counter()
            fn(*args)
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_shape(rows: int, vocab: int, args: argparse.Namespace, device: str) -> None:
    dtype = getattr(torch, args.dtype)
    s, t, y = make_inputs(rows, vocab, dtype, device)
    name = "torch" if device == "cpu" else "torch-cuda"
    methods: dict[str, Callable] = {"torch": step_of(project_loss(name))}
    methods["torch-eager"] = step_of(project_loss(name, compile_mode="never"))
    if device == "cuda":
        methods["triton"] = step_of(project_loss("triton"))
    methods["eager"] = step_of(formula)
    if not args.no_compile:
        methods["compiled"] = step_of(torch.compile(formula, dynamic=False))
    methods["floor"] = floor_step
    times = time_interleaved(methods, (s, t, y), args.repeats, device)
    unit = rows * vocab * 4
    print(f"\n{rows} x {vocab} {args.dtype} on {device}, median of {args.repeats} interleaved rounds")
    head = f"{'method':>11} {'time (s)':>10} {'/ torch':>9} {'/ eager':>9} {'/ compiled':>11}"
    print(f"{head} {'peak extra [N,V] f32 units':>28}")
    for name, fn in methods.items():
        peak = peak_extra_bytes(lambda fn=fn: fn(s, t, y), device) / unit
        vs_compiled = f"{times[name] / times['compiled']:11.2f}" if "compiled" in times else f"{'-':>11}"
        print(
            f"{name:>11} {times[name]:10.4f} {times[name] / times['torch']:9.2f} "
            f"{times[name] / times['eager']:9.2f} {vs_compiled} {peak:28.2f}"
        )


ACCURACY_CASES = (  # rows, vocab, logit scale, temperature, alpha
    (64, 4000, 4.0, 2.0, 0.3),
    (64, 4000, 4.0, 1.0, 0.5),
    (64, 4000, 1.0, 0.5, 0.5),
    (64, 4000, 20.0, 3.0, 0.2),
    (64, 4000, 4.0, 0.7, 0.0),
    (64, 1000, 50.0, 1.0, 1.0),
    (32, 32000, 3.0, 2.0, 0.5),
    (8, 128256, 3.0, 2.0, 0.5),
)


def accuracy_inputs(rows: int, vocab: int, scale: float, seed: int = 0):
    """float32 logits (every third teacher row and fourth student row peaked on one token) and labels."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(rows, vocab, generator=g) * scale
    t = torch.randn(rows, vocab, generator=g) * scale
    s[::4, 7] += 5 * scale
    t[::3, 7] += 5 * scale
    y = torch.randint(0, vocab, (rows,), generator=g)
    y[::5] = -100
    return s, t, y


def autograd_gradient(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float):
    """The gradient of the hand-written formula by autograd through ``log_softmax``."""
    leaf = s.detach().clone().requires_grad_(True)
    valid = y != -100
    ce = F.cross_entropy(leaf, y, ignore_index=-100)
    log_q, log_p = F.log_softmax(leaf / temperature, -1), F.log_softmax(t / temperature, -1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    kl = torch.where(valid, kl, 0.0).sum() / valid.sum().clamp_min(1)
    (alpha * ce + (1 - alpha) * temperature**2 * kl).backward()
    return leaf.grad


def seed_gradient(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float):
    """The seed's analytic gradient (backends/torch_backend.py at ded09bc): ``alpha (softmax(s) - e_y) + (1 - alpha)
    T (softmax(s/T) - softmax(t/T))``, each softmax ``exp((z - m) - log sum exp(z - m))`` with ``torch.sum``."""

    def log_softmax(z: torch.Tensor) -> torch.Tensor:
        m = z.amax(-1, keepdim=True)
        return (z - m) - (z - m).exp().sum(-1, keepdim=True).log()

    valid = y != -100
    g = alpha * log_softmax(s).exp()
    g[valid, y[valid]] -= alpha
    g += ((1 - alpha) * temperature) * (log_softmax(s / temperature).exp() - log_softmax(t / temperature).exp())
    return torch.where(valid[:, None], g, 0.0) / valid.sum().clamp_min(1)


def bench_accuracy(args: argparse.Namespace) -> None:
    """Max absolute and row-relative error of float32 gradients against the float64 reference on the same
    (float32-rounded) inputs: autograd, the seed's softmax difference, the torch backend's eager and compiled
    kernels."""
    import numpy as np

    from backends import registry
    from backends.torch_kd_kernel import COMPILE_ENV
    from reference import kd

    backend = registry.get("torch")
    modes = ["never"] if args.no_compile else ["never", "always"]
    print(
        "\ngradient accuracy, float32 against the float64 reference on the same inputs: max |error|, max |error| / "
        "the row's max |gradient|, and how many times smaller the max |error| is than autograd's"
    )
    names = ["autograd", "seed", *(f"KD_TORCH_COMPILE={mode}" for mode in modes)]
    print(f"{'N x V, scale, T, alpha':>30} " + " ".join(f"{name:>24}" for name in names))
    for rows, vocab, scale, temperature, alpha in ACCURACY_CASES:
        s, t, y = accuracy_inputs(rows, vocab, scale)
        exact = kd.kd_logit_gradient(s.double().numpy(), t.double().numpy(), y.numpy(), temperature=temperature,
                                     alpha=alpha)  # fmt: skip
        row_scale = np.abs(exact).max(axis=1, keepdims=True)
        row_scale[row_scale == 0] = np.inf  # ignored rows: exactly 0 on every path
        grads = [autograd_gradient(s, t, y, temperature, alpha), seed_gradient(s, t, y, temperature, alpha)]
        for mode in modes:
            os.environ[COMPILE_ENV] = mode
            grads.append(backend.kd_logit_gradient(s, t, y, temperature=temperature, alpha=alpha))
        os.environ.pop(COMPILE_ENV, None)
        cells = []
        for g in grads:
            error = np.abs(g.double().numpy() - exact)
            cells.append(f"{error.max():8.2e} {(error / row_scale).max():8.2e}")
            if cells[1:]:
                cells[-1] += f" {np.abs(grads[0].double().numpy() - exact).max() / error.max():5.1f}x"
        label = f"{rows} x {vocab}, {scale:g}, {temperature:g}, {alpha:g}"
        print(f"{label:>30} " + " ".join(f"{c:>24}" for c in cells))


def bench_fused(spec: str, args: argparse.Namespace, device: str) -> None:
    from backends import registry

    rows, hidden, vocab = (int(x) for x in spec.lower().split("x"))
    backend = registry.get("torch" if device == "cpu" else "torch-cuda")
    g = torch.Generator().manual_seed(1)
    h = (torch.randn(rows, hidden, generator=g) / hidden**0.5).to(device)
    w = torch.randn(vocab, hidden, generator=g).to(device)
    t = (torch.randn(rows, vocab, generator=g) * 3).to(device)
    y = torch.randint(0, vocab, (rows,), generator=g).to(device)
    kwargs = {"temperature": TEMPERATURE, "alpha": ALPHA}

    from backends.torch_fused_linear import fused_linear_kd_loss

    def fused() -> tuple:
        hh, ww = h.detach().requires_grad_(True), w.detach().requires_grad_(True)
        fused_linear_kd_loss(backend, hh, ww, t, y, **kwargs).backward()
        return hh.grad, ww.grad

    def unfused() -> tuple:
        hh, ww = h.detach().requires_grad_(True), w.detach().requires_grad_(True)
        backend.kd_loss(hh @ ww.T, t, y, **kwargs).backward()
        return hh.grad, ww.grad

    methods = {"fused": fused, "unfused": unfused}
    times = time_interleaved({k: (lambda f=f: f()) for k, f in methods.items()}, (), args.repeats, device)
    unit = rows * vocab * 4
    print(f"\nfused linear KD, N={rows} H={hidden} V={vocab} float32 on {device} (teacher logits given)")
    peaks = {name: peak_extra_bytes(fn, device) for name, fn in methods.items()}
    for name in methods:
        print(
            f"{name:>10} time {times[name]:8.4f} s ({times[name] / times['unfused']:.2f} x unfused)  peak extra "
            f"{peaks[name] / 2**20:9.1f} MiB = {peaks[name] / unit:.3f} [N,V] units "
            f"({peaks[name] / peaks['unfused']:.3f} x unfused)"
        )


def check_liger() -> None:
    """Liger's KD losses against the project's values on a small shape (CPU: Triton interpreter)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from liger_check import compare

    for line in compare():
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1024x32000,1024x128256", help="comma-separated ROWSxVOCAB")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fused", default="4096x256x32000", help="NxHxV for the fused linear KD ('' to skip)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile'd formula")
    parser.add_argument("--liger", action="store_true", help="check Liger-Kernel's losses (correctness only)")
    parser.add_argument("--accuracy", action="store_true", help="gradient error against float64 (CPU)")
    args = parser.parse_args(argv)
    _mmap_every_block()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    try:
        shapes = [tuple(int(x) for x in shape.lower().split("x")) for shape in args.shapes.split(",") if shape]
    except ValueError:
        parser.error(f"--shapes must be comma-separated ROWSxVOCAB, got {args.shapes!r}")
    for rows, vocab in shapes:
        bench_shape(rows, vocab, args, device)
    if args.fused:
        bench_fused(args.fused, args, device)
    if args.accuracy:
        bench_accuracy(args)
    if args.liger:
        check_liger()
    return 0


if __name__ == "__main__":
    sys.exit(main())
