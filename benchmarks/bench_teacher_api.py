"""Load and faults: the API teacher against the local teacher server, with and without injected faults.

    python benchmarks/bench_teacher_api.py [--requests 2000] [--concurrency 32] [--k 8]
        [--faults drop=0.02,error=0.03,throttle=0.02,stall=0.01] [--stall-seconds 5] [--timeout 3]

Starts ``python -m reference.teacher_server`` (a tiny Llama built from tests/data/teacher_tiny_llama.json) on
127.0.0.1, scores ``--requests`` random sequences (one request each) at ``--concurrency``, first with no faults,
then against a second server that injects them. It checks that every answer arrives once and equals the
in-process model (max |error| printed beside the 1e-5 tolerance), that the client's retries equal the faults
the server injected, and prints throughput (sequences/s) of both runs and their ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.teacher_server import load_model  # noqa: E402
from distill.teachers.api import APITeacher, RetryPolicy  # noqa: E402
from distill.teachers.base import canonical, sequence_topk  # noqa: E402
from distill.teachers.tokens import ByteVocab  # noqa: E402

CONFIG = ROOT / "tests" / "data" / "teacher_tiny_llama.json"


def start_server(faults: str, stall_seconds: float):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "reference.teacher_server", "--model", str(CONFIG), "--port", str(port),
           "--log-level", "critical", "--threads", "1", "--max-logprobs", "64"]
    if faults:
        cmd += ["--faults", faults, "--stall-seconds", str(stall_seconds)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    import httpx

    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("error: the teacher server did not start within 120 s")


def run(label, faults, args, sequences, expected, vocab):
    import httpx

    proc, url = start_server(faults, args.stall_seconds)
    try:
        teacher = APITeacher(url, vocab, k=args.k, concurrency=args.concurrency, timeout=args.timeout,
                             retry=RetryPolicy(max_retries=12, base_delay=0.02, max_delay=0.5))
        teacher.check_tokenizer()
        teacher.stats.__init__()
        start = time.perf_counter()
        answers = teacher.score(sequences)
        seconds = time.perf_counter() - start
        server = httpx.get(f"{url}/stats", timeout=5).json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len(answers) == len(sequences) and all(a is not None for a in answers)
    err = max(float(np.abs(a.logprobs - e.logprobs).max()) for a, e in zip(answers, expected))
    rows_differing = sum(int((a.ids != e.ids).any(-1).sum()) for a, e in zip(answers, expected))
    ids_equal = rows_differing == 0
    injected = sum(server["faults_injected"].values())
    line = (f"{label}: {len(sequences)} sequences in {seconds:.2f}s = {len(sequences) / seconds:.1f} seq/s; "
            f"answered {teacher.stats.answered}, attempts {teacher.stats.attempts}, retries "
            f"{teacher.stats.total_retries} {dict(teacher.stats.retries)}; server injected {injected} "
            f"{server['faults_injected']}; max |logprob error| {err:.1e} (tol 1e-5); "
            f"rows with other ids: {rows_differing}")
    print(line, flush=True)
    ok = ids_equal and err <= 1e-5 and teacher.stats.answered == len(sequences)
    ok = ok and teacher.stats.total_retries >= injected  # a slow answer past the timeout is retried too
    return len(sequences) / seconds, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--faults", default="drop=0.02,error=0.03,throttle=0.02,stall=0.01")
    parser.add_argument("--stall-seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=3.0, help="client read timeout (s); below the stall")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    model = load_model(str(CONFIG), seed=0)
    vocab = ByteVocab(model.config.vocab_size)
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, vocab.vocab_size, size=int(rng.integers(2, args.max_length + 1))).tolist()
                 for _ in range(args.requests)]
    with torch.no_grad():
        expected = [canonical(sequence_topk(model(torch.tensor([s])).logits[0], args.k)) for s in sequences]
    clean, ok_clean = run("no faults", "", args, sequences, expected, vocab)
    faulty, ok_faulty = run(f"faults {args.faults}", args.faults, args, sequences, expected, vocab)
    print(f"throughput with faults / without: {faulty / clean:.3f}")
    return 0 if ok_clean and ok_faulty else 1


if __name__ == "__main__":
    sys.exit(main())
