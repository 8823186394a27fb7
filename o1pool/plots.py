"""PNG plots for ``o1pool bench``: what a table of percentiles hides (tails, who waited)."""

from __future__ import annotations

from pathlib import Path

from o1pool.loadgen import summarize_by_priority
from o1pool.scenarios import LatencyRow, OverloadResult

PRIORITY_NAMES = {8: "high", 5: "normal", 2: "low"}


def write_bench_plot(path: Path, overload: OverloadResult | None, latency: list[LatencyRow] | None) -> Path:
    """One PNG: the latency distribution of each path, and the overload outcome per priority."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in (latency, overload) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    ax_iter = iter(axes[0])
    if latency:
        ax = next(ax_iter)
        for row in latency:
            values = sorted(v * 1000 for v in row.latencies_s)
            if values:
                ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=row.target)
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (log)")
        ax.set_ylabel("fraction of calls")
        ax.set_title("(b) latency at a fixed rate, zero-latency upstream")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if overload:
        ax = next(ax_iter)
        rows = summarize_by_priority(overload.outcomes)
        names = [PRIORITY_NAMES.get(r.priority, str(r.priority)) for r in rows]
        ax.bar(names, [r.ok for r in rows], label="served")
        ax.bar(
            names, [r.rejected for r in rows], bottom=[r.ok for r in rows], label="turned away after queueing"
        )
        ax.set_ylabel("requests")
        ax.set_title(
            f"(a) 3x overload: {overload.utilisation:.1%} of RPM used, {overload.upstream_429} upstream 429s"
        )
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
