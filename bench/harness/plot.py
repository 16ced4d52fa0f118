"""The shutdown plot: latency vs idle connections, one line per runner, one panel per task load.

matplotlib lives only in the bench venv (the template never depends on it); the Agg backend
renders without a display. Points are medians, bars span min-max.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .stats import median

STYLE = {
    "vendored": ("servicekit.aiorun (vendored)", "tab:green", "o", "-"),
    "aiorun": ("aiorun 2025.1.1", "tab:blue", "s", "-"),
    "asyncio": ("asyncio.run (SIGINT)", "tab:orange", "^", "-"),
    "exit": ("floor: os._exit on SIGTERM", "tab:gray", "", ":"),
}


def shutdown_plot(samples: Sequence[dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conns = sorted({int(s["conns"]) for s in samples})  # type: ignore[call-overload]
    tasks = sorted({int(s["tasks"]) for s in samples})  # type: ignore[call-overload]
    runners = [r for r in STYLE if any(s["runner"] == r for s in samples)]
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(max(6.4, 5.2 * len(tasks)), 4.6), sharey=True, squeeze=False
    )
    for ax, task_count in zip(axes[0], tasks, strict=False):
        for runner in runners:
            label, color, marker, line = STYLE[runner]
            meds, lows, highs = [], [], []
            for c in conns:
                values = [
                    float(s["seconds"]) * 1000
                    for s in samples
                    if s["runner"] == runner and s["conns"] == c and s["tasks"] == task_count
                ]
                meds.append(median(values))
                lows.append(meds[-1] - min(values))
                highs.append(max(values) - meds[-1])
            positions = range(len(conns))
            ax.errorbar(
                positions,
                meds,
                yerr=[lows, highs],
                label=label,
                color=color,
                marker=marker,
                linestyle=line,
                capsize=3,
            )
        ax.set_xticks(range(len(conns)), [f"{c:,}" for c in conns])
        ax.set_xlabel("idle connections")
        ax.set_title(f"{task_count:,} sleeping tasks")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("SIGTERM → exit (ms), median, min-max")
    axes[0][0].set_ylim(bottom=0)
    axes[0][-1].legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
