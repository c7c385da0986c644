"""Usage errors, Click's own and ours: one line, `inspera-hooks: error: <what> (see CMD --help)`, exit 2."""

from __future__ import annotations

import pytest

from tests.test_help import COMMANDS


def assert_one_usage_line(stderr: str, command: str, *fragments: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    (line,) = lines
    assert line.startswith("inspera-hooks: error: "), line
    assert line.endswith(f" (see {command} --help)"), line
    for fragment in fragments:
        assert fragment in line, line
    assert "Usage:" not in stderr and "Try '" not in stderr


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_an_unknown_option_of_every_command_is_one_line(cli, path: tuple[str, ...]) -> None:
    r = cli(*path, "--no-such-option", expect=2)
    assert r.stdout == ""
    assert_one_usage_line(r.stderr, " ".join(("inspera-hooks", *path)), "no such option: --no-such-option")


@pytest.mark.parametrize(
    ("args", "command", "fragments"),
    [
        (["sandbox", "fire"], "inspera-hooks sandbox fire", ["missing argument 'EVENT'"]),
        (["config", "set"], "inspera-hooks config set", ["missing argument 'KEY'"]),
        (["create", "--endpoint", "https://h/"], "inspera-hooks create", ["missing option '--event'"]),
        (["verify", "body.json"], "inspera-hooks verify", ["missing option '--signature'"]),
        # an option missing its value, the group's own and a subcommand's
        (["create", "--endpoint"], "inspera-hooks create", ["'--endpoint' requires an argument"]),
        (["--url"], "inspera-hooks", ["'--url' requires an argument"]),
        (["sandbox", "fire", "--object-id"], "inspera-hooks sandbox fire", ["'--object-id' requires"]),
        # bad values, in plain words
        (["sandbox", "serve", "--port", "x"], "inspera-hooks sandbox serve", ["'--port'", "a whole number"]),
        (["--timeout", "soon", "events"], "inspera-hooks", ["'--timeout'", "expected a number"]),
        (["listen", "--tunnel", "frp"], "inspera-hooks listen", ["'frp' is not one of 'cloudflared'"]),
        (["trigger", "x", "--repeat", "0"], "inspera-hooks trigger", ["'--repeat'", "greater than or equal"]),
        (["sandbox", "serve", "--resolve", "x"], "inspera-hooks sandbox serve", ["HOST=ADDRESS:PORT"]),
        # unknown commands, at the top and in a group; a typo'd option gets a suggestion
        (["lisst"], "inspera-hooks", ["no such command 'lisst'"]),
        (["sandbox", "fyre"], "inspera-hooks sandbox", ["no such command 'fyre'"]),
        (["list", "--jsn"], "inspera-hooks list", ["no such option: --jsn; did you mean --json?"]),
        (["list", "--event", "x", "extra"], "inspera-hooks list", ["unexpected extra argument(s) (extra)"]),
    ],
)
def test_click_usage_errors_are_one_line(cli, args: list[str], command: str, fragments: list[str]) -> None:
    r = cli(*args, expect=2)
    assert_one_usage_line(r.stderr, command, *fragments)


def test_no_command_still_shows_the_help(cli) -> None:
    r = cli(expect=2)
    assert "Usage: inspera-hooks [OPTIONS] COMMAND [ARGS]..." in r.stderr and "Commands:" in r.stderr
