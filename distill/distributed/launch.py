"""Start ``python -m <module> ARGS`` on N local ranks the way ``torchrun`` does (the same environment
variables), rendezvous on 127.0.0.1 at a free port, and supervise them with a deadline.

This is what the tests and the contract's falsifiers use to spawn CPU (gloo) runs: unlike ``torchrun``, it
leaves the surviving ranks alone when one dies, so a test can see that they stop by themselves with a clear
error. Every rank's stdout and stderr go to files (no pipe can fill up and block a rank); after the deadline
every rank still running is killed and the outcome says so.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPOSITORY = Path(__file__).resolve().parents[2]
"""The folder that holds the ``distill`` package; ranks start there, so they import this code."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _loopback_interface() -> str | None:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((name for name in ("lo", "lo0") if name in names), None)


def rank_environment(rank: int, world_size: int, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``torchrun`` would give local rank ``rank``, on 127.0.0.1 with one thread per rank."""
    env = dict(os.environ if base is None else base)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        PYTHONUNBUFFERED="1",
    )
    loopback = _loopback_interface()
    if loopback and "GLOO_SOCKET_IFNAME" not in env:
        env["GLOO_SOCKET_IFNAME"] = loopback  # gloo's own connections stay on the loopback device too
    return env


@dataclass
class RankOutcome:
    rank: int
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


class LocalRun:
    """``world_size`` ranks of ``python -m module args`` on this machine. Use as a context manager: leaving it
    kills every rank still running."""

    def __init__(self, module: str, args: list[str], world_size: int, *, cwd: Path = REPOSITORY) -> None:
        self.world_size = world_size
        self.port = free_port()
        self._folder = tempfile.TemporaryDirectory(prefix="distill-ranks-")
        self._logs: list[tuple[IO[str], IO[str]]] = []
        self.processes: list[subprocess.Popen[str]] = []
        self.started = time.monotonic()
        self._ended: dict[int, float] = {}
        for rank in range(world_size):
            out = open(Path(self._folder.name) / f"rank{rank}.out", "w+")
            err = open(Path(self._folder.name) / f"rank{rank}.err", "w+")
            self._logs.append((out, err))
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", module, *args],
                    cwd=cwd,
                    env=rank_environment(rank, world_size, self.port),
                    stdout=out,
                    stderr=err,
                    text=True,
                )
            )

    def __enter__(self) -> LocalRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stdout(self, rank: int) -> str:
        return (Path(self._folder.name) / f"rank{rank}.out").read_text()

    def stderr(self, rank: int) -> str:
        return (Path(self._folder.name) / f"rank{rank}.err").read_text()

    def wait_for_output(self, rank: int, text: str, timeout: float) -> bool:
        """Wait until ``text`` appears in the stdout of ``rank``; ``False`` if the deadline passes or the rank
        exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stdout(rank):
                return True
            if self.processes[rank].poll() is not None:
                return text in self.stdout(rank)
            time.sleep(0.05)
        return False

    def kill(self, rank: int) -> None:
        """SIGKILL one rank (as the OOM killer or a lost node would)."""
        self.processes[rank].send_signal(signal.SIGKILL)
        self.processes[rank].wait()

    def wait(self, timeout: float) -> list[RankOutcome]:
        """Wait for every rank to exit, at most ``timeout`` seconds; ranks still running then are killed
        and have ``returncode`` ``None``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rank, process in enumerate(self.processes):
                if rank not in self._ended and process.poll() is not None:
                    self._ended[rank] = time.monotonic() - self.started
            if len(self._ended) == self.world_size:
                break
            time.sleep(0.05)
        outcomes = []
        for rank, process in enumerate(self.processes):
            timed_out = process.poll() is None
            if timed_out:
                process.kill()
                process.wait()
            outcomes.append(
                RankOutcome(
                    rank,
                    None if timed_out else process.returncode,
                    self.stdout(rank),
                    self.stderr(rank),
                    self._ended.get(rank, time.monotonic() - self.started),
                )
            )
        return outcomes

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for out, err in self._logs:
            out.close()
            err.close()
        self._folder.cleanup()


def run_ranks(module: str, args: list[str], world_size: int, timeout: float) -> list[RankOutcome]:
    """Run ``world_size`` ranks of ``python -m module args`` to the end (or ``timeout``) and return how each
    ended. If the free port was taken between choosing it and binding it, the run is started once more."""

    def once() -> list[RankOutcome]:
        with LocalRun(module, args, world_size) as run:
            return run.wait(timeout)

    outcomes = once()
    if any("address already in use" in o.stderr.lower() for o in outcomes):
        outcomes = once()
    return outcomes
