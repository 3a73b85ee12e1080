"""`tessera`'s command line: every subcommand listed in --help, and `loadtest` without its extra."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from server.cli import build_parser, main, serve_settings


def test_help_lists_every_subcommand_including_the_load_harness() -> None:
    text = build_parser().format_help()
    for command in ("serve", "profile", "drift", "loadtest"):
        assert command in text
    assert "pip install 'tessera[loadtest]'" in text


@pytest.mark.parametrize("module", [pytest.param(m, id=m) for m in ("hdrh", "hpack", "matplotlib")])
def test_loadtest_without_its_extra_names_the_extra_to_install(module: str) -> None:
    # A fresh interpreter in which `import <module>` fails as if the package were not installed.
    code = f"import sys; sys.modules[{module!r}] = None; from server.cli import main; main(['loadtest', 'run'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"tessera loadtest: the load harness needs the loadtest extra ({module} is not "
                                   "installed): pip install 'tessera[loadtest]'")


def test_loadtest_hands_its_arguments_to_the_harness(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["loadtest", "--help"])
    assert exited.value.code == 0
    assert "run" in capsys.readouterr().out


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: sub for name, sub in found.choices.items() if name != "loadtest"}  # the harness has its own


@pytest.mark.parametrize("command", [pytest.param(c, id=c) for c in _subcommands()])
def test_every_flag_of_every_subcommand_has_help_and_shows_its_default(command: str) -> None:
    sub = _subcommands()[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"tessera {command} {action.option_strings[0]} has no help text"
    text = " ".join(sub.format_help().split())  # line wrapping aside
    if command == "serve":
        assert "(default: 8001)" in text and "(default: 127.0.0.1)" in text


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--drift-queue-size", "0", "drift queue_size must be at least 1"),
    ("--drift-cpu-budget", "3", "drift cpu_budget must be in (0, 1]"),
])
def test_drift_settings_out_of_range_stop_serve_with_a_message(flag: str, value: str, message: str) -> None:
    args = build_parser().parse_args(["serve", "--model-repository", "r", flag, value])
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace("]", r"\]")) as exited:
        serve_settings(args)
    assert str(exited.value) == f"tessera serve: {message}"
