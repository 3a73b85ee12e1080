"""Memory check for issue 3: an unloaded version releases its sessions and buffers.

    .venv/bin/python -m tests.repository.rss_cycles [--cycles 20] [--sizes 2048,4608,16]

Loads an MLP (by default 36 MiB of weights), runs a few batched requests through it, unloads it, and
repeats; prints the process RSS after each cycle. Exits 1 when RSS after the last cycle is more than
10% above RSS after the first. A leaked session would add the model's size on every line.

The default model has one weight tensor above 32 MiB, glibc's ceiling for its dynamic mmap threshold,
so that tensor is always mmapped and the figures are deterministic. With smaller tensors (e.g.
--sizes 256,2048,2048,10, 18 MiB) glibc may keep up to about 2x the largest tensor of freed memory at
the top of the loader thread's arena for reuse: RSS then moves within that band from cycle to cycle
but does not grow.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np

from server.metrics import Metrics
from server.repository.manager import ModelManager
from server.settings import ServerSettings

from ..sample_models import make_models

TOLERANCE = 0.10


def rss_mib() -> float:
    """Resident set size of this process now (not the peak), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _one_cycle(manager: ModelManager, sizes: list[int]) -> None:
    await manager.load("big")
    version = manager.get("big")
    rows = np.random.default_rng(0).standard_normal((8, sizes[0])).astype(np.float32)
    await asyncio.gather(*(version.batcher.submit({"input": rows[i : i + 1]}, 1) for i in range(8)))
    await manager.unload("big")


async def run(cycles: int, sizes: list[int]) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_models.make_mlp(root, "big", sizes, max_batch_size=8)
        manager = ModelManager(root, ServerSettings(model_repository=tmp, model_control_mode="explicit"),
                               Metrics())
        figures = []
        for _ in range(cycles):
            await _one_cycle(manager, sizes)
            figures.append(rss_mib())
        await manager.stop()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--sizes", default="2048,4608,16", help="MLP layer widths")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    weights_mib = sum(a * b + b for a, b in itertools.pairwise(sizes)) * 4 / 2**20
    figures = asyncio.run(run(args.cycles, sizes))
    for cycle, mib in enumerate(figures, 1):
        print(f"cycle {cycle:3d}: RSS {mib:8.1f} MiB")
    growth = figures[-1] / figures[0] - 1
    print(f"model weights {weights_mib:.1f} MiB; RSS after cycle 1 {figures[0]:.1f} MiB, after cycle "
          f"{len(figures)} {figures[-1]:.1f} MiB: {growth:+.1%} (limit +{TOLERANCE:.0%}); "
          f"range {min(figures):.1f}..{max(figures):.1f} MiB")
    return 0 if growth <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
