"""Command-line flags for a teacher behind an API, optionally cached on disk, for the training CLI to add.

``add_api_teacher_arguments(parser)`` adds ``--teacher-url``, ``--teacher-model``, ``--teacher-k``,
``--teacher-mode``, ``--teacher-concurrency``, ``--teacher-timeout`` and ``--teacher-cache``;
``api_teacher_from_args(args, vocab)`` builds the teacher (checking the tokenizer against the server's) and
raises one-sentence ``ValueError``/``TeacherAPIError``/``CacheError`` on bad values.
"""

from __future__ import annotations

import argparse

from distill.teachers.api import APITeacher
from distill.teachers.tokens import TokenVocab


def add_api_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("teacher behind an OpenAI-compatible API (vLLM, reference.teacher_server)")
    group.add_argument("--teacher-url", default=None, metavar="URL",
                       help="base URL of the server, e.g. http://127.0.0.1:8000 (its /v1/completions is used)")
    group.add_argument("--teacher-model", default="teacher", help="the model name the server serves")
    group.add_argument("--teacher-k", default=None, metavar="K",
                       help="top-k log-probs per position (default 20); with an in-process --teacher, makes it a "
                       "top-k teacher")
    group.add_argument("--teacher-mode", default="echo", choices=["echo", "prompt_logprobs"],
                       help="echo=true + logprobs=K (OpenAI), or vLLM's prompt_logprobs=K")
    group.add_argument("--teacher-concurrency", default="8", metavar="N", help="requests in flight (default 8)")
    group.add_argument("--teacher-timeout", default="60", metavar="S", help="read timeout per request (default 60)")
    group.add_argument("--teacher-cache", default=None, metavar="DIR",
                       help="replay scored sequences from DIR, scoring and writing only what is missing")


def _positive(flag: str, raw: str, kind: type):
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise ValueError(f"{flag} {raw!r}: expected a {'whole ' if kind is int else ''}number > 0")
    return value


def api_teacher_from_args(args: argparse.Namespace, vocab: TokenVocab, *, check_tokenizer: bool = True,
                          vocab_size: int | None = None):
    """The API teacher the flags describe (wrapped in a :class:`~distill.teacher_cache.CachedTeacher` with
    ``--teacher-cache``); its answers follow :mod:`distill.teachers.base`. ``vocab_size``: the ids accepted
    (default: the tokenizer's)."""
    if not args.teacher_url or not args.teacher_url.startswith(("http://", "https://")):
        raise ValueError(f"--teacher-url {args.teacher_url!r}: expected http://HOST:PORT or https://...")
    k = _positive("--teacher-k", "20" if args.teacher_k is None else args.teacher_k, int)
    teacher = APITeacher(args.teacher_url, vocab, k=k, vocab_size=vocab_size,
                         model=args.teacher_model, mode=args.teacher_mode,
                         concurrency=_positive("--teacher-concurrency", args.teacher_concurrency, int),
                         timeout=_positive("--teacher-timeout", args.teacher_timeout, float))
    if check_tokenizer:
        teacher.check_tokenizer()
    if args.teacher_cache is None:
        return teacher
    from distill.teacher_cache import CachedTeacher, TeacherCache

    return CachedTeacher(TeacherCache(args.teacher_cache, teacher.fingerprint, teacher.k), teacher)
