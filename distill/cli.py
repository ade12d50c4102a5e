"""``python -m distill`` / ``kd-distill``: distil a teacher language model into a student through a KD backend.

Run with ``--help`` for the flags. Every flag, ``DISTILL_*`` variable, model, tokenizer and checkpoint is checked
before training; a bad one prints one line ``error: ...`` on stderr and exits 2 with nothing written. A full run
writes into ``--output-dir`` (default ``distill-out``): ``student/`` (``config.json``, ``model.safetensors``,
``tokenizer.json``), ``checkpoint.safetensors``, ``metrics.jsonl``, ``loss.png`` and ``metadata.json``. A smoke
run (``--max-steps`` / ``DISTILL_MAX_STEPS``) writes nothing and prints the two ``[SMOKE]`` lines of
``python -m reference.distill``.

Exit codes: 0 success, 2 bad flag, variable or input, 1 outputs could not be written, 130 interrupted (Ctrl-C;
the last complete checkpoint stays, ``--resume`` continues from it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from reference import settings
from reference.cli_parser import EXIT_BAD_SETTING, ParserExit, StreamParser
from reference.smoke import format_smoke_report, smoke_report

__all__ = ["EXIT_BAD_SETTING", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_WRITE_FAILED", "RunOutcome", "main", "run"]

EXIT_OK = 0
EXIT_WRITE_FAILED = 1
EXIT_INTERRUPTED = 130

PROG = "python -m distill"
DEFAULT_OUTPUT_DIR = "distill-out"
CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"


@dataclass(frozen=True)
class Defaults:
    student: str = "llama-tiny"
    teacher: str = "llama-teacher"
    seq_len: int = 128
    batch_size: int = 16
    grad_accum: int = 1
    epochs: int = 1
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    clip_norm: float = 1.0
    temperature: float = 2.0
    alpha: float = 0.5
    seed: int = 0
    backend: str = "torch"
    vocab_align: str = "error"
    checkpoint_every: int = 100


D = Defaults()

_EPILOG = f"""\
models (--student, --teacher): a shipped config (llama-tiny, llama-teacher, qwen2-tiny, gpt2-tiny; weights
seeded from --seed: the student with --seed, a built teacher with --seed + 1), a .json config, or a folder
with config.json and model.safetensors. --teacher none trains with CE only (needs --alpha 1).

top-k teachers (trained through the backend's topk_divergence): --teacher SPEC --teacher-k K (in-process),
--teacher-url URL (an OpenAI-compatible server: vLLM, python -m reference.teacher_server), optionally with
--teacher-cache DIR, or --teacher-cache DIR alone (replay). --on-policy-fraction LAMBDA mixes in batches the
student writes (see the on-policy flags).

environment variables (a flag wins over its variable; an empty variable counts as unset):
  {settings.ENV_MAX_STEPS}=N         same as --max-steps N
  {settings.ENV_LOG_EVERY}=N         same as --log-every N
  {settings.ENV_PROJECT_TO_STEPS}=P  smoke mode: project the wall time to P steps (default: epochs * steps-per-epoch)

exit status: 0 ok, 2 bad flag, variable or input, 1 outputs not written, 130 interrupted.
"""


def build_parser(stdout: TextIO, stderr: TextIO) -> argparse.ArgumentParser:
    """The command's parser; values stay strings and are validated by :func:`_options`."""
    parser = StreamParser(
        out=stdout,
        err=stderr,
        prog=PROG,
        description="Distil a teacher language model into a student with the KD loss\n"
        "  L = alpha * CE(student, next token) + (1 - alpha) * T^2 * KL(teacher/T || student/T)\n"
        "computed by a verified backend, on the shipped corpus (CPython's pydoc topics) or --data.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--student", metavar="SPEC", help=f"student model (default {D.student})")
    add("--teacher", metavar="SPEC", help=f"teacher model, or none (default {D.teacher})")
    add("--tokenizer", metavar="FILE", help="tokenizer.json (default: the shipped byte-level BPE, 1024 tokens)")
    add("--data", metavar="FILE", help="corpus .txt (documents split by blank lines) or .jsonl (default: pydoc)")
    add("--seq-len", metavar="N", help=f"tokens per sequence, >= 2 (default {D.seq_len})")
    add("--batch-size", metavar="N", help=f"sequences per micro-batch (default {D.batch_size})")
    add("--grad-accum", metavar="N", help=f"micro-batches per optimizer step (default {D.grad_accum})")
    add("--epochs", metavar="N", help=f"passes over the training split (default {D.epochs})")
    add("--steps-per-epoch", metavar="N", help="optimizer steps per epoch (default: every full batch once)")
    add("--learning-rate", metavar="LR", help=f"AdamW peak learning rate (default {D.learning_rate})")
    add("--weight-decay", metavar="W", help=f"AdamW weight decay (default {D.weight_decay})")
    add("--warmup-steps", metavar="N", help=f"linear warmup steps before the cosine decay (default {D.warmup_steps})")
    add("--clip-norm", metavar="C", help=f"gradient-norm clip (default {D.clip_norm})")
    add("--temperature", metavar="T", help=f"KD temperature, > 0 (default {D.temperature})")
    add("--alpha", metavar="A", help=f"weight of the CE term in [0, 1]; 1 is CE only (default {D.alpha})")
    add("--seed", metavar="S", help=f"seed of model init, data order and dropout (default {D.seed})")
    add("--backend", metavar="NAME", help=f"KD backend: torch, numpy, cupy, ... (default {D.backend})")
    add("--vocab-align", metavar="MODE", choices=("error", "truncate"),
        help="teacher wider than student: error (default) or truncate (drop the extra teacher rows)")
    add("--output-dir", metavar="DIR", help=f"where outputs go (default {DEFAULT_OUTPUT_DIR})")
    add("--resume", action="store_true", help="continue from DIR/checkpoint.safetensors")
    add("--checkpoint-every", metavar="N", help=f"steps between checkpoints (default {D.checkpoint_every})")
    add("--max-steps", metavar="N",
        help=f"smoke mode: run exactly N steps, print [SMOKE] lines, write nothing (env {settings.ENV_MAX_STEPS})")
    add("--log-every", metavar="N",
        help=f"print a step line every N steps, 0 epoch lines only (env {settings.ENV_LOG_EVERY}, default "
        f"{settings.DEFAULT_LOG_EVERY})")
    add("--threads", metavar="N",
        help="torch intra-op threads (default: torch's choice; 1 is fastest on a busy machine)")
    add("--progress", action=argparse.BooleanOptionalAction, default=None,
        help="tqdm bar on stderr (default: when stderr is a terminal)")
    add("--topk-mode", metavar="MODE", choices=("tail", "renormalize"),
        help="top-k teacher loss (--teacher-k, --teacher-url, --teacher-cache): tail (the rest of the mass as one "
        "bucket; needs --temperature 1) or renormalize (default: tail at --temperature 1, else renormalize)")
    from distill.on_policy import add_on_policy_arguments
    from distill.teachers.options import add_api_teacher_arguments

    add_api_teacher_arguments(parser)
    add_on_policy_arguments(parser)
    return parser


@dataclass(frozen=True)
class Options:
    """Validated flags."""

    student: str
    teacher: str | None
    tokenizer: str | None
    data: str | None
    seq_len: int
    backend: str
    vocab_align: str
    output_dir: Path
    output_display: str
    resume: bool
    log_every: int
    progress: bool | None
    threads: int | None
    train: Any  # distill.train.TrainConfig
    teacher_source: str  # "model" (in-process), "api" (--teacher-url) or "cache" (replay --teacher-cache)
    teacher_k: int | None
    args: argparse.Namespace  # for the teacher-API and on-policy helpers, which validate their own flags


def _get(args: argparse.Namespace, name: str, parse: Any, default: Any) -> Any:
    raw = getattr(args, name)
    return default if raw is None else parse("--" + name.replace("_", "-"), raw)


def _options(args: argparse.Namespace, env: Mapping[str, str], cwd: str | os.PathLike[str] | None) -> Options:
    from distill.train import TrainConfig

    s = settings
    display = DEFAULT_OUTPUT_DIR if args.output_dir is None else args.output_dir
    output_dir = s.output_dir("--output-dir", display, cwd)
    max_steps = s.max_steps(args.max_steps, env)
    log_every = s.log_every(args.log_every, env)
    source = "api" if args.teacher_url is not None else "cache" if args.teacher_cache is not None else "model"
    if source != "model" and args.teacher is not None:
        via = "--teacher-url" if source == "api" else "--teacher-cache"
        raise s.SettingsError(f"--teacher {args.teacher} and {via} name two teachers: give one of them")
    teacher = D.teacher if args.teacher is None else args.teacher
    if source == "api":
        teacher = args.teacher_url
    elif source == "cache":
        teacher = f"cache {args.teacher_cache}"
    teacher_k = _get(args, "teacher_k", s.positive_int, None)
    temperature = _get(args, "temperature", s.positive_float, D.temperature)
    topk_mode = args.topk_mode or ("tail" if temperature == 1.0 else "renormalize")
    if topk_mode == "tail" and temperature != 1.0:
        raise s.SettingsError(f"--topk-mode tail needs --temperature 1 (got {temperature}): pass --temperature 1, "
                              "or --topk-mode renormalize")
    config = TrainConfig(
        epochs=_get(args, "epochs", s.positive_int, D.epochs),
        steps_per_epoch=_get(args, "steps_per_epoch", s.positive_int, None),
        batch_size=_get(args, "batch_size", s.positive_int, D.batch_size),
        grad_accum=_get(args, "grad_accum", s.positive_int, D.grad_accum),
        learning_rate=_get(args, "learning_rate", s.positive_float, D.learning_rate),
        weight_decay=_get(args, "weight_decay", _non_negative_float, D.weight_decay),
        warmup_steps=_get(args, "warmup_steps", s.non_negative_int, D.warmup_steps),
        clip_norm=_get(args, "clip_norm", s.positive_float, D.clip_norm),
        temperature=temperature,
        alpha=_get(args, "alpha", s.unit_interval_float, D.alpha),
        seed=_get(args, "seed", s.non_negative_int, D.seed),
        max_steps=max_steps,
        checkpoint_every=_get(args, "checkpoint_every", s.positive_int, D.checkpoint_every),
        topk_mode=topk_mode,
    )
    if teacher == "none" and config.alpha != 1.0:
        raise s.SettingsError(f"--teacher none trains with CE only: pass --alpha 1 (got --alpha {config.alpha})")
    if args.resume and max_steps is not None:
        raise s.SettingsError("--resume and smoke mode (--max-steps / DISTILL_MAX_STEPS) exclude each other")
    return Options(
        student=D.student if args.student is None else args.student,
        teacher=None if teacher == "none" else teacher,
        tokenizer=args.tokenizer,
        data=args.data,
        seq_len=_get(args, "seq_len", s.positive_int, D.seq_len),
        backend=D.backend if args.backend is None else args.backend,
        vocab_align=args.vocab_align or D.vocab_align,
        output_dir=output_dir,
        output_display=display,
        resume=args.resume,
        log_every=log_every,
        progress=args.progress,
        threads=_get(args, "threads", s.positive_int, None),
        train=config,
        teacher_source=source,
        teacher_k=teacher_k,
        args=args,
    )


def _non_negative_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise settings.SettingsError(f"{name} {raw!r} is not a finite number >= 0: pass e.g. {name} 0.01")
    return value


@dataclass
class Session:
    """Everything built from the options before training starts."""

    student: Any
    teacher: Any
    train_chunks: Any
    held_out: Any
    tokenizer: Any
    backend: Any
    trainer: Any


def _build(options: Options, stdout: TextIO) -> Session:
    """Models, data, backend and trainer; raises ValueError subclasses with one-sentence messages."""
    from backends import registry
    from backends.protocol import BackendError
    from distill.data import TOKENIZER_PATH, TokenChunks, load_documents, load_tokenizer, split_documents
    from distill.models import load_model
    from distill.train import Trainer

    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    try:
        backend = registry.get(options.backend)
    except BackendError as error:
        raise ValueError(f"--backend: {error}") from None
    available = backend.available()
    if not available:
        raise ValueError(f"--backend {options.backend}: cannot run here: {available.reason}")
    tokenizer_path = options.tokenizer or TOKENIZER_PATH
    tokenizer = load_tokenizer(tokenizer_path)
    train_docs, held_docs = split_documents(load_documents(options.data))
    train_chunks = TokenChunks(train_docs, tokenizer, options.seq_len)
    held_out = TokenChunks(held_docs, tokenizer, options.seq_len)
    seed = options.train.seed
    student = load_model(options.student, seed=seed, flag="--student")
    teacher = _teacher(options, student, tokenizer_path)
    on_policy = None
    from distill.on_policy import on_policy_from_args

    sampler = on_policy_from_args(options.args, seed=seed)
    if sampler.schedule.fraction > 0:
        if teacher is None:
            raise ValueError("--on-policy-fraction needs a teacher to score the student's samples")
        on_policy = sampler
    trainer = Trainer(
        student,
        teacher,
        train_chunks,
        options.train,
        backend,
        output_dir=options.output_dir,
        vocab_align=options.vocab_align,
        log_every=options.log_every,
        stdout=stdout,
        progress_bar=options.progress,
        on_policy=on_policy,
    )
    return Session(student, teacher, train_chunks, held_out, tokenizer, backend, trainer)


def _teacher(options: Options, student: Any, tokenizer_path: Any) -> Any:
    """The teacher the options name: in-process (dense, or top-k with --teacher-k), behind an API, or replayed."""
    from distill.models import load_model, output_vocab_size
    from distill.teachers.hf import HFTeacher, HFTopKTeacher

    if options.teacher_source == "api":
        from distill.teachers.options import api_teacher_from_args
        from distill.teachers.tokens import HFVocab

        if options.args.teacher_k is None:
            options.args.teacher_k = "20"
        return api_teacher_from_args(options.args, HFVocab(tokenizer_path), vocab_size=output_vocab_size(student))
    if options.teacher_source == "cache":
        from distill.teacher_cache import CachedTeacher, TeacherCache

        cache = TeacherCache.open(options.args.teacher_cache)
        if options.teacher_k is not None and options.teacher_k != cache.k:
            raise ValueError(f"--teacher-k {options.teacher_k}: the cache {options.args.teacher_cache} holds "
                             f"K={cache.k}; pass --teacher-k {cache.k} or leave it out")
        return CachedTeacher(cache, vocab_size=output_vocab_size(student))
    if options.teacher is None:
        return None
    dense = HFTeacher(load_model(options.teacher, seed=options.train.seed + 1, flag="--teacher"), name=options.teacher)
    return dense if options.teacher_k is None else HFTopKTeacher(dense, options.teacher_k)


def _write_outputs(options: Options, session: Session, result: Any, before: dict, after: dict) -> None:
    from distill.models import save_model
    from distill.plot import plot_metrics
    from distill.train import PLOT_FILENAME
    from reference.pipeline import atomic_write, read_contract_versions

    out = options.output_dir
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".student."))
    try:
        save_model(session.student, staging)
        session.tokenizer.save(str(staging / "tokenizer.json"))
        final = out / "student"
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write(out / PLOT_FILENAME, lambda tmp: plot_metrics(result.records, tmp, f"{options.student} <- "
                                                                f"{options.teacher or 'labels only'}"))
    metadata = {
        "format": "kd-distill-run-1",
        "student": options.student,
        "teacher": options.teacher,
        "backend": options.backend,
        "data": options.data or "pydoc_data.topics",
        "config": asdict(options.train),
        "on_policy_fraction": 0.0 if session.trainer.on_policy is None else session.trainer.on_policy.schedule.fraction,
        "steps": result.records[-1]["step"] if result.records else 0,
        "held_out_before": before,
        "held_out_after": after,
        "contracts": read_contract_versions(CONTRACTS_DIR),
    }
    text = json.dumps(metadata, indent=2, sort_keys=True) + "\n"
    atomic_write(out / "metadata.json", lambda tmp: tmp.write_text(text, "utf-8"))


def _describe(label: str, figures: dict) -> str:
    kl = f", KL to teacher {figures['kl_to_teacher']:.4f}" if "kl_to_teacher" in figures else ""
    return f"{label}: perplexity {figures['perplexity']:.2f}{kl}"


def _describe_teacher(teacher: Any) -> str:
    """What a remote or cached teacher cost: requests and retries, cache hits and sequences scored."""
    from distill.teacher_cache import CachedTeacher

    lines, api = [], teacher
    if isinstance(teacher, CachedTeacher):
        lines.append(f"Teacher cache: {teacher.stats.hits} sequences replayed, {teacher.stats.fetched} scored and "
                     "written")
        api = teacher.upstream
    stats = getattr(api, "stats", None)
    if stats is not None and hasattr(stats, "attempts"):
        lines.append(f"Teacher API: {stats.answered} answers, {stats.attempts} requests, "
                     f"{stats.total_retries} retries")
    return "".join(line + "\n" for line in lines)


def _main(argv: Sequence[str] | None, env: Mapping[str, str], stdout: TextIO, stderr: TextIO,
          cwd: str | os.PathLike[str] | None) -> tuple[int, Path | None]:
    parser = build_parser(stdout, stderr)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except ParserExit as stop:
        return stop.status, None
    options: Options | None = None
    from distill.teacher_cache import CacheError
    from distill.teachers.api import TeacherAPIError

    try:
        options = _options(args, env, cwd)
        session = _build(options, stdout)
        smoke = options.train.max_steps is not None
        before = None
        if not smoke and not options.resume:
            from distill.train import evaluate

            before = evaluate(session.student, session.teacher, session.held_out, session.backend,
                              vocab_align=options.vocab_align)
        result = session.trainer.run(resume=options.resume)
    except KeyboardInterrupt:
        stdout.flush()
        where = ""
        if options is not None and (options.output_dir / "checkpoint.safetensors").is_file():
            where = (
                f"; the last complete checkpoint is in {os.path.join(options.output_display, 'checkpoint.safetensors')}"
                " (continue with --resume)"
            )
        stderr.write(f"error: interrupted{where}\n")
        return EXIT_INTERRUPTED, None if options is None else options.output_dir
    except OSError as error:
        stderr.write(f"error: could not write the outputs: {error}\n")
        return EXIT_WRITE_FAILED, None if options is None else options.output_dir
    except (ValueError, TeacherAPIError, CacheError) as error:  # settings, data, model, teacher, loss errors
        message = " ".join(str(error).split())
        stderr.write(f"error: {message}\n")
        return EXIT_BAD_SETTING, None if options is None else options.output_dir
    if smoke:
        projected = settings.project_to_steps(env, session.trainer.configured_steps)
        for line in format_smoke_report(smoke_report(result.metrics, projected)):
            stdout.write(line + "\n")
        stdout.flush()
        return EXIT_OK, options.output_dir
    from distill.train import evaluate

    after = evaluate(session.student, session.teacher, session.held_out, session.backend,
                     vocab_align=options.vocab_align)
    try:
        _write_outputs(options, session, result, before or {}, after)
    except OSError as error:
        stderr.write(f"error: could not write the outputs to {options.output_display!r}: {error}\n")
        return EXIT_WRITE_FAILED, options.output_dir
    if before:
        stdout.write(_describe("Held-out before", before) + "\n")
    stdout.write(_describe("Held-out after", after) + "\n")
    if result.metrics is not None:
        m = result.metrics
        stdout.write(f"Loss {m.initial_loss:.4f} -> {m.final_loss:.4f} over {m.steps_completed} steps "
                     f"in {m.duration_s:.1f}s\n")
    if session.trainer.on_policy is not None:
        sampled = sum(1 for r in result.records if r.get("on_policy"))
        stdout.write(f"On-policy steps: {sampled} of {len(result.records)} "
                     f"(--on-policy-fraction {session.trainer.on_policy.schedule.fraction})\n")
    stdout.write(_describe_teacher(session.teacher))
    dropped = [r["teacher_mass_dropped"] for r in result.records if "teacher_mass_dropped" in r]
    if dropped:
        stdout.write(f"--vocab-align truncate dropped {sum(dropped) / len(dropped):.6f} of the teacher's probability "
                     f"per token on average (max {max(dropped):.6f} in a step)\n")
    stdout.write(f"Student written to {os.path.join(options.output_display, 'student')}\n")
    stdout.flush()
    return EXIT_OK, options.output_dir


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, *, stdout: TextIO | None = None,
         stderr: TextIO | None = None, cwd: str | os.PathLike[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    code, _ = _main(argv, os.environ if env is None else env, sys.stdout if stdout is None else stdout,
                    sys.stderr if stderr is None else stderr, cwd)
    return code


@dataclass(frozen=True)
class RunOutcome:
    """What :func:`run` observed: exit code, printed text, and the files under the output directory."""

    exit_code: int
    stdout: str
    stderr: str
    output_files: tuple[str, ...]
    output_dir: str | None


def run(argv: Sequence[str], env: Mapping[str, str], *, cwd: str | os.PathLike[str] | None = None) -> RunOutcome:
    """Run the command in-process with captured output and ``env`` in place of ``os.environ``."""
    out, err = io.StringIO(), io.StringIO()
    code, output_dir = _main(list(argv), dict(env), out, err, cwd)
    files: tuple[str, ...] = ()
    if output_dir is not None and output_dir.is_dir():
        files = tuple(sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*") if p.is_file()))
    return RunOutcome(code, out.getvalue(), err.getvalue(), files, None if output_dir is None else str(output_dir))
