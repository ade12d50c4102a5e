"""An argparse parser for commands that run inside other code (tests, falsifiers, a training driver): it writes
to the streams it is given and raises :class:`ParserExit` instead of calling ``sys.exit``."""

from __future__ import annotations

import argparse
from typing import NoReturn, TextIO

EXIT_BAD_SETTING = 2
"""The exit status of a bad flag, environment variable or input."""


class ParserExit(Exception):
    """The parser would have exited with ``status`` (its message is already written)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class StreamParser(argparse.ArgumentParser):
    """An ArgumentParser that writes to ``out`` and ``err`` and raises :class:`ParserExit` instead of exiting."""

    def __init__(self, *, out: TextIO, err: TextIO, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._out, self._err = out, err

    def print_help(self, file: TextIO | None = None) -> None:
        super().print_help(self._out if file is None else file)

    def print_usage(self, file: TextIO | None = None) -> None:
        super().print_usage(self._out if file is None else file)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self._err.write(message)
        raise ParserExit(status)

    def error(self, message: str) -> NoReturn:
        self.print_usage(self._err)
        self.exit(EXIT_BAD_SETTING, f"{self.prog}: error: {message}\n")
