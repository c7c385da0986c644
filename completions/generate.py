"""Write the shell completion scripts in this folder from the CLI itself.

    python completions/generate.py          # rewrite the files
    python completions/generate.py --check  # exit 1 if a file differs from `inspera-hooks completion`

tests/test_completion.py checks the same, so a change to the scripts fails CI until this is re-run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from inspera_cli.commands.completion import completion_script

HERE = Path(__file__).resolve().parent
FILES = {
    "bash": "inspera-hooks.bash",
    "zsh": "_inspera-hooks",
    "fish": "inspera-hooks.fish",
}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for shell, name in FILES.items():
        path = HERE / name
        script = completion_script(shell)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == script:
            continue
        stale.append(name)
        if not check:
            path.write_text(script, encoding="utf-8", newline="\n")
    for name in stale:
        print(f"{'stale' if check else 'wrote'} completions/{name}", file=sys.stderr)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
