"""`replay` of `listen --record` files (spec §4 format) against a real stdlib receiver."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inspera_cli.signing import sign
from inspera_cli.webhook_body import build_body, verification_body
from tests.conftest import Cli
from tests.processes import CLI, popen, run
from tests.receiver import Receiver, free_port

SECRET = "replay-test-secret-42ab"
OLD_SECRET = "the-secret-it-was-recorded-with"


def record_line(
    body: bytes, *, status: int = 200, received_at: str = "2024-05-01T12:00:00Z", **extra: Any
) -> str:
    """One line as `listen --record` writes it: the `--json` object plus body and headers."""
    try:
        text: str | None = body.decode("utf-8")
        raw = text
    except UnicodeDecodeError:
        text, raw = None, body.decode("utf-8", "replace")
    try:
        payload: Any = json.loads(body)
    except ValueError:
        payload = None
    item: dict[str, Any] = {
        "receivedAt": received_at,
        "event": payload.get("event") if isinstance(payload, dict) else None,
        "contextObjectId": payload.get("contextObjectId") if isinstance(payload, dict) else None,
        "payload": payload,
        "raw": raw,
        "signature": "valid",
        "delivery": 1,
        "status": status,
        "forward": None,
        "headers": {"Content-Type": "application/json", "X-Inspera-Signature": sign(body, OLD_SECRET)},
    }
    if text is not None:
        item["body"] = text
    else:
        item["bodyBase64"] = base64.b64encode(body).decode()
    item.update(extra)
    return json.dumps(item)


def event_body(event: str, object_id: int, minute: int = 0) -> bytes:
    return build_body(event, object_id, timestamp=f"2024-05-01T12:{minute:02d}:00Z")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(secret=SECRET) as r:
        yield r


@pytest.fixture
def recording(tmp_path: Path) -> tuple[Path, list[bytes]]:
    """A file with a verification, three events (one failed), in arrival order."""
    bodies = [
        event_body("confirm_final_grades", 1, 1),
        event_body("resource_created", 2, 2),
        event_body("confirm_final_grades", 3, 3),
    ]
    lines = [
        record_line(verification_body(), received_at="2024-05-01T11:59:00Z"),
        record_line(bodies[0], received_at="2024-05-01T12:01:00Z"),
        record_line(bodies[1], received_at="2024-05-01T12:02:00Z", status=502),
        record_line(bodies[2], received_at="2024-05-01T12:03:00+00:00"),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, bodies


def replay(cli: Cli, path: Path, url: str, *args: str, expect: int = 0) -> Any:
    return cli("replay", str(path), "--to", url, "--secret-env", "HOOK_SECRET", *args,
               env={"HOOK_SECRET": SECRET}, expect=expect)


def test_replay_resends_bytes_in_order_re_signed(
    cli: Cli, receiver: Receiver, recording: tuple[Path, list[bytes]]
) -> None:
    path, bodies = recording
    result = replay(cli, path, receiver.url, "--json")
    assert [r.body for r in receiver.received] == bodies  # verification skipped
    for got in receiver.received:
        assert got.signature == sign(got.body, SECRET)
        assert got.headers["content-type"] == "application/json"
    assert result.json == [
        {"attempt": i, "status": 200, "latencyMs": item["latencyMs"], "error": None, "event": event,
         "contextObjectId": i}
        for i, (item, event) in enumerate(
            zip(result.json, ["confirm_final_grades", "resource_created", "confirm_final_grades"],
                strict=True),
            start=1,
        )
    ]
    assert SECRET not in result.stdout + result.stderr


def test_replay_human_output(cli: Cli, receiver: Receiver, recording: tuple[Path, list[bytes]]) -> None:
    path, _ = recording
    result = replay(cli, path, receiver.url)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("#1  confirm_final_grades 1  200 OK  ")  # with its contextObjectId
    assert lines[1].startswith("#2  resource_created 2  200 OK  ")
    assert "Replaying 3 of 4 recorded requests" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--event", "confirm_final_grades"], [0, 2]),
        (["--failed"], [1]),
        (["--last", "2"], [1, 2]),
        (["--event", "confirm_final_grades", "--last", "1"], [2]),
        (["--since", "2024-05-01T12:02:00Z"], [1, 2]),
        (["--since", "2024-05-01T14:02:00+02:00"], [1, 2]),
    ],
)
def test_replay_filters(
    cli: Cli, receiver: Receiver, recording: tuple[Path, list[bytes]], args: list[str],
    expected: list[int],
) -> None:
    path, bodies = recording
    replay(cli, path, receiver.url, *args)
    assert [r.body for r in receiver.received] == [bodies[i] for i in expected]


def test_replay_failed_sends_each_failed_event_once(cli: Cli, receiver: Receiver, tmp_path: Path) -> None:
    """Inspera retries a failed delivery 3 times: four copies of one event in the record file."""
    given_up = event_body("confirm_final_grades", 10)
    delivered_later = event_body("complete_grading", 11)
    failed_once = event_body("resource_created", 12)
    lines = [
        record_line(given_up, status=502, received_at="2024-05-01T12:00:00Z"),
        record_line(delivered_later, status=500, received_at="2024-05-01T12:00:01Z"),
        record_line(given_up, status=502, received_at="2024-05-01T12:00:10Z", delivery=2),
        record_line(failed_once, status=401, received_at="2024-05-01T12:00:11Z"),
        record_line(delivered_later, status=200, received_at="2024-05-01T12:00:12Z", delivery=2),
        record_line(given_up, status=504, received_at="2024-05-01T12:00:20Z", delivery=3),
    ]
    path = tmp_path / "retries.jsonl"
    path.write_text("\n".join(lines) + "\n")

    once = replay(cli, path, receiver.url, "--failed")
    assert [r.body for r in receiver.received] == [failed_once, given_up]  # in file order: latest copies
    assert "Replaying 2 failed events (each once: its latest copy)" in once.stderr
    assert [line.split("  ")[1] for line in once.stdout.splitlines()] == [
        "resource_created 12", "confirm_final_grades 10"
    ]

    receiver.received.clear()
    every = replay(cli, path, receiver.url, "--failed", "--all-attempts", "--json")
    assert [r.body for r in receiver.received] == [given_up, delivered_later, given_up, failed_once, given_up]
    assert [item["contextObjectId"] for item in every.json] == [10, 11, 10, 12, 10]

    receiver.received.clear()
    assert [item["contextObjectId"] for item in replay(
        cli, path, receiver.url, "--failed", "--event", "confirm_final_grades", "--json"
    ).json] == [10]
    assert "goes with --failed" in replay(cli, path, receiver.url, "--all-attempts", expect=2).stderr


def test_replay_nothing_matches_is_a_warning(
    cli: Cli, receiver: Receiver, recording: tuple[Path, list[bytes]]
) -> None:
    path, _ = recording
    result = replay(cli, path, receiver.url, "--event", "no_such_event", "--json")
    assert result.json == []
    assert "nothing to replay" in result.stderr
    assert receiver.received == []


def test_replay_binary_body_and_headers_as_pairs(cli: Cli, receiver: Receiver, tmp_path: Path) -> None:
    binary = b"\xff\xfe not utf-8 \x00"
    path = tmp_path / "raw.jsonl"
    path.write_text(
        record_line(binary, headers=[["Content-Type", "application/octet-stream"]]) + "\n"
    )
    result = replay(cli, path, receiver.url, "--json")
    [got] = receiver.received
    assert got.body == binary
    assert got.headers["content-type"] == "application/octet-stream"
    assert result.json[0]["event"] is None


def test_replay_reports_each_failure_and_exits_1(
    cli: Cli, recording: tuple[Path, list[bytes]]
) -> None:
    path, _ = recording
    with Receiver(statuses=(200, 500, 200)) as r:
        result = replay(cli, path, r.url, "--json", expect=1)
    assert [item["status"] for item in result.json] == [200, 500, 200]
    refused = replay(cli, path, f"http://127.0.0.1:{free_port()}/", "--json", expect=1)
    assert {item["error"] for item in refused.json} == {"connection refused"}


def test_replay_a_wrong_secret_is_refused_by_the_receiver(
    cli: Cli, receiver: Receiver, recording: tuple[Path, list[bytes]]
) -> None:
    path, _ = recording
    result = cli("replay", str(path), "--to", receiver.url, "--secret-env", "K", "--json",
                 env={"K": OLD_SECRET}, expect=1)
    assert {item["status"] for item in result.json} == {401}


def test_replay_without_secret_sends_unsigned(
    cli: Cli, receiver: Receiver, recording: tuple[Path, list[bytes]]
) -> None:
    path, _ = recording
    result = cli("replay", str(path), "--to", receiver.url, "--last", "1", expect=1)
    assert "no secret given" in result.stderr
    assert receiver.received[0].signature is None


BAD_LINES = [
    ("{not json}\n", "line 1: not valid JSON"),
    ('{"body": "{}"}\n\n[1, 2]\n', "line 3: expected a JSON object"),
    ('{"event": "x"}\n', "line 1: no 'body' or 'bodyBase64'"),
    ('{"bodyBase64": "%%%"}\n', "line 1: 'bodyBase64' is not valid base64"),
    (b"\xff\xfe\n", "line 1: not valid JSON (not UTF-8)"),
    ("[" * 100_000 + "]" * 100_000 + "\n", "line 1: JSON nested too deeply"),
]


@pytest.mark.parametrize(("content", "message"), [(None, "no such file"), *BAD_LINES])
def test_replay_strict_bad_files_are_one_line_errors(
    cli: Cli, receiver: Receiver, tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    result = replay(cli, path, receiver.url, "--strict", expect=1)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("inspera-hooks: error: ") and message in line
    assert receiver.received == []


@pytest.mark.parametrize(("content", "message"), [bad for bad in BAD_LINES if "line 1" in bad[1]])
def test_replay_skips_corrupt_lines_with_a_warning_and_sends_the_rest(
    cli: Cli, receiver: Receiver, tmp_path: Path, content: str | bytes, message: str
) -> None:
    good = [event_body("confirm_final_grades", 1), event_body("confirm_final_grades", 2)]
    bad = content.encode() if isinstance(content, str) else content
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(record_line(good[0]).encode() + b"\n" + bad + record_line(good[1]).encode() + b"\n")
    result = replay(cli, path, receiver.url, "--json")
    assert [r.body for r in receiver.received] == good
    line_number = int(message.split(":")[0].split()[1]) + 1  # after the first good line
    assert f"line {line_number}: {message.split(': ', 1)[1]}" in result.stderr
    assert [item["status"] for item in result.json] == [200, 200]


def test_replay_of_a_file_without_any_record_is_an_error(
    cli: Cli, receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"\x00\x01garbage\n\xff\nnot json either\n")
    result = replay(cli, path, receiver.url, expect=1)
    assert "not a `listen --record` file" in result.stderr
    assert "line 1:" in result.stderr and "line 3:" in result.stderr  # each one named
    assert receiver.received == []


def test_replay_a_truncated_last_line_is_skipped_with_a_warning(
    cli: Cli, receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "cut.jsonl"
    body = event_body("confirm_final_grades", 1)
    whole = record_line(body)
    path.write_text(whole + "\n" + whole[:40])
    result = replay(cli, path, receiver.url)
    assert "line 2: torn line" in result.stderr
    assert [r.body for r in receiver.received] == [body]
    strict = replay(cli, path, receiver.url, "--strict", expect=1)
    assert "line 2: torn line" in strict.stderr
    assert len(receiver.received) == 1  # --strict sent nothing


def test_replay_line_separators_inside_records(cli: Cli, receiver: Receiver, tmp_path: Path) -> None:
    """Files written before records were ASCII-escaped hold U+2028, U+0085 and friends raw: only
    \\n separates lines, so they replay byte for byte."""
    bodies = [
        json.dumps({"event": "confirm_final_grades", "contextObjectId": 1, "note": "a\u2028b\u2029c"},
                   ensure_ascii=False).encode(),
        json.dumps({"event": "confirm_final_grades", "contextObjectId": 2, "x": "\x85\x1c\x1d\x1e\r"},
                   ensure_ascii=False).encode(),
    ]
    lines = []
    for body in bodies:
        item = json.loads(record_line(body))
        item["headers"]["X-Odd"] = "\x85"
        lines.append(json.dumps(item, ensure_ascii=False))
    path = tmp_path / "separators.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert len(path.read_text(encoding="utf-8").splitlines()) > 2  # str.splitlines would tear them
    result = replay(cli, path, receiver.url, "--json")
    assert [r.body for r in receiver.received] == bodies
    assert "warning" not in result.stderr


def test_replay_since_needs_receipt_times(cli: Cli, receiver: Receiver, tmp_path: Path) -> None:
    path = tmp_path / "untimed.jsonl"
    path.write_text(record_line(event_body("a", 1), received_at="yesterday") + "\n")
    result = replay(cli, path, receiver.url, "--since", "2024-01-01", expect=1)
    assert "line 1: 'receivedAt' 'yesterday' is not an ISO time" in result.stderr
    assert "is not an ISO date" in replay(cli, path, receiver.url, "--since", "soon", expect=2).stderr


# --- end to end: trigger → the real `listen --record` → replay ----------------------------------


def test_trigger_through_listen_then_replay_its_record(cli: Cli, tmp_path: Path) -> None:
    """`trigger` reaches a real `listen` (which forwards to an app that fails once); `replay` of
    the file `listen --record` wrote sends the same bytes in the same order, validly re-signed."""
    import re
    import subprocess

    record = tmp_path / "recorded.jsonl"
    with Receiver(secret=OLD_SECRET, statuses=(200, 500, 200)) as app:
        listen = popen(
            [*CLI, "listen", "--port", "0", "--json",
             "--secret-env", "HOOK_SECRET", "--record", str(record), "--forward-to", app.url,
             "--exit-after", "2", "--max-time", "30"],
            env={**os.environ, "HOOK_SECRET": OLD_SECRET},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert listen.stderr is not None
            seen = []
            while not any(line.startswith("Ready:") for line in seen):
                line = listen.stderr.readline()
                assert line, f"listen exited before it was ready: {''.join(seen)}"
                seen.append(line)
            match = re.search(r"http://\S+", seen[-1])
            assert match, seen[-1]
            url = match.group(0)

            def trigger(*args: str, secret: str = OLD_SECRET, expect: int = 0) -> Any:
                return cli("trigger", *args, "--to", url, "--secret-env", "K", "--json",
                           env={"K": secret}, expect=expect)

            assert trigger("--verification").json[0]["status"] == 200
            assert trigger("confirm_final_grades", secret="wrong", expect=1).json[0]["status"] == 401
            trigger("confirm_final_grades", "--object-id", "1")
            assert trigger("resource_created", "--object-id", "2", expect=1).json[0]["status"] == 500
            trigger("confirm_final_grades", "--object-id", "3")
            stdout, _ = listen.communicate(timeout=20)
        finally:
            if listen.poll() is None:
                listen.kill()
                listen.communicate()
        assert listen.returncode == 0
        sent = [r.body for r in app.received]  # the exact bytes trigger sent, as forwarded

    assert [json.loads(line)["signature"] for line in stdout.splitlines()] == [
        "valid", "invalid", "valid", "valid", "valid"
    ]
    assert len(record.read_text().splitlines()) == 4  # the verification too, not the forgery
    with Receiver(secret=SECRET) as target:
        result = replay(cli, record, target.url, "--json")
        assert [r.body for r in target.received] == sent
        assert all(r.signature == sign(r.body, SECRET) for r in target.received)
    assert [(i["event"], i["status"]) for i in result.json] == [
        ("confirm_final_grades", 200), ("resource_created", 200), ("confirm_final_grades", 200)
    ]
    with Receiver(secret=SECRET) as target:
        replay(cli, record, target.url, "--failed")
        assert [r.body for r in target.received] == [sent[1]]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc")
def test_replay_streams_a_50000_record_file_in_under_60_mb(tmp_path: Path, receiver: Receiver) -> None:
    """The defect: replay held every record in memory (3.2 KB each: 200 MB for 50,000). It reads
    the file twice, one line at a time (count, then send); `--last 3` keeps this test quick, the
    README has the figure for sending all 50,000 (the same loop, one result at a time)."""
    import sys

    from inspera_cli.recording import encode_record

    path = tmp_path / "big.jsonl"
    with path.open("wb") as out:
        for number in range(50_000):
            out.write(encode_record(json.loads(record_line(event_body("confirm_final_grades", number)))))
    # VmHWM (peak RSS of this program), not ru_maxrss, which a child forked from a big test
    # process inherits.
    measured = (
        "import sys\nfrom inspera_cli.cli import main\ntry:\n    main()\nfinally:\n"
        "    peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "    print('maxrss', peak, file=sys.stderr)\n"
    )
    done = run(
        [sys.executable, "-c", measured, "replay", str(path), "--to", receiver.url, "--last", "3",
         "--secret-env", "HOOK_SECRET", "--json"],
        capture_output=True, text=True, env={**os.environ, "HOOK_SECRET": SECRET}, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(r.body)["contextObjectId"] for r in receiver.received] == [49_997, 49_998, 49_999]
    maxrss_kib = int(done.stderr.rsplit("maxrss", 1)[1])
    assert maxrss_kib < 60 * 1024, maxrss_kib
