"""Starting the CLI as a child process, the same way from every test.

- ``CLI`` runs the package with the interpreter that runs the tests, so an un-activated venv
  (``venv/bin/pytest``) tests its own install, never an ``inspera-hooks`` found on PATH.
- ``popen``/``run`` start children with SIGINT and SIGHUP at their defaults: under ``nohup`` or as
  a background job, a shell starts the test run with them ignored and children would inherit that,
  so a Ctrl-C or hang-up test would signal a program that cannot hear it.
- ``LineProcess`` reads a child's output as lines in the background, for tests that watch it.
- ``Terminal`` runs the CLI on a pty of a given width, as a person runs it.
- ``popen``/``run`` of ``CLI`` come from the fork server (tests/forkserver.py) where a fork cannot
  be told from a new interpreter: no interpreter start and no typer/rich/requests import per child.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from typing import Any

from tests import forkserver

CLI = [sys.executable, "-m", "inspera_cli"]
STANDINS = os.path.join(os.path.dirname(__file__), "standins")


def standins_first(search_path: str) -> str:
    """PATH with the stand-in tunnel programs (tests/standins) first and this interpreter's
    directory next: their `#!/usr/bin/env python3` then starts a Python directly, where a pyenv
    shim found on PATH costs three more processes and ~0.1 s of CPU per start."""
    return os.pathsep.join([STANDINS, os.path.dirname(sys.executable), search_path])


def default_signals() -> None:
    """preexec_fn: what an interactive shell gives a program it starts in the foreground (under
    ``nohup`` SIGHUP is ignored too, and a closed terminal would not reach the program)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def popen(argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    server = forkserver.server_for(argv, kwargs)
    if server is not None:
        return forkserver.ForkedPopen(server, argv, **kwargs)
    return subprocess.Popen(argv, preexec_fn=default_signals, **kwargs)


def run(
    argv: list[str], *, also_in_child: Callable[[], None] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` with default signals; ``also_in_child`` runs in the child first (limits)."""
    server = None if also_in_child else forkserver.server_for(
        argv, {name: value for name, value in kwargs.items()
               if name not in ("input", "capture_output", "timeout", "check")})
    if server is not None:
        return forkserver.run(server, argv, **kwargs)

    def prepare() -> None:
        default_signals()
        if also_in_child is not None:
            also_in_child()

    return subprocess.run(argv, preexec_fn=prepare, **kwargs)


def running_with(marker: str) -> list[int]:
    """The live (not zombie) processes whose environment holds ``marker``: a test's grandchildren
    left behind, found however early they were stopped (Popen returns only after the exec, and the
    environment is in place from the exec on)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if marker.encode() not in environ.read():
                    continue
            with open(f"/proc/{entry}/stat", "rb") as stat:
                if stat.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
        except OSError:  # gone meanwhile, or another user's
            continue
        found.append(int(entry))
    return found


class LineProcess:
    """Runs ``argv``; ``stdout`` and ``stderr`` fill up with lines as the program prints them."""

    def __init__(self, argv: list[str], env: dict[str, str], *, read_stdout: bool = True) -> None:
        self.proc = popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, encoding="utf-8"
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        streams = [(self.proc.stderr, self.stderr)]
        if read_stdout:
            streams.append((self.proc.stdout, self.stdout))
        self._readers = [threading.Thread(target=self._read, args=s, daemon=True) for s in streams]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait until the predicate holds or the output ended; whether it holds."""
        with self._changed:
            self._changed.wait_for(
                lambda: predicate() or not any(r.is_alive() for r in self._readers), timeout
            )
            return predicate()

    @property
    def err_text(self) -> str:
        return "\n".join(self.stderr)

    def finish(self, sig: int | None = None, timeout: float = 15.0) -> int:
        """Send ``sig`` (if given and still running), wait for the exit; the exit code."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:  # a failed test: let the program clean up (tunnels) first
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Terminal:
    """The CLI on a pty of ``columns`` columns, as a person runs it; ``screen`` is what it printed.

    The window size is set in the child before the CLI starts, and COLUMNS/LINES are dropped from
    its environment, so the program sees the width a terminal reports.
    """

    def __init__(self, args: list[str], env: dict[str, str], columns: int) -> None:
        env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
        pid, self.leader = pty.fork()
        if pid == 0:  # the child: becomes the CLI
            default_signals()
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
            os.execve(sys.executable, [*CLI, *args], env)
        self.pid = pid
        self.seen = b""

    @property
    def screen(self) -> str:
        return self.seen.decode(errors="replace")

    @property
    def lines(self) -> list[str]:
        """The lines as the terminal shows them: colours and cursor moves dropped, a line erased
        with \\r showing only its last text."""
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", self.screen)
        return [line.rsplit("\r", 1)[-1] for line in plain.split("\r\n")]

    def read_until(self, text: str, timeout: float = 20) -> bool:
        """Read output until ``text`` shows (True) or the program closed the terminal."""
        deadline = time.monotonic() + timeout
        while text not in self.screen and time.monotonic() < deadline:
            if select.select([self.leader], [], [], 0.1)[0]:
                try:
                    chunk = os.read(self.leader, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                self.seen += chunk
        return text in self.screen

    def ctrl_c(self) -> None:
        os.write(self.leader, b"\x03")  # the terminal sends SIGINT to the program

    def exit_code(self) -> int:
        self.read_until("\0")  # to the end of the output
        os.close(self.leader)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)
