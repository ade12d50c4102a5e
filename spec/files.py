"""Writing files so that a crash or Ctrl-C never leaves a partial one."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


def _new_file_mode() -> int:
    """0666 less the process's umask: the mode ``open()`` would give a new file (mkstemp's is 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``, with the
    permissions a plain ``open()`` would give it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """:func:`write_bytes_atomic` of ``text`` in UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


class UnsafeFile(Exception):
    """A path that must not be read as a contract; the message says why, ``too_large`` whether it is its size."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` when it is a regular file of at most ``limit`` bytes, else :class:`UnsafeFile`.

    The type and size are checked before any read, and the file is opened non-blocking and checked again
    through its descriptor: a FIFO is never waited on, ``/dev/zero`` is never read, a symlink loop is a
    sentence, not a traceback.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise UnsafeFile(_os_reason(exc)) from None
    _require_regular(info, limit)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise UnsafeFile(_os_reason(exc)) from None
    with os.fdopen(fd, "rb") as fh:
        _require_regular(os.fstat(fd), limit)  # the path may have been swapped since the stat
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafeFile(f"the file grew past the {limit}-byte limit while it was read", too_large=True)
    return data


def _require_regular(info: os.stat_result, limit: int) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise UnsafeFile("cannot read the file: it is a directory, not a contract file")
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a device"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "not a regular file"
        )
        raise UnsafeFile(f"cannot read the file: it is {kind}, not a regular file; a contract is a plain .yaml file")
    if info.st_size > limit:
        raise UnsafeFile(
            f"the file is {info.st_size} bytes, over the {limit}-byte limit for a contract: split it", too_large=True
        )


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "cannot read the file: it is a symlink loop (or too long a chain of links); point it at a real file"
    if exc.errno == errno.ENOENT:
        return "cannot read the file: no such file (a dangling symlink?)"
    if exc.errno == errno.ENAMETOOLONG:
        return "cannot read the file: its path is too long"
    return f"cannot read the file: {exc.strerror or exc}"
