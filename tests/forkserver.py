"""A fork server for CLI children: `python -m inspera_cli ...` without an interpreter start each time.

One server per test process (started on first use) has imported the third-party modules a CLI child
imports (typer, rich, requests, ...), never inspera_cli itself. For each child it forks; the fork
takes the test's stdin/stdout/stderr, argv, environment, working directory and umask, gets what a
new interpreter would have (SIGINT at Python's default, SIGHUP at the system's, fresh sys.std*
streams, ``sys.path[0]`` the working directory, an empty ``__main__``) and runs the package's
``__main__`` as ``python -m`` does. ``ForkedPopen`` is ``subprocess.Popen`` with the process
started that way: the pid is the real child's, the exit status comes back from the server (the
child's parent).

What a fork could show differently goes to a real interpreter instead (``server_for``): an
environment that differs from the server's in what the interpreter reads as it starts (PYTHON*,
locale, TZ, OpenSSL) or in a variable a preloaded module read as it was imported (recorded while
preloading). Tests about the process itself (start-up imports, memory, the entry point) are marked
``fresh_interpreter`` (tests/conftest.py). ``INSPERA_TESTS_FORKSERVER=0`` turns the server off.

Run as a script, this file is the server: ``python tests/forkserver.py CONTROL_FD``.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import io
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Iterator, Mapping, MutableMapping
from inspect import signature
from typing import Any

# What CLI children import from outside the package (and the standard library that pulls in).
PRELOAD = ("typer", "rich.console", "rich.markup", "requests", "platformdirs", "shellingham",
           "annotated_doc", "filelock", "tomli_w", "tomllib", "asyncio", "httptools", "uvloop")
# Read by the interpreter as it starts, before any module: these must equal the server's.
STARTUP_VARIABLES = ("LANG", "LANGUAGE", "TZ", "OPENSSL_CONF", "SSL_CERT_FILE", "SSL_CERT_DIR")
STARTUP_PREFIXES = ("PYTHON", "LC_")
MESSAGE_LIMIT = 1 << 20


class EnvironReads(MutableMapping[str, str]):
    """os.environ that notes which variables are read while the modules are preloaded."""

    def __init__(self, real: MutableMapping[str, str]) -> None:
        self.real = real
        self.read: set[str] = set()
        self.read_all = False
        self.recording = True

    def __getitem__(self, key: str) -> str:
        if self.recording:
            self.read.add(key)
        return self.real[key]

    def __setitem__(self, key: str, value: str) -> None:
        self.real[key] = value

    def __delitem__(self, key: str) -> None:
        del self.real[key]

    def __iter__(self) -> Iterator[str]:
        if self.recording:
            self.read_all = True
        return iter(self.real)

    def __len__(self) -> int:
        return len(self.real)

    def copy(self) -> dict[str, str]:
        return dict(self)


def preload() -> EnvironReads:
    reads = EnvironReads(os.environ)
    real, os.environ = os.environ, reads  # type: ignore[assignment]  # os.getenv reads os.environ
    try:
        for name in PRELOAD:
            importlib.import_module(name)
    finally:
        os.environ = real  # noqa: B003 (the same object back: nothing to clear)
        reads.recording = False
    return reads


def serve(control: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """Fork a child per request until the test process goes; returns only in a child."""
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    exits: dict[int, socket.socket] = {}  # child pid -> where its wait status goes
    while True:
        ready = select.select([control, wake_read], [], [])[0]
        if wake_read in ready:
            os.read(wake_read, 4096)  # what is left wakes the next select: nothing is missed
            report_exits(exits)
        if control not in ready:
            continue
        message, fds, _, _ = socket.recv_fds(control, MESSAGE_LIMIT, 4)
        if not message:
            return None
        reply = socket.socket(fileno=fds[0])
        pid = os.fork()
        if pid == 0:  # the server's sockets and pipe must not close a number the CLI reuses
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for sock in (control, reply, *exits.values()):
                os.close(sock.detach())
            os.close(wake_read)
            os.close(wake_write)
            return json.loads(message), fds[1:]
        for fd in fds[1:]:
            os.close(fd)
        exits[pid] = reply
        reply.send(b"%d" % pid)


def report_exits(exits: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply = exits.pop(pid)
        try:
            reply.send(b"%d" % status)
        except OSError:  # the test process is gone
            pass
        reply.close()


def standard_stream(fd: int, like: io.TextIOWrapper) -> io.TextIOWrapper:
    """sys.stdin/stdout/stderr as a new interpreter makes them (Python/pylifecycle.c create_stdio);
    encoding and errors as this interpreter's own, which started with the same environment."""
    write = fd != 0
    unbuffered = like.write_through
    buffer = open(fd, "wb" if write else "rb", 0 if unbuffered and write else -1, closefd=False)
    raw = buffer if unbuffered and write else buffer.raw  # type: ignore[attr-defined]
    raw.name = ("<stdin>", "<stdout>", "<stderr>")[fd]
    line_buffering = not unbuffered and (raw.isatty() or fd == 2)
    stream = io.TextIOWrapper(buffer, like.encoding, like.errors, "\n", line_buffering, unbuffered)
    stream.mode = "w" if write else "r"  # type: ignore[misc]
    return stream


def close_other_fds() -> None:
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            try:
                os.close(int(name))
            except OSError:  # the listing's own descriptor
                pass


def become_cli(request: dict[str, Any], stdio: list[int]) -> None:
    """In the forked child: take the test's side of things, then run the package as ``-m``."""
    like = (sys.__stdin__, sys.__stdout__, sys.__stderr__)
    for number, fd in enumerate(stdio):
        os.dup2(fd, number)
    close_other_fds()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as Python sets an inherited SIG_DFL
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as processes.default_signals
    os.umask(request["umask"])
    if request["start_new_session"]:
        os.setsid()
    elif request["process_group"] is not None:
        os.setpgid(0, request["process_group"])
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.orig_argv = request["argv"]
    sys.argv = ["-m", *request["argv"][3:]]
    sys.path[0] = os.getcwd()
    streams = [standard_stream(fd, like[fd]) for fd in range(3)]  # type: ignore[arg-type]
    sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams
    main_module = sys.modules["__main__"] = types.ModuleType("__main__")
    main_module.__annotations__ = {}  # as the interpreter's own __main__ starts
    importlib.invalidate_caches()
    runpy._run_module_as_main(request["argv"][2])  # type: ignore[attr-defined]  # what `-m` calls


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the test run: it ends with the run
    sys.path[0] = os.getcwd()  # as for `-m` in "/": not tests/, whose modules could shadow others
    startup_environment = dict(os.environ)  # as the interpreter left it (a coerced locale shows)
    reads = preload()
    # Out of the collector's reach: a child's collections (and the one at its exit) would otherwise
    # walk, and so copy, every page of the preloaded modules (half a --version child's CPU).
    gc.collect()
    gc.freeze()
    hello = {"read": None if reads.read_all else sorted(reads.read), "environment": startup_environment}
    control.send(json.dumps(hello).encode())
    child = serve(control)
    if child is not None:
        become_cli(*child)


# -- the test side ----------------------------------------------------------------------------------

ENABLED = os.environ.get("INSPERA_TESTS_FORKSERVER", "1") != "0"
fresh_interpreter = False  # set for a test marked fresh_interpreter (tests/conftest.py)
# What a fork serves; anything else given to Popen (preexec_fn, pass_fds, ...) needs a real start.
SERVED_OPTIONS = {"stdin", "stdout", "stderr", "env", "cwd", "text", "encoding", "errors",
                  "universal_newlines", "bufsize", "start_new_session", "process_group"}
_CHILD_PARAMETERS = signature(subprocess.Popen._execute_child)  # type: ignore[attr-defined]


def process_environment() -> dict[str, str]:
    """The environment a child inherits: the C library's, which can hold more than os.environ
    (readline, imported with pdb by pytest, sets COLUMNS and LINES there)."""
    import ctypes

    entries = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
    inherited = {}
    index = 0
    while entries[index] is not None:
        name, _, value = os.fsdecode(entries[index]).partition("=")
        inherited[name] = value
        index += 1
    return inherited


def current_umask() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))


class ForkServer:
    """The server process of this test process, and what it can start faithfully."""

    def __init__(self) -> None:
        self.environment = process_environment()
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, __file__, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=self.environment, cwd="/",
            )
        hello = json.loads(self.control.recv(MESSAGE_LIMIT))
        self.read_all = hello["read"] is None
        self.read = set(hello["read"] or ())
        # What the interpreter itself set as it started (PEP 538 coerces a C locale).
        self.startup_changes = {
            name: value for name, value in hello["environment"].items()
            if self.environment.get(name) != value
        }
        self.lock = threading.Lock()

    def serves(self, env: Mapping[str, str]) -> bool:
        """Whether a new interpreter with ``env`` would start as the server did."""
        if self.read_all:
            return False
        names = self.read | set(STARTUP_VARIABLES) | {
            name for name in (*env, *self.environment) if name.startswith(STARTUP_PREFIXES)
        }
        return all(env.get(name) == self.environment.get(name) for name in names)

    def start(self, request: dict[str, Any], stdio: list[int]) -> tuple[int, socket.socket]:
        request["env"] = {**request["env"], **self.startup_changes}
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs, self.lock:
            socket.send_fds(self.control, [json.dumps(request).encode()], [theirs.fileno(), *stdio])
        pid = mine.recv(64)
        if not pid:
            mine.close()
            raise ChildProcessError("the fork server is gone")
        return int(pid), mine

    def close(self) -> None:
        self.control.close()
        self.process.wait(10)


class ForkedPopen(subprocess.Popen[Any]):
    """subprocess.Popen whose process the fork server starts; pipes, text, communicate, signals and
    the return code as Popen's own."""

    def __init__(self, server: ForkServer, argv: list[str], **kwargs: Any) -> None:
        self._server = server
        self._exit: socket.socket | None = None
        super().__init__(argv, **kwargs)

    def _execute_child(self, *args: Any) -> None:
        given = _CHILD_PARAMETERS.bind(self, *args).arguments
        stdio = [given[name] if given[name] != -1 else std
                 for std, name in enumerate(("p2cread", "c2pwrite", "errwrite"))]
        env = process_environment() if given["env"] is None else given["env"]
        request = {
            "argv": [os.fsdecode(arg) for arg in given["args"]],
            "env": {os.fsdecode(k): os.fsdecode(v) for k, v in env.items()},
            "cwd": os.path.abspath(given["cwd"] if given["cwd"] is not None else "."),
            "umask": current_umask(),
            "start_new_session": bool(given["start_new_session"]),
            "process_group": None if given["process_group"] == -1 else given["process_group"],
        }
        try:
            self.pid, self._exit = self._server.start(request, stdio)
            self._child_created = True
        finally:
            self._close_pipe_fds(*(given[name] for name in (  # type: ignore[attr-defined]
                "p2cread", "p2cwrite", "c2pread", "c2pwrite", "errread", "errwrite")))

    def _take_status(self, exit_reply: socket.socket) -> None:
        status = exit_reply.recv(64)
        exit_reply.close()
        self._exit = None
        if not status:
            raise ChildProcessError(f"the fork server is gone; pid {self.pid} not waited for")
        self.returncode = os.waitstatus_to_exitcode(int(status))

    def _internal_poll(self, _deadstate: int | None = None, **_: Any) -> int | None:
        if self.returncode is None and self._waitpid_lock.acquire(False):  # type: ignore[attr-defined]
            try:
                exit_reply = self._exit
                if exit_reply is not None and select.select([exit_reply], [], [], 0)[0]:
                    self._take_status(exit_reply)
            finally:
                self._waitpid_lock.release()  # type: ignore[attr-defined]
        return self.returncode

    def _wait(self, timeout: float | None) -> int:
        if not self._waitpid_lock.acquire(timeout=-1 if timeout is None else timeout):  # type: ignore[attr-defined]
            raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
        try:
            exit_reply = self._exit
            if self.returncode is None and exit_reply is not None:
                if not select.select([exit_reply], [], [], timeout)[0]:
                    raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
                self._take_status(exit_reply)
        finally:
            self._waitpid_lock.release()  # type: ignore[attr-defined]
        return self.returncode  # type: ignore[return-value]


_server: ForkServer | None = None


def shared_server() -> ForkServer:
    """This test process's fork server, started on first use."""
    global _server
    if _server is None:
        _server = ForkServer()
        atexit.register(_server.close)  # waited for: its children's CPU time counts in ours
    return _server


def server_for(argv: list[str], options: Mapping[str, Any]) -> ForkServer | None:
    """The fork server, if it can start this child as a new interpreter would; else None."""
    if not ENABLED or fresh_interpreter or not set(options) <= SERVED_OPTIONS:
        return None
    if list(argv[:3]) != [sys.executable, "-m", "inspera_cli"]:
        return None
    server = shared_server()
    env = options.get("env")
    return server if server.serves(process_environment() if env is None else env) else None


def run(server: ForkServer, argv: list[str], *, input: Any = None, capture_output: bool = False,
        timeout: float | None = None, check: bool = False, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """subprocess.run, with the process from the fork server."""
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with ForkedPopen(server, argv, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            process.kill()
            exc.stdout, exc.stderr = process.communicate()
            raise
        except BaseException:
            process.kill()
            raise
        code = process.poll()
    if check and code:
        raise subprocess.CalledProcessError(code, process.args, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(process.args, code, stdout, stderr)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
