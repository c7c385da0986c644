"""`inspera-hooks demo`: the whole story, installed entry point, no setup."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from tests.processes import CLI, run


def test_demo_in_process_shows_the_verified_event(cli):
    out = cli("demo").stdout
    assert re.search(r"verification\s+0\s+valid\s+#1\s+-> 200", out)
    assert re.search(r"confirm_final_grades\s+35199862\s+valid\s+#1\s+-> 200", out)
    assert "delivered and verified" in out and "no subscriptions left" in out
    assert out.index("1. inspera-hooks events") < out.index("2. inspera-hooks create") < out.index(
        "3. the tenant fires"
    ) < out.index("4. inspera-hooks list") < out.index("5. inspera-hooks delete")


@pytest.mark.fresh_interpreter
def test_demo_entry_point_exits_0_without_any_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSPERA_")}
    env["HOME"] = str(tmp_path)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    # The console script installed next to this interpreter, and `python -m`.
    for argv in ([str(Path(sys.executable).parent / "inspera-hooks"), "demo"], [*CLI, "demo"]):
        done = run(argv, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert "delivered and verified" in done.stdout
    # The demo's token stays in its temporary folder.
    assert not (tmp_path / "cache").exists()
