"""Ctrl-C and SIGTERM at each moment of a write -- before the POST, while Inspera validates the
endpoint, while its answer is on the way -- to `create`, `apply`, `listen --subscribe a,b` and
`listen --tunnel cloudflared --subscribe`. Then the tenant is listed: nothing is left that the
command did not report, and after `listen` nothing at all.

Slowness comes from gates (tests/gate.py) that hold a request until the test releases it: in
front of the validation target, or of the tenant's API. Children start through tests/processes.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from inspera_cli import interrupts
from inspera_cli.sandbox import Sandbox, SandboxConfig
from tests.conftest import SANDBOX_API_KEY, SANDBOX_CLIENT_ID, Cli
from tests.gate import Gate
from tests.processes import CLI, LineProcess
from tests.receiver import free_port
from tests.test_listen_tunnel import HOSTS, Listen, gone, standin_env, standin_pid

A, B, C = "confirm_final_grades", "complete_grading", "test_closed"
SUBS = "/api/v1/subscription"
HOLD_NOTICE = "Interrupted: waiting for"
HOOK_SECRET = "interrupt-test-secret-77d1"


class Tenant(Sandbox):
    """A sandbox whose validation waits longer than any gate holds, and that notes each answer;
    ``api`` is the gate in front of its API, if the test asked for one."""

    def __init__(self, resolve: dict[str, int] | None = None) -> None:
        self.answered: list[str] = []
        self.api: Gate | None = None
        super().__init__(SandboxConfig(
            port=0, client_id=SANDBOX_CLIENT_ID, api_key=SANDBOX_API_KEY, validation_timeout=25.0,
            resolve={host: ("127.0.0.1", port) for host, port in (resolve or {}).items()},
            log=self.answered.append,
        ))

    @property
    def front(self) -> Gate:
        assert self.api is not None, "started without front="
        return self.api

    def settle(self, gate: Gate) -> None:
        """Release the gate; return once the tenant has answered every create it received."""
        gate.release()
        assert gate.finished.wait(20)
        deadline = time.monotonic() + 10
        while sum(line.startswith(f"POST {SUBS} ") for line in self.answered) < posts(self):
            assert time.monotonic() < deadline, self.answered
            time.sleep(0.02)


@pytest.fixture
def gates() -> Iterator[Callable[..., Gate]]:
    made: list[Gate] = []

    def make(*args: Any, **kwargs: Any) -> Gate:
        made.append(Gate(*args, **kwargs))
        return made[-1]

    yield make
    for gate in made:
        gate.close()


@pytest.fixture
def tenant(monkeypatch: pytest.MonkeyPatch, gates: Any) -> Iterator[Callable[..., Tenant]]:
    """Starts a Tenant; INSPERA_* point at it, or with ``front`` (the Gate's keyword arguments)
    at a gate in front of its API."""
    started: list[Tenant] = []

    def start(resolve: dict[str, int] | None = None, front: dict[str, Any] | None = None) -> Tenant:
        sandbox = Tenant(resolve)
        sandbox.start()
        started.append(sandbox)
        if front is not None:
            sandbox.api = gates(upstream=sandbox.url, **front)
        monkeypatch.setenv("INSPERA_URL", sandbox.api.url if sandbox.api else sandbox.url)
        monkeypatch.setenv("INSPERA_CLIENT_ID", SANDBOX_CLIENT_ID)
        monkeypatch.setenv("INSPERA_API_KEY", SANDBOX_API_KEY)
        monkeypatch.setenv("HOOK_SECRET", HOOK_SECRET)
        return sandbox

    yield start
    for sandbox in started:
        sandbox.shutdown()


def live(sandbox: Sandbox) -> set[tuple[int, str, str]]:
    return {(s["subscriptionId"], s["event"], s["endpoint"]) for s in sandbox.subscriptions()}


def posts(sandbox: Sandbox) -> int:
    return sandbox.requests.count(("POST", SUBS))


def interrupt_while_held(proc: LineProcess, gate: Gate, *signals: int, held: int = 1) -> None:
    """Once the gate holds ``held`` requests: the first signal (the command says it waits), then
    the others."""
    assert gate.wait_held(held, 20), proc.err_text
    proc.proc.send_signal(signals[0])
    assert proc.wait(lambda: HOLD_NOTICE in proc.err_text), proc.err_text
    for sig in signals[1:]:
        proc.proc.send_signal(sig)


def command(*args: str) -> LineProcess:
    return LineProcess([*CLI, *args], dict(os.environ))


# -- the policy itself, in this process ----------------------------------------------------------


@pytest.fixture
def python_signals() -> Iterator[None]:
    """SIGINT and SIGTERM as Python sets them for a program started in the foreground (whatever
    this test run inherited), restored afterwards."""
    previous = {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_the_policy_holds_once_stops_waiting_on_the_second_and_never_cuts_cleanup_short(
    python_signals: None,
) -> None:
    notes: list[str] = []

    def noted(text: str) -> bool:
        deadline = time.monotonic() + 5
        while not (notes and notes[-1].startswith(text)) and time.monotonic() < deadline:
            time.sleep(0.01)
        return bool(notes) and notes[-1].startswith(text)

    with interrupts.handled(notes.append):
        with pytest.raises(interrupts.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    with interrupts.handled(notes.append):
        finished = False
        with pytest.raises(KeyboardInterrupt), interrupts.write("the test write") as signalled:
            os.kill(os.getpid(), signal.SIGINT)
            assert noted("Interrupted: waiting for the test write") and signalled.is_set()
            finished = True
        assert finished
        os.kill(os.getpid(), signal.SIGINT)  # stopping: only announced from now on
        assert noted("Stopping...")
    with interrupts.handled(notes.append):
        with pytest.raises(interrupts.Terminated), interrupts.write("another write"):
            os.kill(os.getpid(), signal.SIGINT)
            assert noted("Interrupted: waiting for another write")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
            pytest.fail("a second signal stops the wait")
    with interrupts.handled(notes.append), interrupts.cleanup("tidying up"):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):  # back to back: no reentrant write
            os.kill(os.getpid(), sig)
        assert noted("Stopping: tidying up first.")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_that_lands_on_another_thread_still_interrupts_the_blocked_main_thread(
    python_signals: None,
) -> None:
    """The kernel may deliver a process's signal to any thread (two back to back, the second often
    goes elsewhere); the main thread, blocked in a socket read as in a create, must hear it."""
    bystander = threading.Thread(target=time.sleep, args=(3,), daemon=True)
    bystander.start()
    assert bystander.ident is not None
    reader, writer = socket.socketpair()
    reader.settimeout(10)
    kill = threading.Timer(0.2, signal.pthread_kill, args=(bystander.ident, signal.SIGTERM))
    with reader, writer, interrupts.handled(print):
        started = time.monotonic()
        kill.start()
        with pytest.raises(interrupts.Terminated):
            reader.recv(1)
    assert time.monotonic() - started < 5


def test_a_signal_in_the_middle_of_a_message_loses_no_line_after_it(
    python_signals: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM while `listen` prints its banner: the interrupt used to be raised inside Rich's
    print, between its buffer's enter and exit, and the console buffered every later line for good
    -- `listen` exited 0 without its summary. Now the print ends first, then the signal is raised."""
    from rich.console import Console

    from inspera_cli import output

    enter = Console._enter_buffer
    signalled: list[bool] = []

    def enter_then_signal(console: Console) -> None:
        enter(console)
        if not signalled:  # lands right after the buffer's enter, as a signal may
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Console, "_enter_buffer", enter_then_signal)
    output.configure()  # consoles on this test's captured stderr
    with interrupts.handled(print):
        with pytest.raises(interrupts.Terminated):
            output.info("  Forwarding every event to http://127.0.0.1:5000/")
        output.info("Stopped after 1.0 s: 1 webhook request, 0 accepted.")
    output.configure()
    assert signalled
    assert capsys.readouterr().err.splitlines() == [
        "  Forwarding every event to http://127.0.0.1:5000/",
        "Stopped after 1.0 s: 1 webhook request, 0 accepted.",
    ]


def test_a_signal_ignored_by_the_parent_stays_ignored(python_signals: None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup, or in a background job
    with interrupts.handled(print):
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL


# -- create --------------------------------------------------------------------------------------


def created_items(proc: LineProcess) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads("\n".join(proc.stdout))
    return items


def test_create_interrupted_before_the_post_makes_nothing(tenant: Any, gates: Any) -> None:
    sandbox = tenant(front={"hold": ("GET", SUBS)})
    api = sandbox.front
    with command("create", "--event", A, "--endpoint", gates(("POST", "/")).url, "--json") as proc:
        assert api.arrived.wait(20), proc.err_text
        assert proc.finish(signal.SIGTERM) == 130
    assert created_items(proc) == [] and "inspera-hooks: error: interrupted" in proc.err_text
    assert posts(sandbox) == 0 and live(sandbox) == set()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_create_waits_for_the_validation_in_flight_and_shows_what_it_made(
    tenant: Any, gates: Any, sig: int
) -> None:
    sandbox = tenant()
    target = gates(("POST", "/hook"), skip=1)  # A validates at once, B is held
    endpoint = f"{target.url}/hook"
    with command("create", "--event", f"{A},{B}", "--endpoint", endpoint, "--json") as proc:
        interrupt_while_held(proc, target, sig)
        target.release()
        assert proc.finish() == 130
    items = created_items(proc)
    assert [(i["event"], i["created"]) for i in items] == [(A, True), (B, True)]
    assert live(sandbox) == {(i["subscriptionId"], i["event"], endpoint) for i in items}
    secret = items[0]["secret"]
    assert items[1]["secret"] == secret and f"Webhook secret: {secret}" in proc.stderr


def test_create_interrupted_while_the_answer_is_on_its_way(tenant: Any, gates: Any) -> None:
    sandbox = tenant(front={"hold": ("POST", SUBS), "when": "after"})
    api = sandbox.front
    endpoint = gates(("POST", "/never-held")).url + "/"
    with command("create", "--event", A, "--endpoint", endpoint, "--secret-env", "HOOK_SECRET") as proc:
        interrupt_while_held(proc, api, signal.SIGTERM)
        assert len(sandbox.subscriptions()) == 1  # made, and the command does not know yet
        api.release()
        assert proc.finish() == 130
    ((sid, _, _),) = live(sandbox)
    assert any(line.split()[:2] == [str(sid), A] for line in proc.stdout), proc.stdout
    assert HOOK_SECRET not in proc.err_text + "\n".join(proc.stdout) and "Webhook secret" not in proc.err_text


def test_a_second_signal_stops_waiting_and_create_says_what_may_exist(tenant: Any, gates: Any) -> None:
    sandbox = tenant()
    target = gates(("POST", "/hook"))
    endpoint = f"{target.url}/hook"
    with command("create", "--event", A, "--endpoint", endpoint, "--json") as proc:
        interrupt_while_held(proc, target, signal.SIGINT, signal.SIGTERM)
        assert proc.finish() == 130  # without waiting for the gate
    (item,) = created_items(proc)
    assert (item["created"], item["error"]) == (False, "stopped waiting for Inspera's answer: it may still "
                                                "make this subscription")
    assert f"Webhook secret: {item['secret']}" in proc.stderr
    assert f"check inspera-hooks list --event {A}" in proc.err_text
    sandbox.settle(target)
    assert {(e, u) for _, e, u in live(sandbox)} == {(A, endpoint)}  # what it said may exist


# -- apply ---------------------------------------------------------------------------------------


def hooks_file(tmp_path: Path, endpoint: str, events: tuple[str, ...]) -> Path:
    path = tmp_path / "hooks.toml"
    path.write_text("".join(
        f'[[subscription]]\nevent = "{e}"\nendpoint = "{endpoint}"\nsecret_env = "HOOK_SECRET"\n\n'
        for e in events
    ))
    return path


def applied(proc: LineProcess) -> dict[str, Any]:
    document: dict[str, Any] = json.loads("\n".join(proc.stdout))
    return document


def test_apply_interrupted_before_the_post_makes_nothing(tenant: Any, gates: Any, tmp_path: Path) -> None:
    sandbox = tenant(front={"hold": ("GET", SUBS)})
    api = sandbox.front
    hooks = hooks_file(tmp_path, gates(("POST", "/")).url + "/", (A, B))
    with command("apply", "-f", str(hooks), "--json") as proc:
        assert api.arrived.wait(20), proc.err_text
        assert proc.finish(signal.SIGINT) == 130
    assert posts(sandbox) == 0 and live(sandbox) == set()


def test_apply_finishes_the_creates_in_flight_starts_no_other_and_a_rerun_converges(
    tenant: Any, gates: Any, tmp_path: Path, cli: Cli
) -> None:
    sandbox = tenant()
    target = gates(("POST", "/hook"), skip=1)
    endpoint = f"{target.url}/hook"
    hooks = hooks_file(tmp_path, endpoint, (A, B, C))
    with command("apply", "-f", str(hooks), "--concurrency", "1", "--json") as proc:
        interrupt_while_held(proc, target, signal.SIGTERM)
        target.release()
        assert proc.finish() == 130
    creates = applied(proc)["create"]
    assert [(c["event"], c["created"]) for c in creates] == [(A, True), (B, True), (C, False)]
    assert creates[2]["error"].startswith("not started: interrupted")
    assert live(sandbox) == {(c["subscriptionId"], c["event"], endpoint) for c in creates[:2]}
    again = cli("apply", "-f", str(hooks), "--json").json
    assert [c["event"] for c in again["create"]] == [C] and len(again["unchanged"]) == 2
    assert {e for _, e, _ in live(sandbox)} == {A, B, C}


def test_apply_interrupted_while_the_answers_are_on_their_way(
    tenant: Any, gates: Any, tmp_path: Path
) -> None:
    sandbox = tenant(front={"hold": ("POST", SUBS), "when": "after"})
    api = sandbox.front
    hooks = hooks_file(tmp_path, gates(("POST", "/never-held")).url + "/", (A, B))
    with command("apply", "-f", str(hooks)) as proc:
        # Both answers held before the signal: with one, the second create may not have begun,
        # and an interrupted apply starts no other change.
        interrupt_while_held(proc, api, signal.SIGINT, held=2)
        api.release()
        assert proc.finish() == 130
    reported = {(int(line.rsplit("id ", 1)[1].rstrip(")")), line.split()[2]) for line in proc.stdout
                if line.startswith("+ created")}
    assert {(sid, event) for sid, event, _ in live(sandbox)} == reported and len(reported) == 2
    assert "Interrupted: 2 of 2 changes made" in proc.err_text


def test_a_second_signal_stops_apply_waiting_and_a_rerun_converges(
    tenant: Any, gates: Any, tmp_path: Path, cli: Cli
) -> None:
    sandbox = tenant()
    target = gates(("POST", "/hook"))
    endpoint = f"{target.url}/hook"
    hooks = hooks_file(tmp_path, endpoint, (A, B))
    with command("apply", "-f", str(hooks), "--json") as proc:
        # Both validations held: neither create's outcome is known when the signals come.
        interrupt_while_held(proc, target, signal.SIGINT, signal.SIGINT, held=2)
        assert proc.finish() == 130  # without waiting for the gate
    creates = applied(proc)["create"]
    assert [c["created"] for c in creates] == [False, False]
    assert all(c["error"].startswith("outcome unknown") for c in creates)
    sandbox.settle(target)
    assert {e for _, e, _ in live(sandbox)} <= {c["event"] for c in creates}
    cli("apply", "-f", str(hooks))
    assert sorted(e for _, e, _ in live(sandbox)) == sorted([A, B])  # each once


# -- listen --subscribe a,b ----------------------------------------------------------------------


def listen_subscribe(port: int, public_url: str) -> LineProcess:
    return command("listen", "--port", str(port), "--path", "/hooks", "--subscribe", f"{A},{B}",
                   "--public-url", public_url)


def test_listen_interrupted_before_the_post_makes_nothing(tenant: Any, gates: Any) -> None:
    sandbox = tenant(front={"hold": ("GET", SUBS)})
    api = sandbox.front
    with listen_subscribe(free_port(), "http://127.0.0.1:9/hooks") as proc:
        assert api.arrived.wait(20), proc.err_text
        assert proc.finish(signal.SIGTERM) == 0
    assert posts(sandbox) == 0 and live(sandbox) == set()


@pytest.mark.parametrize(("held", "sig"), [(A, signal.SIGINT), (B, signal.SIGTERM)])
def test_listen_waits_for_the_create_in_flight_then_deletes_everything(
    tenant: Any, gates: Any, held: str, sig: int
) -> None:
    sandbox = tenant()
    port = free_port()
    target = gates(("POST", "/hooks"), upstream=f"http://127.0.0.1:{port}", skip=[A, B].index(held))
    with listen_subscribe(port, f"{target.url}/hooks") as proc:
        interrupt_while_held(proc, target, sig)
        target.release()
        assert proc.finish() == 0
    made = [line for line in proc.stderr if line.startswith("Subscribed:")]
    deleted = [line for line in proc.stderr if line.startswith("Deleted subscription")]
    assert len(made) == len(deleted) == (1 if held == A else 2), proc.err_text
    assert live(sandbox) == set()


def test_listen_deletes_everything_after_both_subscribed_and_more_signals_do_not_cut_it_short(
    tenant: Any,
) -> None:
    sandbox = tenant(front={"hold": ("DELETE", f"{SUBS}/1")})  # the second delete is held
    port = free_port()
    with listen_subscribe(port, f"http://127.0.0.1:{port}/hooks") as proc:
        assert proc.wait(lambda: proc.err_text.count("Subscribed:") == 2), proc.err_text
        assert len(live(sandbox)) == 2
        proc.proc.send_signal(signal.SIGINT)
        assert sandbox.front.arrived.wait(20), proc.err_text
        proc.proc.send_signal(signal.SIGINT)
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(lambda: "Stopping: deleting the subscriptions" in proc.err_text), proc.err_text
        sandbox.front.release()
        assert proc.finish() == 0
    assert live(sandbox) == set() and proc.err_text.count("Deleted subscription") == 2


def test_a_second_signal_stops_listen_waiting_and_it_still_leaves_nothing(tenant: Any, gates: Any) -> None:
    """The abandoned validation is let through while listen looks for what it may have made (the
    lookup is held once the tenant has answered it): listen must have closed its receiver first."""
    # Held: the lookup, not the first listing.
    sandbox = tenant(front={"hold": ("GET", SUBS), "when": "after", "skip": 1})
    api = sandbox.front
    port = free_port()
    target = gates(("POST", "/hooks"), upstream=f"http://127.0.0.1:{port}")
    with listen_subscribe(port, f"{target.url}/hooks") as proc:
        interrupt_while_held(proc, target, signal.SIGINT, signal.SIGINT)
        assert api.arrived.wait(20), proc.err_text
        sandbox.settle(target)  # the validation reaches the listener's port only now
        api.release()
        assert proc.finish() == 0
    assert live(sandbox) == set()


# -- listen --tunnel cloudflared --subscribe -----------------------------------------------------


@pytest.mark.parametrize(
    "signals", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)], ids=["once", "twice"]
)
def test_listen_with_a_tunnel_leaves_nothing(
    tenant: Any, gates: Any, tmp_path: Path, signals: tuple[int, ...]
) -> None:
    port = free_port()
    target = gates(("POST", "/hooks"), upstream=f"http://127.0.0.1:{port}")
    sandbox = tenant(resolve={HOSTS["cloudflared"]: target.server.server_address[1]})
    with Listen("--tunnel", "cloudflared", "--subscribe", A, "--path", "/hooks", port=port,
                env=standin_env(tmp_path, "cloudflared")) as proc:
        interrupt_while_held(proc, target, *signals)
        if len(signals) == 1:
            target.release()
        assert proc.finish() == 0
    sandbox.settle(target)
    assert live(sandbox) == set()
    assert gone(standin_pid(tmp_path / "standin.json"))
    if len(signals) == 1:
        assert "Subscribed:" in proc.err_text and "Deleted subscription" in proc.err_text
