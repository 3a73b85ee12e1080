"""Progress of a batch job: a bar with rows/s and ETA on a terminal, a plain line every few seconds
otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

_BAR_WIDTH = 24


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts rows done out of `total_rows`. Called from the event loop thread only."""

    def __init__(self, total_rows: int, *, stream: TextIO | None = None, tty: bool | None = None,
                 line_interval_s: float = 10.0) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._total = total_rows
        self._done = 0
        self._started = time.monotonic()
        self._interval_s = min(0.2, line_interval_s) if self._tty else line_interval_s
        self._last_shown = self._started

    def advance(self, rows: int) -> None:
        self._done += rows
        now = time.monotonic()
        if now - self._last_shown >= self._interval_s:
            self._last_shown = now
            self._show(now)

    def _show(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self._started, 1e-9)
        rate = self._done / elapsed
        share = self._done / self._total if self._total else 1.0
        eta = (self._total - self._done) / rate if rate > 0 else 0.0
        timing = f"{_duration(elapsed)} elapsed" if final else f"ETA {_duration(eta)}"
        counts = f"{self._done:,}/{self._total:,} rows  {rate:,.0f} rows/s  {timing}"
        if self._tty:
            filled = int(_BAR_WIDTH * min(share, 1.0))
            bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
            self._stream.write(f"\r{share:6.1%} |{bar}| {counts}" + ("\n" if final else ""))
        else:
            self._stream.write(f"tessera batch: {share:.1%} {counts}\n")
        self._stream.flush()

    def close(self) -> None:
        self._show(time.monotonic(), final=True)
