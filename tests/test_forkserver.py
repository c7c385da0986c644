"""The fork server (tests/forkserver.py) against a new interpreter: a probe module run both ways
reports what a program can see of how it was started, and the reports must be equal."""

from __future__ import annotations

import functools
import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import forkserver, processes

# The probe first imports what the server preloads, as the CLI does: what a module sets as it is
# imported (urllib3 adds warning filters) is then the same both ways.
PROBE = '''
import json, locale, os, signal, sys, warnings
import PRELOADED
main_names = sorted(globals())


def stream(s):
    raw = getattr(s.buffer, "raw", s.buffer)
    return [s.encoding, s.errors, s.line_buffering, s.write_through, s.isatty(), s.mode, raw.name,
            type(s.buffer).__name__, s.fileno()]


def umask():
    with open("/proc/self/status") as status:
        return next(line.split()[1] for line in status if line.startswith("Umask:"))


signals = {sig.name: repr(signal.getsignal(sig)) for sig in signal.valid_signals() if sig < 32}
print(json.dumps({
    "main": main_names, "name": __name__, "file": __file__, "spec": __spec__.name,
    "argv": sys.argv, "orig_argv": sys.orig_argv, "path0": sys.path[0], "flags": list(sys.flags),
    "dont_write_bytecode": sys.dont_write_bytecode, "warnoptions": sys.warnoptions,
    "filters": [repr(f) for f in warnings.filters], "environ": dict(os.environ), "cwd": os.getcwd(),
    "umask": umask(), "signals": signals, "streams": [stream(s) for s in (sys.stdin, sys.stdout, sys.stderr)],
    "same_std": [sys.stdin is sys.__stdin__, sys.stdout is sys.__stdout__, sys.stderr is sys.__stderr__],
    "encodings": [locale.getpreferredencoding(False), sys.getfilesystemencoding(),
                  sys.getfilesystemencodeerrors()],
    "fds": sorted(os.listdir("/proc/self/fd")), "pgid": os.getpgid(0), "sid": os.getsid(0),
    "stdin": sys.stdin.read(), "executable": sys.executable,
}), flush=True)
print("on stderr", file=sys.stderr)
if "--wait" in sys.argv:
    sys.stdin.close()
    signal.pause()
sys.exit(3)
'''.replace("PRELOADED", ", ".join(forkserver.PRELOAD))


@pytest.fixture(scope="module")
def server() -> Iterator[forkserver.ForkServer]:
    started = forkserver.ForkServer()
    yield started
    started.close()


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    (tmp_path / "probe.py").write_text(PROBE)
    return tmp_path


def both(server: forkserver.ForkServer, cwd: Path, *args: str, **kwargs: Any) -> list[Any]:
    """The probe's report, exit code and stderr from a new interpreter, then from a fork."""
    argv = [sys.executable, "-m", "probe", *args]
    runs = [
        subprocess.run(argv, preexec_fn=processes.default_signals, cwd=cwd, **kwargs),
        forkserver.run(server, argv, cwd=cwd, **kwargs),
    ]
    return [(json.loads(done.stdout), done.returncode, done.stderr) for done in runs]


def differences(real: Any, forked: Any) -> Any:
    """Where two reports differ, down to the entries of a mapping."""
    if not (isinstance(real, dict) and isinstance(forked, dict)):
        return (real, forked)
    return {key: differences(real.get(key), forked.get(key)) for key in {*real, *forked}
            if real.get(key) != forked.get(key)}


def test_a_fork_shows_what_a_new_interpreter_shows(server: forkserver.ForkServer, probe: Path) -> None:
    real, forked = both(server, probe, "a b", "é", input="in\n", capture_output=True, text=True,
                        env={**os.environ, "PROBE_VARIABLE": "x y"})
    assert real[0]["environ"]["PROBE_VARIABLE"] == "x y" and real[0]["stdin"] == "in\n"
    assert real[1] == 3 and real[2] == "on stderr\n"
    assert differences(real[0], forked[0]) == {}
    assert forked == real


def test_a_new_session_a_umask_and_inherited_stdio_are_the_same(
    server: forkserver.ForkServer, probe: Path
) -> None:
    old = os.umask(0o027)
    try:
        real, forked = both(server, probe, start_new_session=True, stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    finally:
        os.umask(old)
    assert real[0]["umask"] == "0027" and real[0]["sid"] != os.getsid(0)
    real[0]["pgid"] = real[0]["sid"] = forked[0]["pgid"] = forked[0]["sid"] = "new"
    assert differences(real[0], forked[0]) == {}
    assert forked == real


def test_a_terminal_on_stdout_makes_it_line_buffered_in_both(
    probe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # unbuffered, nothing is line-buffered
    server = forkserver.ForkServer()
    reports = []
    new_interpreter = functools.partial(subprocess.Popen, preexec_fn=processes.default_signals)
    for start in (new_interpreter, functools.partial(forkserver.ForkedPopen, server)):
        leader, follower = pty.openpty()
        with start([sys.executable, "-m", "probe"], cwd=probe, stdout=follower, stdin=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL) as child:
            os.close(follower)
            seen = b""
            while b"\n" not in seen:
                seen += os.read(leader, 65536)
            assert child.wait(10) == 3
        os.close(leader)
        reports.append(json.loads(seen.decode()))
    server.close()
    assert reports[0]["streams"][1][2:5] == [True, False, True]
    assert differences(reports[0], reports[1]) == {}


def test_signals_and_waiting_behave_as_popen(server: forkserver.ForkServer, probe: Path) -> None:
    child = forkserver.ForkedPopen(server, [sys.executable, "-m", "probe", "--wait"], cwd=probe,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    with child:
        assert json.loads(child.stdout.readline())["argv"][1:] == ["--wait"]  # type: ignore[union-attr]
        assert child.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(0.2)
        os.kill(child.pid, 0)  # the pid is the real process's
        child.send_signal(signal.SIGINT)  # Python's default handler: KeyboardInterrupt, then killed by SIGINT
        assert child.wait(10) == -signal.SIGINT
    child = forkserver.ForkedPopen(server, [sys.executable, "-m", "probe", "--wait"], cwd=probe,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    child.kill()
    assert child.wait(10) == -signal.SIGKILL
    assert child.poll() == -signal.SIGKILL


def test_what_a_fork_would_show_differently_gets_a_new_interpreter(server: forkserver.ForkServer) -> None:
    environment = dict(os.environ)
    assert server.serves(environment)
    for name, value in [("PYTHONIOENCODING", "latin-1"), ("LC_ALL", "C"), ("LANG", "C"), ("TZ", "UTC"),
                        ("TYPER_USE_RICH", "0"), ("PYTHONPATH", "/nowhere")]:
        if environment.get(name) != value:
            assert not server.serves({**environment, name: value}), name
    assert "TYPER_USE_RICH" in server.read  # read by typer as it is imported


def test_processes_uses_the_server_only_where_it_is_faithful() -> None:
    if not forkserver.ENABLED:
        pytest.skip("INSPERA_TESTS_FORKSERVER=0")
    with processes.popen([*processes.CLI, "--version"], stdout=subprocess.PIPE) as forked:
        assert isinstance(forked, forkserver.ForkedPopen)
    with processes.popen([*processes.CLI, "--version"], stdout=subprocess.PIPE,
                         env={**os.environ, "PYTHONIOENCODING": "latin-1"}) as real:
        assert not isinstance(real, forkserver.ForkedPopen)
    with processes.popen([*processes.CLI, "--version"], stdout=subprocess.PIPE, pass_fds=()) as real:
        assert not isinstance(real, forkserver.ForkedPopen)
    done = processes.run([*processes.CLI, "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("inspera-hooks ")


@pytest.mark.fresh_interpreter
def test_a_test_marked_fresh_interpreter_gets_a_new_interpreter() -> None:
    with processes.popen([*processes.CLI, "--version"], stdout=subprocess.PIPE) as real:
        assert not isinstance(real, forkserver.ForkedPopen)


def test_a_child_outliving_its_popen_is_still_reaped(server: forkserver.ForkServer, probe: Path) -> None:
    child = forkserver.ForkedPopen(server, [sys.executable, "-m", "probe"], cwd=probe,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    pid = child.pid
    assert child.wait(10) == 3
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:  # no zombie left
        time.sleep(0.01)
    assert not Path(f"/proc/{pid}").exists()
