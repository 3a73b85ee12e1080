"""How every `tessera` subcommand reads and explains its flags: TESSERA_* environment defaults, the
flag value types, and help that shows each flag's default."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

__all__ = ["HelpFormatter", "csv_list", "env", "json_object", "parse_bool", "positive_int"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, unless the text already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is None or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def env(name: str, default: str | None = None) -> str | None:
    """The TESSERA_* variable for flag `name` (`http-port` -> TESSERA_HTTP_PORT), else `default`."""
    return os.environ.get(f"TESSERA_{name.upper().replace('-', '_')}", default)


def parse_bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def csv_list(text: str) -> tuple[str, ...]:
    """`a, b,c` -> ("a", "b", "c"); empty items dropped."""
    return tuple(c.strip() for c in text.split(",") if c.strip())


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value
