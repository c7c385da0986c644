"""Start a tunnel program (cloudflared or ngrok), read its public HTTPS URL, stop it again.

Inspera only calls public HTTPS endpoints; rather than run a relay we drive the tunnel tools users
already have. The program's own output goes to the ``inspera_cli.tunnel`` debug logger. No Typer,
no Rich: ``listen --tunnel`` and other programs use it alike::

    with Tunnel.start("cloudflared", 8000) as tunnel:
        print(tunnel.public_url)
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import weakref
from types import TracebackType
from typing import IO

from inspera_cli.errors import InsperaError, UsageError

log = logging.getLogger("inspera_cli.tunnel")

PROGRAMS = ("cloudflared", "ngrok")
INSTALL_URLS = {
    "cloudflared": "https://developers.cloudflare.com/cloudflare-one/connections/connect-networks/downloads/",
    "ngrok": "https://ngrok.com/download",
}
# How long a tunnel program may take to print its public URL.
START_TIMEOUT = 30.0
# How long the program gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0

# cloudflared logs (on stderr) the URL inside an ASCII box: `... INF |  https://x.trycloudflare.com  |`.
# The disclaimer above the box holds other https URLs, never between bars.
_CLOUDFLARED_BOX_URL = re.compile(r"\|\s*(https://[^\s|]+?)/?\s*\|")
# `2024-08-01T10:00:00Z ERR failed to ...` (cloudflared), `ERROR:  authentication failed` (ngrok).
_TEXT_ERROR = re.compile(r"(?:^|\s)(?:ERR|FTL|ERROR:)\s+(\S.*)")
_LAST_LINES = 20


# Run first in the tunnel's process, then replaced by the program (same pid, same argv): on Linux,
# ask the kernel for SIGTERM when the process that started it dies -- even by SIGKILL, which runs
# none of our cleanup -- and give up if that has already happened.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)\n"
    "try:\n"
    "    os.execv(sys.argv[2], sys.argv[2:])\n"
    "except OSError as exc:\n"
    "    sys.exit(f'cannot run {sys.argv[2]}: {exc.strerror}')\n"
)


def _ended_with_us(argv: list[str]) -> list[str]:
    """``argv`` so that the program ends when this process does, where the kernel can do that (on
    Linux; when started from the main thread, as the kernel ties it to the thread that started it)."""
    main = threading.current_thread() is threading.main_thread()
    if not (sys.platform.startswith("linux") and sys.executable and main):
        return argv
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]


class TunnelError(InsperaError):
    """The tunnel program is missing, exited early, or printed no public URL in time."""


def command(program: str, port: int) -> list[str]:
    """The command line that starts ``program`` forwarding to ``127.0.0.1:port``."""
    if program == "cloudflared":
        return ["cloudflared", "tunnel", "--url", f"http://127.0.0.1:{port}"]
    if program == "ngrok":
        return ["ngrok", "http", str(port), "--log", "stdout", "--log-format", "json"]
    raise UsageError(f"unknown tunnel program {program!r}: choose {' or '.join(PROGRAMS)}")


def public_url_in(program: str, line: str) -> str | None:
    """The public HTTPS URL if this output line of ``program`` announces it, else None."""
    if program == "cloudflared":
        match = _CLOUDFLARED_BOX_URL.search(line)
        return match.group(1) if match else None
    record = _json_record(line)
    if record and record.get("msg") == "started tunnel":
        url = record.get("url")
        if isinstance(url, str) and url.startswith("https://"):
            return url.rstrip("/")
    return None


def error_in(program: str, line: str) -> str | None:
    """The error message if this output line reports one (shown when the program exits early)."""
    record = _json_record(line)
    if record is not None:
        if record.get("lvl") in ("eror", "error", "crit"):
            return str(record.get("err") or record.get("msg") or line).strip()
        return None
    match = _TEXT_ERROR.search(line)
    return match.group(1).strip() if match else None


def _json_record(line: str) -> dict[str, object] | None:
    if not line.lstrip().startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _install_hint(program: str) -> str:
    return f"install {program} from {INSTALL_URLS[program]}"


def _stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Terminate, then kill if it does not go; always reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Tunnel:
    """A running tunnel program and the public HTTPS URL it forwards to a local port.

    Make one with ``Tunnel.start``; ``stop()`` (or leaving the ``with`` block) ends the program.
    The program is also stopped when the Tunnel is garbage-collected or the interpreter exits.
    """

    def __init__(self, program: str, port: int, process: subprocess.Popen[bytes]) -> None:
        self.program = program
        self.port = port
        self.process = process
        self.public_url: str = ""
        self._lines: collections.deque[str] = collections.deque(maxlen=_LAST_LINES)
        self._errors: list[str] = []
        self._found = threading.Event()
        self._finished = threading.Event()
        self._finalizer = weakref.finalize(self, _stop_process, process, STOP_TIMEOUT)
        self._reader = threading.Thread(
            target=self._read, args=(process.stdout,), name=f"{program}-output", daemon=True
        )
        self._reader.start()

    @classmethod
    def start(cls, program: str, port: int, *, timeout: float = START_TIMEOUT) -> Tunnel:
        """Start ``program`` for ``127.0.0.1:port`` and wait until it prints its public URL.

        Raises TunnelError (exit 1) naming what to install when the program is missing, exits
        before printing a URL, or prints none within ``timeout`` seconds; the program is stopped
        before the error is raised.
        """
        argv = command(program, port)
        executable = shutil.which(program)
        if executable is None:
            raise TunnelError(f"{program} is not installed (not found on PATH): {_install_hint(program)}")
        log.debug("starting %s", " ".join(argv))
        try:
            # cloudflared logs to stderr, ngrok (with --log stdout) to stdout: read both as one stream.
            process = subprocess.Popen(
                _ended_with_us([executable, *argv[1:]]),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            raise TunnelError(
                f"cannot run {executable}: {exc.strerror or exc}; {_install_hint(program)}"
            ) from None
        tunnel = cls(program, port, process)
        try:
            tunnel._wait_for_url(timeout)
        except BaseException:
            tunnel.stop()
            raise
        return tunnel

    def _read(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            self._finished.set()
            return
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                log.debug("%s: %s", self.program, line)
                self._lines.append(line)
                if not self._found.is_set():
                    url = public_url_in(self.program, line)
                    if url:
                        self.public_url = url
                        self._found.set()
                        continue
                    error = error_in(self.program, line)
                    if error and not self._errors:
                        self._errors.append(error)
        except (OSError, ValueError):
            pass  # the pipe closed under us during stop()
        finally:
            self._finished.set()

    def _wait_for_url(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._found.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TunnelError(
                    f"{self.program} printed no public URL within {timeout:g} s (run with --debug to see "
                    f"its output; is the network up?); if it is out of date, {_install_hint(self.program)}"
                )
            if self._finished.is_set():
                # Output ended: the program is exiting. Give it a moment to report its status.
                try:
                    status = self.process.wait(min(remaining, 1.0))
                except subprocess.TimeoutExpired:
                    status = None
                if self._found.is_set():
                    break
                raise self._early_exit(status)
            self._found.wait(min(remaining, 0.05))

    def _early_exit(self, status: int | None) -> TunnelError:
        how = f"exited with status {status}" if status is not None else "closed its output"
        # The first error is the cause; what follows is usually the program winding down.
        said = self._errors[0] if self._errors else (self._lines[-1].strip() if self._lines else "")
        reason = f": {said.rstrip('.')}" if said else ""
        alone = " ".join(command(self.program, self.port))
        return TunnelError(
            f"{self.program} {how} before it printed a public URL{reason}; check that `{alone}` "
            f"works on its own, or {_install_hint(self.program)}"
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> list[str]:
        """The program's last output lines (the full output goes to the debug log)."""
        return list(self._lines)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """End the program: terminate, then kill after ``timeout`` seconds. Safe to call twice."""
        self._finalizer.detach()
        _stop_process(self.process, timeout)
        self._reader.join(timeout)
        # A child of the program may still hold the pipe open; never close it under the reader.
        if self.process.stdout is not None and not self._reader.is_alive():
            self.process.stdout.close()
        log.debug("%s stopped (status %s)", self.program, self.process.returncode)

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
