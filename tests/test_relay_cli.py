"""`inspera-hooks relay` as a user runs it: a child process, its exit codes and lines, the
queue subcommands while it runs, SIGTERM, an outage, and SIGKILL at random moments."""

from __future__ import annotations

import json
import signal
import sqlite3
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests import processes
from tests.processes import CLI
from tests.relay_harness import (
    AppStub,
    InsperaLike,
    crash_loop,
    event_body,
    free_port,
    http_get,
    queue_status,
    relay_argv,
    relay_env,
    signed_post,
    start_relay,
)

pytestmark = pytest.mark.timeout(120)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return processes.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=relay_env())


def test_help_documents_the_relay_and_its_subcommands(cli: Any) -> None:
    text = cli("relay", "--help").stdout
    assert "Usage: inspera-hooks relay [OPTIONS] [COMMAND [ARGS]...]" in text
    for name in ("--forward-to", "--queue", "--max-age", "--max-backoff", "--admin-port", "--log-format",
                 "--concurrency", "--tls-cert", "status", "events", "retry", "purge", "Example:"):
        assert name in text
    assert "DURATION" in text and "TEXT" not in text and "INTEGER" not in text


@pytest.mark.parametrize(("args", "message"), [
    (["relay"], "relay needs --forward-to URL"),
    (["relay", "--forward-to", "grades=http://127.0.0.1:1/"], "relay needs --forward-to URL"),
    (["relay", "--forward-to", "http://127.0.0.1:1/", "--max-age", "72x"],
     "--max-age: '72x' is not a duration: give a number and a unit, s, m, h or d"),
    (["relay", "--forward-to", "ftp://x/"], "not an http(s) URL"),
    (["relay", "--forward-to", "http://[::1"], "is not a valid URL (Invalid IPv6 URL)"),
    (["relay", "--forward-to", "http://u:p@127.0.0.1:1/"], "a user name or password in the URL"),
    (["relay", "--forward-to", "http://127.0.0.1:1/", "--host", " "], "--host is empty"),
    (["relay", "purge", "--older-than", "7d"], "pass --delivered"),
    (["relay", "purge", "--delivered", "--older-than", "soon"], "--older-than: 'soon' is not a duration"),
    (["relay", "retry"], "give event ids or --dead"),
    # further than a date can hold: a retry that far ahead crashed the log and `relay events`
    (["relay", "--forward-to", "http://127.0.0.1:1/", "--max-backoff", "99999999999999d"],
     "--max-backoff: '99999999999999d': the duration must be at most 3650d"),
    (["relay", "--forward-to", "http://127.0.0.1:1/", "--max-age", "3651d"], "at most 3650d (10 years)"),
    (["relay", "purge", "--delivered", "--older-than", "99999999999999999999d"], "at most 3650d"),
])
def test_usage_errors_are_one_line_exit_2(cli: Any, args: list[str], message: str) -> None:
    done = cli(*args, expect=2)
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("error:") == 1


def test_the_banner_names_each_route_then_the_default(tmp_path: Path) -> None:
    """As listen's: "every event" when there is only the default route ("every other" read as
    every second one), the named routes first."""
    from tests.processes import LineProcess

    for routes, expected in (
        (["--forward-to", "http://127.0.0.1:9/"], ["Delivering every event to http://127.0.0.1:9/"]),
        (["--forward-to", "http://127.0.0.1:9/", "--forward-to", "complete_grading=http://127.0.0.1:9/g"],
         ["Delivering complete_grading to http://127.0.0.1:9/g",
          "Delivering every other event to http://127.0.0.1:9/"]),
    ):
        argv = [*CLI, "relay", *routes, "--queue", str(tmp_path / "q.sqlite"), "--port", "0",
                "--admin-port", "0", "--secret", "relay-banner-secret"]
        with LineProcess(argv, relay_env()) as proc:
            assert proc.wait(lambda: any(line.startswith("Admin:") for line in proc.stderr), 20), proc.stderr
            assert proc.finish(signal.SIGTERM, 15) == 0
        assert [line for line in proc.stderr if line.startswith("Delivering")] == expected


def test_subcommands_on_a_missing_queue_say_so(cli: Any, tmp_path: Path) -> None:
    done = cli("relay", "status", "--queue", str(tmp_path / "none.sqlite"), expect=1)
    assert done.stderr.startswith("inspera-hooks: error: no relay queue at ")
    assert not (tmp_path / "none.sqlite").exists()


def test_events_lists_a_queue_holding_any_time_and_takes_any_limit(cli: Any, tmp_path: Path) -> None:
    """A queue written by an older build with a huge --max-backoff holds a next attempt past year
    9999; a --limit past what SQLite counts means every event. Neither is an "unexpected" error."""
    from inspera_cli.relay.queue import NewEvent, SQLiteQueue

    path = tmp_path / "q.sqlite"
    queue = SQLiteQueue(path, create=True)
    event = NewEvent(b'{"contextObjectId": 1}', "http://127.0.0.1:1/", "confirm_final_grades", 1,
                     "application/json", "sig")
    [stored] = queue.enqueue([event], now=1_700_000_000.0, dedupe_since=0)
    seq = queue._db.execute("SELECT seq FROM events").fetchone()[0]
    queue.retry_later(seq, next_at=1e17, error="answered 503", now=1_700_000_001.0)
    queue.close()
    listed = cli("relay", "events", "--queue", str(path), "--limit", "99999999999999999999", "--json").json
    assert [(e["id"], e["nextAttemptAt"]) for e in listed] == [(stored.id, "9999-12-31T23:59:59.000Z")]
    assert stored.id in cli("relay", "events", "--queue", str(path)).stdout


@pytest.mark.slow
def test_one_relay_per_queue_and_the_subcommands_work_while_it_runs(
    cli: Any, tmp_path: Path, isolated_home: Path
) -> None:
    app = AppStub(answer=lambda d: 500).start()
    data = isolated_home / ".local" / "share" / "inspera-hooks"
    port, admin = free_port(), free_port()
    argv = [*CLI, "relay", "--secret-env", "RELAY_SECRET", "--forward-to", app.url, "--port", str(port),
            "--admin-port", str(admin), "--max-backoff", "1s"]
    proc = start_relay(argv)
    try:
        queue = data / "relay.sqlite"  # the default: the user data directory
        for name in ("relay.sqlite", "relay.sqlite-wal", "relay.sqlite-shm"):
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600
        second = run("relay", "--forward-to", app.url, "--port", "0", "--admin-port", "0")
        assert second.returncode == 1
        assert f"another relay (pid {proc.pid}) is already using the queue {queue}" in second.stderr
        for n in range(3):
            assert signed_post(port, event_body(n)) == 200
        app.answer = lambda d: 200 if json.loads(d.body)["contextObjectId"] == 0 else 500
        deadline = time.monotonic() + 20
        # The app's 2xx comes before the relay commits it as delivered: wait for the commit.
        while cli("relay", "status", "--json").json["delivered"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        status = cli("relay", "status", "--json").json
        assert set(status) == {"pending", "delivered", "dead", "oldestPendingSeconds", "routes"}
        assert (status["pending"], status["delivered"], status["dead"]) == (2, 1, 0)
        assert status["routes"] == [{"url": app.url, "pending": 2, "dead": 0, "lastError": "answered 500"}]
        assert isinstance(status["oldestPendingSeconds"], float)
        listed = cli("relay", "events", "--json", "--state", "pending").json
        assert [set(item) for item in listed] == [{"id", "event", "contextObjectId", "receivedAt", "state",
                                                   "attempts", "nextAttemptAt", "lastError"}] * 2
        assert [item["contextObjectId"] for item in listed] == [2, 1]  # newest first
        assert cli("relay", "events", "--event", "nope", "--json").json == []
        app.answer = lambda d: 500 if json.loads(d.body)["contextObjectId"] == 1 else 200
        assert listed[0]["id"] in cli("relay", "retry", listed[0]["id"][:8]).stderr
        assert "no such event" in cli("relay", "retry", "0123456789", expect=4).stderr
        deadline = time.monotonic() + 10
        while cli("relay", "status", "--json").json["delivered"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.1)
        purged = cli("relay", "purge", "--delivered", "--older-than", "1s").stderr
        assert purged.startswith("Removed 2 delivered events older than 1s")
        after = cli("relay", "status", "--json").json
        assert (after["pending"], after["delivered"], after["dead"]) == (1, 0, 0)  # pending kept
        assert "pending 1, delivered 0, dead 0" in cli("relay", "status").stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        app.stop()


@pytest.mark.slow
def test_sigterm_finishes_deliveries_in_flight_and_exits_0(tmp_path: Path) -> None:
    app = AppStub(delay=2.0).start()
    port, admin = free_port(), free_port()
    proc = start_relay(relay_argv(tmp_path / "q.sqlite", app.url, port, admin))
    try:
        assert signed_post(port, event_body(1)) == 200
        time.sleep(0.5)  # the delivery is in flight: the app answers after 2 s
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        app.stop()
    assert len(app.taken()) == 1
    assert queue_status(tmp_path / "q.sqlite")["delivered"] == 1


@pytest.mark.slow
def test_app_down_while_sending_then_up_everything_is_delivered(tmp_path: Path) -> None:
    app = AppStub()
    app.port = free_port()
    port, admin = free_port(), free_port()
    queue = tmp_path / "q.sqlite"
    proc = start_relay(relay_argv(queue, app.url, port, admin, "--max-backoff", "1s"))
    try:
        sender = InsperaLike(port, 200).start()
        assert sender.join(30)
        assert queue_status(queue)["pending"] == 200
        app.start()
        deadline = time.monotonic() + 30
        while (status := queue_status(queue))["pending"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (status["pending"], status["delivered"], status["dead"]) == (0, 200, 0)
        metrics = dict(line.rsplit(" ", 1) for line in http_get(admin, "/metrics")[1].splitlines()
                       if not line.startswith("#"))
        assert metrics["inspera_relay_received_total"] == "200"
        assert metrics["inspera_relay_delivered_total"] == "200"
        assert metrics["inspera_relay_pending"] == "0"
        # Every attempt is in the histogram, the failed ones too: as many as the queue counted (how
        # many failed depends on timing: while events flood in, attempts are paced).
        db = sqlite3.connect(f"{queue.as_uri()}?mode=ro", uri=True)
        attempts = db.execute("SELECT sum(attempts) FROM events").fetchone()[0]
        db.close()
        assert float(metrics["inspera_relay_delivery_seconds_count"]) == attempts > 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        app.stop()
    ids = [d.delivery_id for d in app.taken()]
    assert len(ids) == len(set(ids)) == 200
    assert {d.body for d in app.taken()} == sender.acknowledged


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    report = crash_loop(tmp_path, events=300, kills=6, seed=11)
    print(f"crash loop: {len(report.kills)} kills, {report.acknowledged} acknowledged, "
          f"{report.delivered_ids} delivered, duplicates after a kill: {len(report.duplicates)}")
    assert report.acknowledged == 300
    assert report.missing == 0
    assert report.split == 0
    assert report.unexplained == []
    assert len(report.duplicates) <= 4 * len(report.kills)  # at most the attempts in flight per kill
