"""Start-up benchmark: commands and TAB against a bare two-command Typer app, and `list` on a terminal.

    python tests/bench_startup.py [ROUNDS]          (default 30)

Not a pytest test. Every program runs with this interpreter, with compiled bytecode (as an installed
package has: the cache goes to a temporary PYTHONPYCACHEPREFIX, written by the warm-up runs). The
machine may be shared, so the programs are measured in rounds, each round running every program
once, one after the other, and each figure is the median over all rounds: programs compared are
measured side by side, under the same load. With hyperfine on PATH each round is one hyperfine
run; without it, the programs are timed here.

1. Start-up, against the bare app's plain `--help` (Click's formatter, as inspera-hooks uses), on
   the same Typer: `inspera-hooks --help`, `events --help`, `sign --secret-env S FILE`, TAB after
   `li` (`_INSPERA_HOOKS_COMPLETE=complete_bash`), and `list` (3 rows, piped) against a local stub
   tenant minus its HTTP time: a script that sends the same GET with requests, less `python -c
   pass`. Target: each <= 1.3 (issue #18).
2. `list` of 1,000 rows with stdout on a terminal (a pty, 120 columns) against the same piped.
   Target: <= 1.5.

Exit status 0 when every target is met.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

from stub_server import Reply, StubInspera

BARE_APP = '''
import sys

import typer

# Typer's default help is rendered with Rich; "plain" is Click's formatter, as inspera-hooks uses.
MODE = None if sys.argv[1:2] == ["plain"] else "rich"
if sys.argv[1:2] == ["plain"]:
    del sys.argv[1]

app = typer.Typer(rich_markup_mode=MODE)


@app.command()
def hello(name: str) -> None:
    """Say hello."""
    print(f"hello {name}")


@app.command()
def goodbye(name: str) -> None:
    """Say goodbye."""
    print(f"goodbye {name}")


app()
'''
HTTP_ALONE = """
import sys

import requests

session = requests.Session()
answer = session.get(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]}, timeout=10)
answer.raise_for_status()
"""
START_UP_TARGET = 1.3
TERMINAL_TARGET = 1.5
ROWS = 1000
COLUMNS = 120
BARE = "bare Typer app, plain --help"
LIST_NAME = "inspera-hooks list (3 rows, piped)"
HTTP_ALONE_NAME = "  HTTP alone (requests, 1 GET)"
PYTHON_NAME = "  python -c pass"
LIST_NET_NAME = "list minus its HTTP time"
TARGETED = {"inspera-hooks events --help", "inspera-hooks sign FILE", "TAB after `inspera-hooks li`",
            LIST_NET_NAME}


def subscriptions(count: int) -> dict[str, object]:
    return {
        "subscriptions": [
            {
                "subscriptionId": 100000 + n,
                "event": "confirm_final_grades" if n % 2 else "complete_grading",
                "endpoint": f"https://hooks.example.edu/inspera/receiver/{n}?tenant=assessment",
                "lastModified": "2026-11-30T12:34:56.789Z",
            }
            for n in range(count)
        ]
    }


def console_script() -> list[str]:
    """The installed entry point next to this interpreter (not a pyenv-style shim), else `-m`."""
    beside = Path(sys.executable).parent / "inspera-hooks"
    return [sys.executable, str(beside)] if beside.exists() else [sys.executable, "-m", "inspera_cli"]


def with_env(env: dict[str, str], argv: list[str]) -> list[str]:
    """argv run through env(1), so that hyperfine (which sets no variables) runs it as we would."""
    return ["env", *(f"{k}={v}" for k, v in env.items()), *argv]


class Times:
    """Wall and CPU (user + system) seconds of one program's runs."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []


def time_here(argv: list[str], times: Times | None = None) -> None:
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{argv} exited {child.returncode}")
    if times is not None:
        times.wall.append(time.perf_counter() - started)
        times.cpu.append(usage.ru_utime + usage.ru_stime)


def round_with_hyperfine(hyperfine: str, programs: dict[str, list[str]], times: dict[str, Times],
                         tmp: Path) -> None:
    export = tmp / "hyperfine.json"
    subprocess.run(
        [hyperfine, "-N", "--style", "none", "--runs", "1", "--export-json", str(export),
         *(subprocess.list2cmdline(argv) for argv in programs.values())],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    results = json.loads(export.read_text(encoding="utf-8"))["results"]
    for name, result in zip(programs, results, strict=True):
        (wall,) = result["times"]
        times[name].wall.append(wall)
        times[name].cpu.append(result["user"] + result["system"])


def measure(programs: dict[str, list[str]], rounds: int, tmp: Path) -> dict[str, tuple[float, float]]:
    """The median wall and CPU time of each program over ``rounds`` rounds, each running every
    program once."""
    hyperfine = shutil.which("hyperfine")
    for argv in programs.values():  # compile and cache bytecode, warm the file cache
        for _ in range(2):
            time_here(argv)
    times = {name: Times() for name in programs}
    for _ in range(rounds):
        if hyperfine:
            round_with_hyperfine(hyperfine, programs, times, tmp)
        else:
            for name, argv in programs.items():
                time_here(argv, times[name])
    return {name: (statistics.median(t.wall), statistics.median(t.cpu)) for name, t in times.items()}


def run_on_terminal(argv: list[str], env: dict[str, str]) -> float:
    """Run with stdout on a pty of COLUMNS columns, reading all it prints; the wall time."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, COLUMNS, 0, 0))
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.DEVNULL,
                               env=env)
    os.close(follower)
    while True:
        try:
            if not os.read(leader, 65536):
                break
        except OSError:  # EIO: the program closed the terminal
            break
    code = process.wait()
    elapsed = time.perf_counter() - started
    os.close(leader)
    if code != 0:
        raise RuntimeError(f"{argv} exited {code}")
    return elapsed


def run_piped(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, check=True)
    return time.perf_counter() - started


def terminal_against_piped(argv: list[str], env: dict[str, str], rounds: int) -> tuple[float, float]:
    run_piped(argv, env)
    run_on_terminal(argv, env)
    terminal: list[float] = []
    piped: list[float] = []
    for _ in range(rounds // 2):
        terminal.append(run_on_terminal(argv, env))
        piped.append(run_piped(argv, env))
    return statistics.median(terminal), statistics.median(piped)


def child_environment(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("INSPERA_", "_INSPERA_", "COMP_", "PYTHONDONTWRITEBYTECODE"))}
    env.update(PYTHONPYCACHEPREFIX=str(tmp / "pycache"), XDG_CONFIG_HOME=str(tmp / "cfg"),
               XDG_CACHE_HOME=str(tmp / "cache"), TERM=env.get("TERM", "xterm-256color"))
    return env


def cached_token(ours: list[str], env: dict[str, str], tenant: StubInspera) -> str:
    """Run `list` once so that the token is in the cache, as on every run but a user's first."""
    subprocess.run([*ours, "list", "--json"], env=env, check=True, capture_output=True)
    return f"stub-token-{tenant.tokens_issued}"


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    small, big = StubInspera(), StubInspera()
    small.on("GET", "/api/v1/subscription", Reply(body=subscriptions(3)))
    big.on("GET", "/api/v1/subscription", Reply(body=subscriptions(ROWS)))
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        env = child_environment(tmp)
        os.environ.clear()
        os.environ.update(env)  # hyperfine's children inherit it
        bare_app, http_alone, body = tmp / "bare_app.py", tmp / "http_alone.py", tmp / "body.json"
        bare_app.write_text(BARE_APP, encoding="utf-8")
        http_alone.write_text(HTTP_ALONE, encoding="utf-8")
        body.write_text('{"event": "confirm_final_grades"}', encoding="utf-8")
        ours = console_script()
        tenant = {"INSPERA_URL": small.url, "INSPERA_CLIENT_ID": "c", "INSPERA_API_KEY": "k"}
        token = cached_token(ours, {**env, **tenant}, small)
        tab = {"_INSPERA_HOOKS_COMPLETE": "complete_bash", "COMP_WORDS": "inspera-hooks li",
               "COMP_CWORD": "1"}
        completed = subprocess.run(ours, env={**env, **tab}, capture_output=True, text=True, check=True)
        assert completed.stdout.split() == ["list", "listen"], completed
        programs = {
            BARE: [sys.executable, str(bare_app), "plain", "--help"],
            "inspera-hooks --help": [*ours, "--help"],
            "inspera-hooks events --help": [*ours, "events", "--help"],
            "inspera-hooks sign FILE": with_env({"S": "x"}, [*ours, "sign", "--secret-env", "S", str(body)]),
            "TAB after `inspera-hooks li`": with_env(tab, ours),
            LIST_NAME: with_env(tenant, [*ours, "list"]),
            HTTP_ALONE_NAME: [sys.executable, str(http_alone), f"{small.url}/api/v1/subscription", token],
            PYTHON_NAME: [sys.executable, "-c", "pass"],
        }
        medians = measure(programs, rounds, tmp)
        big_tenant = {**env, **tenant, "INSPERA_URL": big.url}
        terminal, piped = terminal_against_piped([*ours, "list"], big_tenant, rounds)
    small.close()
    big.close()
    return report(medians, terminal, piped, rounds)


def report(medians: dict[str, tuple[float, float]], terminal: float, piped: float, rounds: int) -> int:
    """Print the figures; 0 when each targeted ratio (of wall times) is met."""

    def net(name: str, which: int) -> float:
        if name != LIST_NET_NAME:
            return medians[name][which]
        http = medians[HTTP_ALONE_NAME][which] - medians[PYTHON_NAME][which]
        return medians[LIST_NAME][which] - http

    tool = "hyperfine" if shutil.which("hyperfine") else "timed here"
    print(f"Start-up, {rounds} rounds ({tool}): medians, and their ratios to the bare app")
    print(f"  {'':38} {'wall':>8}  {'ratio':>5}  {'CPU':>8}  {'ratio':>5}")
    met = []
    for name in [*medians, LIST_NET_NAME]:
        wall, cpu = net(name, 0), net(name, 1)
        ratio = wall / medians[BARE][0]
        targeted = name in TARGETED
        print(f"  {name:38} {wall * 1000:5.1f} ms  {ratio:5.2f}  {cpu * 1000:5.1f} ms  "
              f"{cpu / medians[BARE][1]:5.2f}" + (f"  (target <= {START_UP_TARGET})" if targeted else ""))
        if targeted:
            met.append(ratio <= START_UP_TARGET)
    ratio = terminal / piped
    print(f"list of {ROWS} rows: on a terminal {terminal * 1000:.1f} ms, piped {piped * 1000:.1f} ms "
          f"(wall, medians): {ratio:.2f} (target <= {TERMINAL_TARGET})")
    met.append(ratio <= TERMINAL_TARGET)
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
