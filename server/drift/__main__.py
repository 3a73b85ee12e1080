"""`python -m server.drift profile|drift ...`: the drift tools without the rest of the CLI."""

from __future__ import annotations

import argparse
import sys

from .cli import add_subcommands, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tessera")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
