"""Start-up benchmark: `inspera-hooks --help` against a bare two-command Typer app's `--help`.

Run it directly (it is not a test): ``python tests/bench_startup.py [RUNS]``. Both programs run with
this interpreter, interleaved, so machine noise hits them alike; the medians and their ratio are
printed. Target: ratio <= 1.2.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
TARGET = 1.2


def console_script() -> list[str]:
    """The installed entry point next to this interpreter (not a pyenv-style shim), else on PATH."""
    beside = Path(sys.executable).parent / "inspera-hooks"
    if beside.exists():
        return [sys.executable, str(beside)]
    found = shutil.which("inspera-hooks")
    return [found] if found else [sys.executable, "-m", "inspera_cli"]


def run_once(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    os.environ.pop("_INSPERA_HOOKS_COMPLETE", None)
    with tempfile.TemporaryDirectory() as tmp:
        bare_path = Path(tmp) / "bare_app.py"
        bare_path.write_text(BARE_APP, encoding="utf-8")
        ours = [*console_script(), "--help"]
        bare = [sys.executable, str(bare_path), "--help"]
        plain = [sys.executable, str(bare_path), "plain", "--help"]
        programs = {"inspera-hooks --help": ours, "bare Typer app --help": bare, "  same, plain help": plain}
        for argv in programs.values():  # warm the file cache and .pyc files
            run_once(argv)
        times: dict[str, list[float]] = {name: [] for name in programs}
        for _ in range(runs):
            for name, argv in programs.items():
                times[name].append(run_once(argv))
    medians = {name: statistics.median(t) for name, t in times.items()}
    ours_median, bare_median, plain_median = medians.values()
    ratio = ours_median / bare_median
    print(f"runs each: {runs}, interleaved")
    for name, median in medians.items():
        print(f"{name + ':':26} {median * 1000:7.1f} ms (median)")
    print(f"ratio to the bare app:     {ratio:7.2f}  (target <= {TARGET})")
    print(f"ratio to its plain help:   {ours_median / plain_median:7.2f}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
