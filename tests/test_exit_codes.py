"""Exit codes: one name per number, and those that need a real process (Ctrl-C, Click's own usage
errors, `python -m`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.processes import CLI, popen, run
from tests.stub_server import Reply

pytestmark = pytest.mark.fresh_interpreter


def test_ctrl_c_exits_130_without_traceback(stub, tmp_path):
    stub.on("GET", "/api/v1/subscription", Reply(body=[], delay=5))
    proc = popen(
        [*CLI, "list"],
        env=stub.subprocess_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while not stub.count("GET", "/api/v1/subscription") and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert "inspera-hooks: error: interrupted" in err and "Traceback" not in err


def test_click_usage_error_is_one_line_and_2_from_the_installed_program(tmp_path):
    done = run([*CLI, "list", "--no-such-flag"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "inspera-hooks: error: no such option: --no-such-flag (see inspera-hooks list --help)\n"
    )


def test_python_dash_m_works(tmp_path):
    done = run([sys.executable, "-m", "inspera_cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("inspera-hooks ")


def test_each_exit_code_has_one_name():
    from inspera_cli.errors import ExitCode

    # An alias (CHANGES = 2 beside USAGE = 2) would hide which of the two a 2 meant.
    assert len(ExitCode.__members__) == len(ExitCode)
