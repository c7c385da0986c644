"""The README's "Use from Python" examples, extracted from README.md and run as they are."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inspera_cli.signing import SIGNATURE_HEADER, sign
from inspera_cli.webhook_body import build_body, verification_body

README = Path(__file__).resolve().parent.parent / "README.md"
SECRET = "readme-example-secret-2f9d"


def python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Use from Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def block(marker: str) -> str:
    found = [code for code in python_blocks() if marker in code]
    assert len(found) == 1, f"expected one python block with {marker!r} in the README's Use from Python"
    return found[0]


# What tells the examples apart.
IMPORTS = "from inspera_cli import (\n"
STDLIB = "ThreadingHTTPServer"
FLASK = "from flask"
CLIENT = "InsperaClient()"


def test_every_python_example_is_run_here() -> None:
    blocks = python_blocks()
    assert len(blocks) == 4
    assert sorted(blocks) == sorted(block(m) for m in (IMPORTS, STDLIB, FLASK, CLIENT))


def test_the_import_line_works() -> None:
    exec(block(IMPORTS), {"__name__": "readme_imports"})


# -- the standard-library receiver, as a program ---------------------------------------------------


class Receiver:
    """The README's stdlib receiver running as `python receiver.py`, its stdout read line by line."""

    def __init__(self, path: Path) -> None:
        env = {**os.environ, "INSPERA_HOOK_SECRET": SECRET, "PORT": "0"}
        self.process = subprocess.Popen(
            [sys.executable, str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready = self.line()
        match = re.fullmatch(r"Listening on (http://127\.0\.0\.1:\d+/)", ready)
        assert match, ready
        self.url = match.group(1)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def line(self, timeout: float = 10.0) -> str:
        return self.lines.get(timeout=timeout)

    def post(self, body: bytes, signature: str | None) -> int:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code

    def stop(self) -> str:
        self.process.terminate()
        _, stderr = self.process.communicate(timeout=10)
        self._reader.join(5)
        return stderr


@pytest.fixture
def stdlib_receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = tmp_path / "receiver.py"
    path.write_text(block(STDLIB), encoding="utf-8")
    receiver = Receiver(path)
    try:
        yield receiver
    finally:
        receiver.stop()


EVENT = build_body("confirm_final_grades", 35199862, timestamp="2018-10-04T16:47:55Z")
VERIFICATION = verification_body()


def test_stdlib_receiver_takes_signed_events_only(stdlib_receiver: Receiver) -> None:
    post = stdlib_receiver.post
    assert post(EVENT, sign(EVENT, SECRET)) == 200
    assert stdlib_receiver.line() == "confirm_final_grades 35199862 2018-10-04T16:47:55Z"
    assert post(EVENT, None) == 401
    assert post(EVENT, sign(EVENT, "another secret")) == 401
    assert post(EVENT + b"\n", sign(EVENT, SECRET)) == 401
    legacy = build_body("complete_grading", 7, timestamp="2018-10-04T16:47:55Z", legacy=True)
    assert post(legacy, "sha1=" + sign(legacy, SECRET).upper()) == 200
    assert stdlib_receiver.line() == "complete_grading 7 2018-10-04T16:47:55Z"
    assert post(b"not an event", sign(b"not an event", SECRET)) == 400
    # Inspera's validation request: answered signed or not, and not handed to handle().
    assert post(VERIFICATION, sign(VERIFICATION, SECRET)) == 200
    assert post(VERIFICATION, None) == 200
    assert post(VERIFICATION, sign(VERIFICATION, "another secret")) == 401
    assert post(EVENT, sign(EVENT, SECRET)) == 200
    assert stdlib_receiver.line() == "confirm_final_grades 35199862 2018-10-04T16:47:55Z"
    assert "rejected: no X-Inspera-Signature header" in stdlib_receiver.stop()


def test_the_client_example_subscribes_the_stdlib_receiver_on_the_sandbox(
    stdlib_receiver: Receiver, sandbox_env: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("INSPERA_HOOK_SECRET", SECRET)
    monkeypatch.setenv("HOOK_URL", stdlib_receiver.url)
    exec(block(CLIENT), {"__name__": "readme_client"})
    out = capsys.readouterr().out.splitlines()
    subscription_id = int(out[0].removeprefix("subscribed: "))
    assert out[1].startswith(f"{subscription_id} {stdlib_receiver.url} ")
    # The sandbox validated the endpoint with a signed verification, and now delivers to it.
    sandbox_env.fire("confirm_final_grades", 42)
    assert stdlib_receiver.line().startswith("confirm_final_grades 42 ")
    assert sandbox_env.wait_deliveries(1)[0]["status"] == 200


def test_the_client_example_reports_a_refused_subscription(
    sandbox_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSPERA_HOOK_SECRET", SECRET)
    monkeypatch.setenv("HOOK_URL", "http://127.0.0.1:9/nothing-listens-here")
    with pytest.raises(SystemExit, match="not subscribed: Inspera refused the subscription"):
        exec(block(CLIENT), {"__name__": "readme_client"})


# -- the Flask receiver, through Flask's test client ----------------------------------------------


@pytest.fixture
def flask_app(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("INSPERA_HOOK_SECRET", SECRET)
    namespace: dict[str, Any] = {"__name__": "readme_flask"}
    exec(block(FLASK), namespace)
    return namespace["app"]


def test_flask_receiver_takes_signed_events_only(flask_app: Any, capsys: Any) -> None:
    client = flask_app.test_client()

    def post(body: bytes, signature: str | None) -> int:
        headers = {SIGNATURE_HEADER: signature} if signature is not None else {}
        return int(client.post("/inspera", data=body, headers=headers).status_code)

    assert post(EVENT, sign(EVENT, SECRET)) == 200
    assert capsys.readouterr().out == "confirm_final_grades 35199862 2018-10-04T16:47:55Z\n"
    assert post(EVENT, None) == 401
    assert post(EVENT, sign(EVENT, "another secret")) == 401
    assert post(b"not an event", sign(b"not an event", SECRET)) == 400
    assert post(VERIFICATION, None) == 200
    assert post(VERIFICATION, sign(VERIFICATION, SECRET)) == 200
    assert post(VERIFICATION, sign(VERIFICATION, "another secret")) == 401
    assert capsys.readouterr().out == ""
    assert client.get("/inspera").status_code == 405
    big = b"x" * (1024 * 1024 + 1)
    assert post(big, sign(big, SECRET)) == 413
