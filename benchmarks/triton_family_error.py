"""Largest error of the Triton backend's dense divergence family against the float64 reference.

``TRITON_INTERPRET=1 python benchmarks/triton_family_error.py [--rows 6] [--vocab 53]`` (or on a GPU without
the variable). For every member, at parameters 0, 0.3 and 1 where it takes one, at temperatures 1, 1/2 and 2,
with and without ``-inf`` entries at the same places of both sides, it prints per input dtype the largest
value error (scaled by ``max(1, |expected|)``) and gradient error (relative to ``max(1, max |expected|)``).
The reference sees the inputs as rounded to the dtype, so what is left is the backend's own arithmetic and
the rounding of its outputs.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=53, help="53: four interpreter chunks of 16")
    args = parser.parse_args()

    import torch

    from backends.triton_backend import BACKEND
    from reference import kd
    from reference.divergences import DIVERGENCES

    if not BACKEND.available():
        raise SystemExit(f"the triton backend cannot run here: {BACKEND.available().reason}")
    device = BACKEND.device
    print(f"{BACKEND.name}, [{args.rows}, {args.vocab}] logits; value error / gradient error\n")
    print("| member | float64 | float32 | bfloat16 |\n|---|---|---|---|")
    for divergence in DIVERGENCES:
        errors = []
        for dtype in (torch.float64, torch.float32, torch.bfloat16):
            rng = np.random.default_rng(0)
            worst_value = worst_gradient = 0.0
            for w in [None] if divergence.parameter is None else [0.0, 0.3, 1.0]:
                kw = {} if w is None else {divergence.parameter: w}
                for temperature, masked in ((1.0, False), (0.5, False), (2.0, True)):
                    s = rng.normal(size=(args.rows, args.vocab)) * 3
                    t = rng.normal(size=(args.rows, args.vocab)) * 3
                    if masked:
                        mask = rng.random(s.shape) < 0.3
                        mask[:, 0] = False
                        s[mask] = t[mask] = -np.inf
                    st, tt = torch.tensor(s).to(device, dtype), torch.tensor(t).to(device, dtype)
                    s64, t64 = st.cpu().double().numpy(), tt.cpu().double().numpy()
                    name = divergence.function
                    value = getattr(kd, name)(s64, t64, temperature=temperature, **kw)
                    gradient = getattr(kd, name + "_gradient")(s64, t64, temperature=temperature, **kw)
                    got = getattr(BACKEND, name)(st, tt, temperature=temperature, **kw).cpu().double().numpy()
                    got_gradient = getattr(BACKEND, name + "_gradient")(st, tt, temperature=temperature, **kw)
                    got_gradient = got_gradient.cpu().double().numpy()
                    worst_value = max(worst_value, float(np.max(np.abs(got - value) / np.maximum(1.0, np.abs(value)))))
                    scale = max(1.0, float(np.abs(gradient).max()))
                    worst_gradient = max(worst_gradient, float(np.abs(got_gradient - gradient).max()) / scale)
            errors.append(f"{worst_value:.1e} / {worst_gradient:.1e}")
        print(f"| {divergence.name} | " + " | ".join(errors) + " |")


if __name__ == "__main__":
    main()
