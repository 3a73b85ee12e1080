"""The PNGs: client latency percentiles against delivered throughput, with the server's batch sizes;
and, for a mixed step, each model's share of requests and latency percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .results import StepResult

__all__ = ["plot_latency", "plot_models"]


def plot_latency(
    path: Path,
    steps: Sequence[StepResult],
    *,
    title: str,
    slo_p99_ms: float | None = None,
    best_index: int | None = None,
) -> None:
    """Left: p50/p95/p99 (and the server's queue p99) vs throughput, log latency axis.
    Right: the server's mean batch size vs throughput, when /metrics was scraped."""
    order = sorted(range(len(steps)), key=lambda i: steps[i].throughput_rps)
    xs = [steps[i].throughput_rps for i in order]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [2, 1]})
    for label, attr, style in (("p50", "p50_ms", "o-"), ("p95", "p95_ms", "s-"), ("p99", "p99_ms", "^-")):
        left.plot(xs, [max(getattr(steps[i].latency, attr), 1e-3) for i in order], style, label=f"client {label}")
    servers = [steps[i].server for i in order]
    queue = [s.queue_p99_ms if s is not None else math.nan for s in servers]
    if any(not math.isnan(q) for q in queue):
        left.plot(xs, [max(q, 1e-3) for q in queue], "x:", color="grey", label="server queue p99")
    if slo_p99_ms is not None:
        left.axhline(slo_p99_ms, color="red", linestyle="--", label=f"SLO p99 {slo_p99_ms:g} ms")
    if best_index is not None:
        best = steps[best_index]
        left.annotate(
            f"best within SLO\n{best.throughput_rps:.0f} req/s",
            (best.throughput_rps, best.latency.p99_ms),
            textcoords="offset points",
            xytext=(25, -45),
            fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
            arrowprops={"arrowstyle": "->"},
        )
    for i in order:
        left.annotate(
            f"{steps[i].level:g}",
            (steps[i].throughput_rps, steps[i].latency.p99_ms),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
            color="dimgrey",
        )
    knob = "target rate (req/s)" if steps and steps[0].mode.startswith("open") else "concurrency"
    left.text(
        0.99,
        0.01,
        f"point labels: {knob}",
        transform=left.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
        color="dimgrey",
    )
    left.set_yscale("log")
    left.set_xlabel("delivered throughput (successful requests / s)")
    left.set_ylabel("latency (ms, log scale)")
    left.set_title(title)
    left.grid(True, which="both", alpha=0.3)
    left.legend(loc="best", fontsize=8, framealpha=0.8)
    batch = [s.batch_mean if s is not None else math.nan for s in servers]
    right.plot(xs, batch, "o-", color="tab:purple")
    right.set_xlabel("delivered throughput (successful requests / s)")
    right.set_ylabel("server mean batch size (rows)")
    right.set_title("server batching (/metrics)")
    right.grid(True, alpha=0.3)
    if all(math.isnan(b) for b in batch):
        right.text(0.5, 0.5, "server /metrics not scraped", ha="center", transform=right.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_models(path: Path, step: StepResult, *, title: str) -> None:
    """Left: each model's p50/p95/p99 (log scale). Right: each model's share of the requests sent."""
    models = step.per_model
    names = [m.model for m in models]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.25
    for k, (label, attr) in enumerate((("p50", "p50_ms"), ("p95", "p95_ms"), ("p99", "p99_ms"))):
        left.bar([i + (k - 1) * width for i in range(len(models))],
                 [max(getattr(m.latency, attr), 1e-3) for m in models], width, label=label)
    left.set_xticks(range(len(models)), names)
    left.set_yscale("log")
    left.set_ylabel("latency (ms, log scale; open loop: from the scheduled send)")
    left.set_title(title)
    left.grid(True, axis="y", which="both", alpha=0.3)
    left.legend(fontsize=8)
    right.bar(names, [100 * m.share for m in models], color="tab:purple")
    for i, m in enumerate(models):
        right.annotate(f"{100 * m.share:.1f}%\n{m.ok} ok", (i, 100 * m.share), ha="center", va="bottom", fontsize=8)
    right.set_ylabel("share of requests sent (%)")
    right.set_title("traffic mix")
    right.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
