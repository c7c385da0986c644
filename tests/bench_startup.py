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
import typer

app = typer.Typer()


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
        for argv in (ours, bare):  # warm the file cache and .pyc files
            run_once(argv)
        ours_times, bare_times = [], []
        for _ in range(runs):
            ours_times.append(run_once(ours))
            bare_times.append(run_once(bare))
    ours_median = statistics.median(ours_times)
    bare_median = statistics.median(bare_times)
    ratio = ours_median / bare_median
    print(f"runs each:                  {runs}")
    print(f"inspera-hooks --help:       {ours_median * 1000:7.1f} ms (median)")
    print(f"bare Typer app --help:      {bare_median * 1000:7.1f} ms (median)")
    print(f"ratio:                      {ratio:7.2f}  (target <= {TARGET})")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
