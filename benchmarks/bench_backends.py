"""Time the backends against each other on the same inputs, in one run, and print ratios.

    python benchmarks/bench_backends.py [--backend all] [--shapes 512x4096,2048x32000] [--repeats 20]

For each shape and backend it times ``kd_loss`` + ``kd_logit_gradient`` (one KD step's math) on inputs
already on the backend's device, and prints the median time relative to the numpy reference measured in the
same run. Absolute times are printed too, but only figures from a GPU machine are worth quoting as such.
CUDA backends are synchronized before each clock read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from backends import registry


def _sync(backend: object) -> None:
    if getattr(backend, "device", "cpu") != "cuda":
        return
    if backend.name.startswith("torch"):  # type: ignore[attr-defined]
        import torch

        torch.cuda.synchronize()
    else:
        import cupy

        cupy.cuda.Stream.null.synchronize()


def time_step(backend: object, rows: int, vocab: int, dtype: str, repeats: int) -> float:
    rng = np.random.default_rng(0)
    s = backend.asarray(rng.normal(0, 3, (rows, vocab)), dtype)  # type: ignore[attr-defined]
    t = backend.asarray(rng.normal(0, 3, (rows, vocab)), dtype)  # type: ignore[attr-defined]
    y_np = rng.integers(0, vocab, rows)
    y_np[::7] = -100
    y = backend.asarray(y_np, "int64")  # type: ignore[attr-defined]
    kwargs = {"temperature": 2.0, "alpha": 0.5}
    samples = []
    for i in range(repeats + 2):
        _sync(backend)
        start = time.perf_counter()
        backend.kd_loss(s, t, y, **kwargs)  # type: ignore[attr-defined]
        backend.kd_logit_gradient(s, t, y, **kwargs)  # type: ignore[attr-defined]
        _sync(backend)
        if i >= 2:  # warm-up: first calls compile kernels and allocate
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="all", help="backends to time (default: all that load here)")
    parser.add_argument("--shapes", default="256x4096,1024x32000", help="comma-separated ROWSxVOCAB")
    parser.add_argument("--dtype", default="float32", choices=("float64", "float32"))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        shapes = [tuple(int(p) for p in s.lower().split("x")) for s in args.shapes.split(",")]
        if any(len(s) != 2 or min(s) < 1 for s in shapes):
            raise ValueError
    except ValueError:
        parser.error(f"--shapes {args.shapes!r}: give ROWSxVOCAB pairs such as 256x4096,1024x32000")
    try:
        selection = registry.select(args.backend)
    except registry.BackendError as exc:
        parser.error(str(exc))
    reference = registry.get("numpy")
    for name, reason in selection.left_out:
        print(f"not timed: {name}: {reason}")
    print(f"{'shape':>12}  {'backend':>12}  {'dtype':>8}  {'median':>10}  {'vs numpy':>9}")
    for rows, vocab in shapes:
        base = time_step(reference, rows, vocab, "float64", args.repeats)
        shape = f"{rows}x{vocab}"
        print(f"{shape:>12}  {'numpy':>12}  {'float64':>8}  {base * 1e3:8.2f}ms  {1.0:8.2f}x")
        for backend in selection.backends:
            if backend.name == "numpy":
                continue
            dtype = args.dtype if args.dtype in backend.dtypes else "float64"
            took = time_step(backend, rows, vocab, dtype, args.repeats)
            print(f"{shape:>12}  {backend.name:>12}  {dtype:>8}  {took * 1e3:8.2f}ms  {base / took:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
