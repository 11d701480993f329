"""Draw throughput by system and worker count from a results.json of ``python -m bench``.

Usage: chart.py RESULTS.json OUTPUT.png.  Runs in the peers' virtualenv,
which has matplotlib; queuectl itself never depends on it.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {1: "#8fb3d9", 2: "#1f4e79"}
QUEUECTL_COLORS = {1: "#f2b774", 2: "#c55a11"}


def main() -> None:
    source, output = sys.argv[1], sys.argv[2]
    with open(source) as stream:
        document = json.load(stream)
    summary = document["throughput_summary"]
    plan = document["plan"]
    machine = document["machine"]

    labels: list[str] = []
    for entry in summary:
        if entry["label"] not in labels:
            labels.append(entry["label"])

    figure, axes = plt.subplots(figsize=(11, 5.5), dpi=120)
    width = 0.38
    for offset, workers in ((-width / 2, 1), (width / 2, 2)):
        for index, label in enumerate(labels):
            entry = next(
                (e for e in summary if e["label"] == label and e["workers"] == workers), None
            )
            if entry is None:
                continue
            colors = QUEUECTL_COLORS if entry["system"] == "queuectl" else COLORS
            x = index + offset
            value = entry["jobs_per_s"]
            axes.bar(
                x,
                value,
                width,
                color=colors[workers],
                yerr=[[value - entry["low"]], [entry["high"] - value]],
                capsize=3,
                ecolor="#555555",
                label=f"{workers} worker{'s' if workers > 1 else ''}" if index == 0 else None,
            )
            axes.text(
                x, entry["high"] * 1.01 + 15, f"{value:,.0f}", ha="center", va="bottom", fontsize=8
            )

    bare = next((e for e in summary if e["system"] == "bare" and e["workers"] == 2), None)
    if bare is not None:
        target = 0.85 * bare["jobs_per_s"]
        axes.axhline(target, color="#c55a11", linestyle="--", linewidth=1)
        axes.text(
            len(labels) - 0.5,
            target,
            "target for queuectl: 0.85 x bare loop, 2 workers",
            ha="right",
            va="bottom",
            fontsize=8,
            color="#c55a11",
        )

    axes.set_xticks(range(len(labels)))
    axes.set_xticklabels(
        [label.replace(", ", ",\n").replace(" (", "\n(") for label in labels], fontsize=9
    )
    axes.set_ylabel("jobs per second (each job runs `true`)")
    axes.set_title(
        f"Throughput, {plan['throughput_jobs']:,} jobs per run, median of {plan['rounds']} "
        f"(bars: lowest to highest)\n{machine['cores']} cores, {machine['cpu']}, "
        f"Python {machine['python']}, Redis {machine['redis-server']}",
        fontsize=10,
    )
    axes.legend(loc="upper right")
    axes.grid(axis="y", color="#dddddd")
    axes.set_axisbelow(True)
    figure.tight_layout()
    figure.savefig(output)


if __name__ == "__main__":
    main()
