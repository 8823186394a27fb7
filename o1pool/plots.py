"""PNG plots for ``o1pool bench``: what a table hides (oscillation over time, tails, who waited)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from o1pool.cachebench import CacheResults
    from o1pool.cacheeval import Row
    from o1pool.matrix import CellResult
    from o1pool.scenarios import LatencyRow

SMOOTH_S = 5  # admitted per second, averaged over this many seconds


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, dpi: int = 110) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def write_matrix_plot(path: Path, results: Sequence[CellResult]) -> Path:
    """One small chart per cell: calls the upstream admitted per second per account over time (5 s
    average), the upstream's real limit, the end of the warm-up, and every refused call."""
    plt = _pyplot()
    columns = 4
    rows = -(-len(results) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(results) :]:
        ax.set_visible(False)
    for ax, r in zip(axes.flat, results, strict=False):
        accounts = r.per_second()
        limit = r.real_rps / max(1, len(accounts))
        end = int(r.settings.warmup_s + r.settings.measure_s)
        for account, seconds in sorted(accounts.items()):
            admitted = [0.0] * (end + 30)
            refused: list[tuple[int, int]] = []
            for sec, a, rejected in seconds:
                if 0 <= sec < len(admitted):
                    admitted[sec] = a
                if rejected:
                    refused.append((sec, rejected))
            smooth = [
                sum(admitted[max(0, i - SMOOTH_S + 1) : i + 1]) / SMOOTH_S for i in range(len(admitted))
            ]
            (line,) = ax.plot(range(len(smooth)), smooth, linewidth=0.9, label=account)
            if refused:
                ax.scatter(
                    [s for s, _ in refused],
                    [limit * 1.15] * len(refused),
                    marker="v",
                    s=12,
                    color=line.get_color(),
                )
        ax.axhline(limit, color="black", linewidth=0.6, linestyle=":")
        ax.axvline(r.settings.warmup_s, color="grey", linewidth=0.6, linestyle="--")
        client = "" if r.cell.client == "o1pool" else f" [{r.cell.client}]"
        ax.set_title(f"{r.cell.label}{client}\n429s {r.rate_429:.2%}, use {r.utilisation:.1%}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, limit * 1.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.supxlabel("seconds since the load began (dashed: end of warm-up; dotted: the real limit; v: a 429)")
    fig.supylabel(f"calls admitted per second per account ({SMOOTH_S} s average)")
    return _save(fig, path, dpi=100)


def write_latency_plot(path: Path, latency: Sequence[LatencyRow]) -> Path:
    """The latency distribution of each path (a CDF on a log axis: the tail shows)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for row in latency:
        values = sorted(v * 1000 for v in row.latencies_s)
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=row.target)
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log)")
    ax.set_ylabel("fraction of calls")
    ax.set_title("added latency at a fixed rate, zero-latency upstream")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def write_cache_plot(path: Path, results: CacheResults) -> Path:
    """Left: hits per CPU-second of one sidecar by layer. Right: the latency CDF of hits by layer and of
    misses (zero-latency upstream), at a fixed rate."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    layers = [r.layer for r in results.layers]
    left.bar(layers, [r.hits_per_cpu_s for r in results.layers], color="tab:blue")
    left.set_ylabel("hits per sidecar CPU-second")
    left.set_title("cache hits one sidecar serves on one core")
    left.grid(True, axis="y", alpha=0.3)
    for r in results.layers:
        for label, values in (
            (f"{r.layer} hit", r.rate_hits_s),
            (f"miss ({r.layer} sidecar)", r.rate_miss_s),
        ):
            ordered = sorted(v * 1000 for v in values)
            if ordered:
                style = "-" if label.endswith("hit") else ":"
                fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
                right.plot(ordered, fractions, style, label=label)
    right.set_xscale("log")
    right.set_xlabel("latency, ms (log)")
    right.set_ylabel("fraction of answers")
    right.set_title(f"hit and miss latency at {results.settings.rate_rps:.0f} rps")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    return _save(fig, path)


def write_cache_eval_plot(path: Path, rows: Sequence[Row], near: int, threshold: float) -> Path:
    """Paraphrase recall and near misses matched, by similarity threshold, with and without the check
    after the match (``o1pool cache-eval``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [r.threshold for r in rows]
    ax.plot(xs, [r.recall for r in rows], "o-", label="paraphrase recall (with the check)")
    ax.plot(xs, [r.recall_without_guard for r in rows], "o:", label="paraphrase recall (similarity alone)")
    ax.plot(xs, [r.false_hits / near for r in rows], "s-", label="near misses matched (with the check)")
    ax.plot(
        xs,
        [r.false_hits_without_guard / near for r in rows],
        "s:",
        label="near misses matched (similarity alone)",
    )
    ax.axvline(threshold, color="grey", alpha=0.5)
    ax.set_xlabel("similarity threshold")
    ax.set_ylabel("share of pairs")
    ax.set_title("semantic cache: all-MiniLM-L6-v2 + the check after the match")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
