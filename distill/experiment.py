"""``python -m distill.experiment``: the measured real run of the README, start to finish on a CPU.

1. A teacher (``llama-teacher``, 0.9M parameters) is trained briefly with CE on the training split of the
   shipped corpus (CPython's pydoc topics, byte-level BPE of 1024 tokens).
2. A student (``llama-tiny``, 0.3M parameters) is distilled from it through the KD backend (by default pure
   KD: ``alpha = 0``, ``T = 1``, the forward KL to the teacher on every next-token position).
3. A baseline student of the same config and seed is trained with CE only, for the same steps.

Held-out perplexity and per-token KL(teacher || student) at T = 1 are measured before and after; the table is
printed and written to ``results.json``, and every phase leaves its ``metrics.jsonl``, ``loss.png``,
checkpoint and model under ``--output-dir`` (default ``experiment-out``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from backends import registry
from distill.data import TOKENIZER_PATH, TokenChunks, load_documents, load_tokenizer, split_documents
from distill.models import load_model, save_model
from distill.plot import plot_metrics
from distill.teachers.hf import HFTeacher
from distill.train import TrainConfig, Trainer, evaluate
from reference.pipeline import atomic_write

__all__ = ["main", "run_experiment"]


def _phase(name: str, student: torch.nn.Module, teacher: Any, chunks: TokenChunks, config: TrainConfig,
           backend: Any, out: Path) -> dict[str, Any]:
    folder = out / name
    trainer = Trainer(student, teacher, chunks, config, backend, output_dir=folder, log_every=0,
                      progress_bar=None, description=name)
    start = time.perf_counter()
    result = trainer.run()
    seconds = time.perf_counter() - start
    save_model(student, folder / "model")
    atomic_write(folder / "loss.png", lambda tmp: plot_metrics(result.records, tmp, name))
    return {"records": result.records, "seconds": seconds, "steps": len(result.records)}


def run_experiment(args: argparse.Namespace) -> dict[str, Any]:
    """Run the three phases and return the results (also written to ``results.json``)."""
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    begin, cpu_begin = time.perf_counter(), time.process_time()
    backend = registry.get(args.backend)
    tokenizer = load_tokenizer(TOKENIZER_PATH)
    train_docs, held_docs = split_documents(load_documents(args.data))
    train = TokenChunks(train_docs, tokenizer, args.seq_len)
    held = TokenChunks(held_docs, tokenizer, args.seq_len)
    base = TrainConfig(batch_size=args.batch_size, seed=args.seed, warmup_steps=10, checkpoint_every=10**9)

    print(f"corpus: {train.tokens} training tokens in {len(train)} sequences, {held.tokens} held-out tokens")
    teacher_model = load_model(args.teacher, seed=args.seed + 1, flag="--teacher")
    teacher_run: dict[str, Any] = {"steps": 0, "seconds": 0.0}
    if args.teacher_epochs > 0:  # 0: use --teacher as it is (e.g. the teacher/model folder of an earlier run)
        teacher_cfg = replace(base, alpha=1.0, learning_rate=args.teacher_lr, epochs=args.teacher_epochs)
        teacher_run = _phase("teacher", teacher_model, None, train, teacher_cfg, backend, out)
    teacher = HFTeacher(teacher_model, name="teacher")
    teacher_eval = evaluate(teacher_model, None, held, backend)
    print(f"teacher: {teacher_run['steps']} steps in {teacher_run['seconds']:.0f}s, "
          f"held-out perplexity {teacher_eval['perplexity']:.2f}")

    student_cfg = replace(base, epochs=args.student_epochs, learning_rate=args.student_lr)
    rows: dict[str, Any] = {}
    for name, config, with_teacher in (
        ("kd", replace(student_cfg, alpha=args.alpha, temperature=args.temperature), True),
        ("ce", replace(student_cfg, alpha=1.0), False),
    ):
        student = load_model(args.student, seed=args.seed, flag="--student")
        before = evaluate(student, teacher, held, backend)
        run = _phase(name, student, teacher if with_teacher else None, train, config, backend, out)
        after = evaluate(student, teacher, held, backend)
        rows[name] = {"before": before, "after": after, "seconds": run["seconds"], "steps": run["steps"],
                      "records": run["records"]}
        print(f"{name}: {run['steps']} steps in {run['seconds']:.0f}s, held-out perplexity "
              f"{before['perplexity']:.2f} -> {after['perplexity']:.2f}, KL to teacher "
              f"{before['kl_to_teacher']:.4f} -> {after['kl_to_teacher']:.4f}")
    results = {
        "command": args.command,
        "threads": args.threads,
        "backend": args.backend,
        "teacher": {"model": args.teacher, "steps": teacher_run["steps"], "seconds": teacher_run["seconds"],
                    "held_out": teacher_eval},
        "students": {k: {key: v[key] for key in ("before", "after", "seconds", "steps")} for k, v in rows.items()},
        "config": {"kd": vars(args)},
        "wall_seconds": time.perf_counter() - begin,
        "cpu_seconds": time.process_time() - cpu_begin,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    text = json.dumps(results, indent=2, sort_keys=True) + "\n"
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(text, "utf-8"))
    print(_table(results))
    return results


def _table(results: dict[str, Any]) -> str:
    t = results["teacher"]
    lines = [
        "",
        f"teacher ({t['model']}, {t['steps']} CE steps): held-out perplexity {t['held_out']['perplexity']:.2f}",
        "",
        "| student (same config and seed) | steps | held-out perplexity | held-out KL(teacher || student) |",
        "|---|---|---|---|",
    ]
    labels = {"kd": "distilled (KD)", "ce": "CE only (baseline)"}
    for name, row in results["students"].items():
        b, a = row["before"], row["after"]
        lines.append(f"| {labels[name]} | {row['steps']} | {b['perplexity']:.2f} -> {a['perplexity']:.2f} | "
                     f"{b['kl_to_teacher']:.4f} -> {a['kl_to_teacher']:.4f} |")
    lines.append("")
    load = results["load_average"]
    busy = f", machine load average {load[0]:.1f}" if load else ""
    lines.append(f"total wall time {results['wall_seconds']:.0f}s, process CPU time {results['cpu_seconds']:.0f}s "
                 f"({results['threads']} torch thread(s){busy})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import sys

    parser = argparse.ArgumentParser(prog="python -m distill.experiment", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--output-dir", default="experiment-out")
    add("--teacher", default="llama-teacher")
    add("--student", default="llama-tiny")
    add("--data", default=None)
    add("--backend", default="torch")
    add("--seq-len", type=int, default=128)
    add("--batch-size", type=int, default=16)
    add("--teacher-epochs", type=int, default=4)
    add("--student-epochs", type=int, default=2)
    add("--teacher-lr", type=float, default=3e-3)
    add("--student-lr", type=float, default=3e-3)
    add("--alpha", type=float, default=0.0)
    add("--temperature", type=float, default=1.0)
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.command = "python -m distill.experiment " + " ".join(sys.argv[1:] if argv is None else argv)
    run_experiment(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
